"""The only module that touches aiortc's private internals.

aiortc (pinned to 1.16.0 in pyproject.toml) gives us ICE, DTLS, SRTP and SDP, but
has no public API for an SFU: it wants to decode every received frame and encode
every sent one. This adapter changes two things, per object, never globally (so
aiortc clients in the same process keep working):

* Receive: a receiver's ``_handle_rtp_packet`` is replaced by a lean version that
  keeps what the publisher needs from us (REMB bandwidth feedback, receiver-report
  statistics, NACKs for lost packets) and hands every RTP packet to the SFU instead
  of depacketising, jitter-buffering and decoding it.
* ICE: host candidates are gathered on one socket per connection, bound in the
  configured UDP port range and advertising the configured public address
  (:func:`use_media_address`), instead of one ephemeral port per interface.
* ICE consent: every connection checks consent to send the way RFC 7675 says (answers
  accepted for as long as a retransmitted check waits, consent lost 30 s after the
  last one: :func:`keep_consent`), not with aioice's single half-second try; the checks
  fall on the loop's upkeep grid (:mod:`gbmedia.sfu.upkeep_clock`).
* Sender reports: a forwarding sender's RTCP reports go out from the loop's upkeep grid
  for all of them (:class:`SenderReports`), not from a task per sender.
* Send: packets go straight to ``sender.transport._send_rtp`` after we stamp the
  sender's SSRC, payload type and header extensions, store them in the sender's
  history (so aiortc answers the subscriber's NACKs) and count them (so its sender
  reports stay right). Keyframe requests (PLI/FIR) the subscriber sends are handed
  to the SFU, which forwards them upstream; aiortc alone would only flag its own
  (unused) encoder.

:func:`check_internals` verifies every attribute used here exists; the node calls it
at start-up and a test calls it, so an aiortc upgrade that moves them fails loudly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiortc
import pylibsrtp
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.clock import current_datetime, current_ms, current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSourceInfo,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unpack_remb_fci,
)

from gbmedia.sfu import fanout, remb
from gbmedia.sfu.codecs import same_codec
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.rtp import ExtensionLayout
from gbmedia.sfu.udp_mux import Address, ConsentAnswer, MuxedTransport, binding_success
from gbmedia.sfu.upkeep_clock import UpkeepClock, upkeep_clock

log = logging.getLogger(__name__)

SUPPORTED_AIORTC = "1.16.0"
RTCP_PSFB_FIR = 4  # RFC 5104; aiortc has no constant for it

PacketSink = Callable[[RtpPacket, RTCRtpCodecParameters], None]
KeyframeRequest = Callable[[], None]


class AiortcInternalsChanged(RuntimeError):
    """The installed aiortc does not have the internals this adapter relies on."""


_RECEIVER_ATTRS = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_RTCRtpReceiver__active_ssrc",
    "_handle_rtp_packet",
    "_send_rtcp",
    "_send_rtcp_nack",
    "_send_rtcp_pli",
)
_SENDER_ATTRS = (
    "_ssrc",
    "_send_rtcp",
    "_RTCRtpSender__rtp_header_extensions_map",
    "_RTCRtpSender__rtp_history",
    "_RTCRtpSender__mid",
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__started",
    "_RTCRtpSender__cname",
    "_RTCRtpSender__lsr",
    "_RTCRtpSender__lsr_time",
    "_RTCRtpSender__rtcp_started",
    "_RTCRtpSender__rtcp_exited",
    "_RTCRtpSender__stats",
    "_run_rtcp",
    "_handle_rtcp_packet",
)


_ICE_ATTRS = (
    "get_component_candidates",
    "_protocols",
    "_nominated",
    "local_username",
    "local_password",
    "query_consent",
    "_query_consent_task",
    "build_request",
    "remote_password",
    "remote_username",
    "ice_controlling",
    "_closing",  # the mux's consent answers (_consent_answer)
    "_early_checks_done",
)
_DTLS_ATTRS = (
    "_rtp_router",
    "_state",
    "_tx_srtp",
    "_rtp_header_extensions_map",
    "_handle_rtp_data",
    "_handle_rtcp_data",
    "_rx_srtp",  # the shared port's RTP straight to its receiver (receive_rtp_directly)
    "_RTCDtlsTransport__rx_bytes",
    "_RTCDtlsTransport__rx_packets",
    "_ssl",  # the native fan-out re-exports the DTLS-SRTP keys (native_session)
    "_srtp_profiles",
    "_role",
)


async def check_internals() -> None:
    """Raise :class:`AiortcInternalsChanged` unless every private name used exists."""
    if aiortc.__version__ != SUPPORTED_AIORTC:
        raise AiortcInternalsChanged(
            f"gbmedia's SFU adapter is written for aiortc {SUPPORTED_AIORTC}, found {aiortc.__version__}"
        )
    missing = [] if hasattr(RTCDtlsTransport, "_send_rtp") else ["RTCDtlsTransport._send_rtp"]
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video")
        missing += [a for a in _RECEIVER_ATTRS if not hasattr(transceiver.receiver, a)]
        missing += [a for a in _SENDER_ATTRS if not hasattr(transceiver.sender, a)]
        missing += [f"RTCRtpTransceiver.{a}" for a in ("_codecs", "_headerExtensions") if not hasattr(transceiver, a)]
        ext_map = transceiver.sender._RTCRtpSender__rtp_header_extensions_map
        if not hasattr(ext_map, "_HeaderExtensionsMap__ids"):
            missing.append("HeaderExtensionsMap.__ids")
        dtls = transceiver.receiver.transport
        missing += [f"RTCDtlsTransport.{a}" for a in _DTLS_ATTRS if not hasattr(dtls, a)]
        missing += [
            f"RtpRouter.{a}"
            for a in ("mid_table", "ssrc_table", "route_rtp", "route_rtcp")
            if not hasattr(dtls._rtp_router, a)
        ]
        if not hasattr(dtls.transport, "_connection"):
            missing.append("RTCIceTransport._connection")
        missing += [a for a in _RECORDING_RECEIVER_ATTRS if not hasattr(transceiver.receiver, a)]  # recording
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        missing += [f"aioice.Connection.{a}" for a in _ICE_ATTRS if not hasattr(connection, a)]
        if not hasattr(StunProtocol(connection), "transactions"):  # the UDP mux routes STUN responses by it
            missing.append("aioice.StunProtocol.transactions")
    finally:
        await pc.close()
    if missing:
        raise AiortcInternalsChanged(f"aiortc internals moved: {', '.join(missing)}")


# --- receive side -------------------------------------------------------------------

# What aiortc's packet parsers raise on a datagram they cannot read. Its transport drops a
# ValueError, but a header extension or REMB cut short raises struct.error, which ends the
# transport's receive loop: one bad (if authenticated) packet closed the whole connection.
UNPARSABLE = (ValueError, struct.error)


def drop_unparsable_packets(dtls: RTCDtlsTransport) -> None:
    """Make ``dtls`` drop every datagram aiortc cannot parse, as it already drops most of them.

    Mirrors aiortc 1.16.0's ``RTCDtlsTransport._handle_rtp_data`` and ``_handle_rtcp_data``,
    catching :data:`UNPARSABLE` around the parse and the routing (which reads a REMB's
    SSRCs) alone: a failure in what handles a packet is still seen.
    Once per transport (the SFU taps every receiver and sender on it).
    """
    if getattr(dtls, "_gbmedia_drops_unparsable", False):
        return

    async def handle_rtp(data: bytes, arrival_time_ms: int) -> None:
        routed = _parse_and_route(dtls, data)
        if routed is not None:
            packet, receiver = routed
            await receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)

    async def handle_rtcp(data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except UNPARSABLE as exc:
            log.debug("an RTCP packet that does not parse was dropped: %s", exc)
            return
        for packet in packets:
            try:
                recipients = dtls._rtp_router.route_rtcp(packet)  # reads a REMB's SSRCs: struct.error too
            except UNPARSABLE as exc:
                log.debug("an RTCP packet that does not parse was dropped: %s", exc)
                continue
            for recipient in recipients:
                await recipient._handle_rtcp_packet(packet)

    dtls._handle_rtp_data = handle_rtp  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp  # type: ignore[method-assign]
    dtls._gbmedia_drops_unparsable = True  # type: ignore[attr-defined]


def _parse_and_route(dtls: RTCDtlsTransport, data: bytes) -> tuple[RtpPacket, Any] | None:
    """A clear RTP packet and the receiver it is for; None (dropped) where it does not parse or is for none."""
    try:
        packet = RtpPacket.parse(data, dtls._rtp_header_extensions_map)
    except UNPARSABLE as exc:
        log.debug("an RTP packet that does not parse was dropped: %s", exc)
        return None
    receiver = dtls._rtp_router.route_rtp(packet)
    return None if receiver is None else (packet, receiver)


def tap_receiver(receiver: RTCRtpReceiver, sink: PacketSink, remb_floor: Callable[[], int] | None = None) -> None:
    """Route the receiver's RTP packets to ``sink`` instead of aiortc's decoder.

    Mirrors aiortc 1.16.0's ``RTCRtpReceiver._handle_rtp_packet`` up to the point
    where it would depacketise: bandwidth estimate (REMB, with the native estimator
    where it is built: :mod:`gbmedia.sfu.remb`), statistics for receiver
    reports, NACK generation (one generator per SSRC: a simulcast publisher sends
    several streams on one receiver, and aiortc's single generator would take the
    interleaving for loss). RTX is not negotiated on publisher connections (see
    :func:`drop_rtx`), so every packet is an original.

    ``remb_floor`` (bits/s) keeps the REMB sent to the publisher from falling below
    what the layers someone watches need (see ``PublishedTrack.remb_floor``).
    """
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    streams: dict[int, Any] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
    nacks_wanted = receiver._RTCRtpReceiver__nack_generator is not None  # type: ignore[attr-defined]
    nack_generators: dict[int, NackGenerator] = {}
    estimator = None
    if receiver._RTCRtpReceiver__remote_bitrate_estimator is not None:  # type: ignore[attr-defined]
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator = remb.new_estimator()  # type: ignore[attr-defined]
    from aiortc.rtcrtpreceiver import StreamStatistics

    drop_unparsable_packets(receiver.transport)

    def handle_now(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if rtcp_ssrc is not None and remb is not None:
                bitrate, ssrcs = remb
                if remb_floor is not None:
                    bitrate = max(bitrate, remb_floor())
                _soon(
                    receiver._send_rtcp(
                        RtcpPsfbPacket(
                            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs)
                        )
                    )
                )
        active[packet.ssrc] = current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None or is_rtx(codec):
            return
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if nacks_wanted:
            generator = nack_generators.get(packet.ssrc)
            if generator is None:
                generator = nack_generators[packet.ssrc] = NackGenerator()
            if generator.add(packet):
                _soon(receiver._send_rtcp_nack(packet.ssrc, sorted(generator.missing)))
        sink(packet, codec)

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:  # aiortc's way in (its DTLS transport's task)
        handle_now(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    receiver._gbmedia_handle_now = handle_now  # type: ignore[attr-defined]
    receive_rtp_directly(receiver.transport)


# Tasks sending a receiver's REMB and NACKs: the loop keeps only weak references to tasks.
_sending: set[asyncio.Task[None]] = set()


def _soon(send: Awaitable[None]) -> None:
    """Send an RTCP packet from a task of its own: the receive path does not wait for the send."""
    task = asyncio.ensure_future(send)
    _sending.add(task)
    task.add_done_callback(_sending.discard)


def receive_rtp_directly(dtls: RTCDtlsTransport) -> bool:
    """On the shared UDP port, ``dtls``'s SRTP and SRTCP go from the socket to their handlers in one call.

    aiortc receives every datagram through aioice: a failed STUN parse, the connection's queue,
    then the DTLS transport's task, woken once per datagram, unprotects it and hands it on. For a
    publisher's RTP that hop and the rest of the stage cost 0.5 % of a core per 640x480 publisher
    in a running node (bench.forwarding, N=0, docs/performance.md); a browser's RTCP (receiver
    reports, REMB, NACK, PLI: a few per second from every subscriber) paid the same hop. Here the
    mux offers the connection's SRTP to :func:`_direct_srtp`, which does what aiortc's
    ``_recv_next`` and :func:`drop_unparsable_packets` do with it, counters included. DTLS, and
    anything that arrives before the handshake has keyed SRTP, still go aiortc's way. False where
    the transport is not on the shared port (its datagrams then all go aiortc's way). On a
    natively forwarding node the RTP is unprotected in C too (:func:`_unprotect_natively`).
    """
    if getattr(dtls, "_gbmedia_rtp_direct", False):
        return True
    connection: IceConnection = dtls.transport._connection
    muxed = [p.transport for p in connection._protocols if isinstance(getattr(p, "transport", None), MuxedTransport)]
    if not muxed:
        return False
    drop_unparsable_packets(dtls)
    native = fanout.native is not None and all(t.mux.native_fanout for t in muxed)
    receive = functools.partial(_direct_srtp, dtls, _unprotect_natively if native else _unprotect)
    for transport in muxed:
        transport.receive_media(receive)
    dtls._gbmedia_rtp_direct = True  # type: ignore[attr-defined]
    return True


Unprotect = Callable[[RTCDtlsTransport, Any, bytes], "bytes | None"]


def _direct_srtp(dtls: RTCDtlsTransport, unprotect: Unprotect, data: bytes) -> bool:
    """One SRTP or SRTCP datagram from the shared port (see :func:`receive_rtp_directly`): True when
    it was taken (handled, or dropped as aiortc would drop it)."""
    srtp = dtls._rx_srtp
    if dtls._state is not _DTLS_CONNECTED or srtp is None:
        return False
    dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
    if is_rtcp(data):
        _direct_rtcp(dtls, srtp, data)
        return True
    arrival_time_ms = current_ms()
    clear = unprotect(dtls, srtp, data)
    if clear is None:
        return True  # not authentic, or replayed: aiortc drops it too
    routed = _parse_and_route(dtls, clear)
    if routed is None:
        return True
    packet, receiver = routed
    handle_now = getattr(receiver, "_gbmedia_handle_now", None)
    try:
        if handle_now is not None:
            handle_now(packet, arrival_time_ms)
        else:  # a receiver the SFU does not tap: aiortc's own handler, from a task
            _soon(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms))
    except Exception:  # a failure in what handles one packet must not end the connection, nor the port
        log.exception("handling an RTP packet failed; dropped")
    return True


def _direct_rtcp(dtls: RTCDtlsTransport, srtp: Any, data: bytes) -> None:
    """An SRTCP datagram: unprotected by aiortc's session (SRTCP stays in one session) and handed to
    the transport's RTCP handler (:func:`drop_unparsable_packets`) in this call."""
    try:
        clear = srtp.unprotect_rtcp(data)
    except pylibsrtp.Error:
        return  # not authentic, or replayed: aiortc drops it too
    run_now(dtls._handle_rtcp_data(clear), "handling an RTCP packet failed; dropped")


def run_now(step: Coroutine[Any, Any, None], failure: str) -> None:
    """Run ``step`` in this call, as far as it goes without waiting: aiortc's RTCP handlers are
    coroutines that never wait for a receiver report, a REMB or a sender report, and a task per
    packet would cost the loop turn this path saves. Should one wait after all, the rest runs in
    a task (:func:`_run_on`). A failure is logged with ``failure`` and ends only that packet."""
    try:
        waiting = step.send(None)
    except StopIteration:
        return
    except Exception:
        log.exception(failure)
        return
    _soon(_run_on(step, waiting, failure))


async def _run_on(step: Coroutine[Any, Any, None], waiting: Any, failure: str) -> None:
    """Drive ``step`` as its task would have, from where it first waited (on ``waiting``)."""
    try:
        while True:
            if isinstance(waiting, asyncio.Future):
                await asyncio.wait((waiting,))  # its outcome reaches ``step`` when it resumes
            else:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            waiting = step.send(None)
    except StopIteration:
        return
    except Exception:
        log.exception(failure)
    finally:
        step.close()


def _unprotect(dtls: RTCDtlsTransport, srtp: Any, data: bytes) -> bytes | None:
    """The clear packet by aiortc's own receiving session (pylibsrtp), or None where it refuses it."""
    try:
        return srtp.unprotect(data)  # type: ignore[no-any-return]
    except pylibsrtp.Error:
        return None


def _unprotect_natively(dtls: RTCDtlsTransport, srtp: Any, data: bytes) -> bytes | None:
    """The clear packet by a native session keyed like aiortc's receiving one (the same libsrtp, the
    same policy: the same packets taken and refused), in half the time of a call through cffi.

    Only RTP takes this way, all of it once SRTP is keyed, so the replay window and the rollover
    counters live in one session; SRTCP stays with aiortc's. The session is made at the first
    packet after the handshake, and again should the transport ever be keyed anew (another
    ``_rx_srtp``).
    """
    made = dtls.__dict__.get("_gbmedia_rx_native")
    if made is None or made[0] is not srtp:
        key, profile = srtp_receiving_key(dtls)
        made = dtls._gbmedia_rx_native = (srtp, fanout.native.Session(key, profile, inbound=True))  # type: ignore[union-attr,attr-defined]
    return made[1].unprotect(data)  # type: ignore[no-any-return]


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI for ``media_ssrc`` to the publisher behind ``receiver``."""
    await receiver._send_rtcp_pli(media_ssrc)


def prefer_codecs(transceiver: RTCRtpTransceiver, codecs: list[Any]) -> None:
    """Public API, kept here with its reason: listing no RTX codec turns RTX off."""
    transceiver.setCodecPreferences(codecs)


def drop_rtx(transceiver: RTCRtpTransceiver) -> None:
    """Negotiate no RTX on a transceiver the remote side offered.

    Its codecs are fixed by ``setRemoteDescription``, before ``setCodecPreferences``
    could act, so the negotiated list is filtered before ``createAnswer``. Without
    RTX a publisher retransmits lost packets as originals, which the forwarder
    passes on like any other packet.
    """
    transceiver._codecs = [c for c in transceiver._codecs if not is_rtx(c)]


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec a transceiver sends with after negotiation (first non-RTX)."""
    for codec in transceiver._codecs:
        if not is_rtx(codec):
            return codec
    return None


# --- ICE -----------------------------------------------------------------------------

PORT_ATTEMPTS = 64  # random tries in the range before giving up (a nearly full range)


def use_media_address(pc: RTCPeerConnection, address: MediaAddress) -> None:
    """Gather ``pc``'s host candidates on ``address``; call before ``setLocalDescription``.

    aioice binds an ephemeral port on every interface it finds (and skips loopback);
    a server wants one socket in its port range, advertised as its public address.
    Transports already patched, or already gathered, are left alone.
    """
    for connection in _ice_connections(pc):
        if getattr(connection, "_gbmedia_address", None) is not None:
            continue
        connection._gbmedia_address = address  # type: ignore[attr-defined]

        async def gather(
            component: int,
            addresses: list[str],
            timeout: int = 5,  # noqa: ASYNC109 - aioice signature
            connection: IceConnection = connection,
        ) -> list[Candidate]:
            return [await _host_candidate(connection, address, component)]

        connection.get_component_candidates = gather  # type: ignore[method-assign]
    keep_consent_on(pc)


def keep_consent_on(pc: RTCPeerConnection) -> None:
    """Check consent on ``pc``'s connections as RFC 7675 says (:func:`keep_consent`), not as aioice does.

    The node does it on every connection it makes (:func:`use_media_address`); a load generator
    standing in for browsers (which are as tolerant) does it on its clients."""
    for connection in _ice_connections(pc):
        connection.query_consent = functools.partial(keep_consent, connection)  # type: ignore[method-assign]


def _ice_connections(pc: RTCPeerConnection) -> list[IceConnection]:
    """The aioice connection under each of ``pc``'s transports (media and data channel)."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    return [dtls.transport.iceGatherer._connection for dtls in transports]


# RFC 7675: consent to send lapses 30 s after the last authenticated answer to a check made every 5 s
# (randomised 0.8-1.2x). aioice 0.10 instead gives each check a single 0.5 s try and closes the
# connection after six misses in a row, so a node whose event loop or shared UDP socket is more than
# half a second behind for half a minute (hundreds of viewers joining a live room at once, measured in
# bench.live at N=600) drops its connections, the host's first, though every answer did arrive.
CONSENT_INTERVAL = 5.0
CONSENT_EXPIRY = 30.0
CONSENT_RETRANSMISSIONS = 3  # a check's transaction waits 0.5 + 1 + 2 + 4 s for its answer, as RFC 8489


async def keep_consent(connection: IceConnection) -> None:
    """The node's consent freshness (replaces aioice's ``query_consent`` per server connection)."""
    assert connection.remote_password is not None
    key = connection.remote_password.encode("utf8")
    loop = asyncio.get_running_loop()
    clock = upkeep_clock()  # checks due in the same tick as others (and as sender reports) share a wake-up
    answered = loop.time()
    while True:
        await clock.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            try:
                await pair.protocol.request(
                    connection.build_request(pair, nominate=False),
                    pair.remote_addr,
                    integrity_key=key,
                    retransmissions=CONSENT_RETRANSMISSIONS,
                )
            except stun.TransactionError:
                continue
            answered = loop.time()
        if loop.time() - answered >= CONSENT_EXPIRY:
            log.info("ICE consent to send expired: no answer to consent checks for %.0f s", CONSENT_EXPIRY)
            connection._query_consent_task = None
            await connection.close()
            return


def _consent_answer(connection: IceConnection) -> ConsentAnswer:
    """The mux answers ``connection``'s consent checks itself (:func:`udp_mux.binding_success`).

    Only a request aioice would answer with a plain success and then do nothing more for: a Binding
    request (integrity already checked by the mux) with the full USERNAME, no USE-CANDIDATE and no
    role conflict, from the remote address of the connection's selected pair, once its early checks
    are done and while it is not closing. Anything else goes to aioice's ``request_received`` as before.
    """
    password = connection.local_password.encode("utf8")

    def answer(protocol: Any, message: stun.Message, addr: Address) -> bytes | None:
        attributes = message.attributes
        conflict = "ICE-CONTROLLING" if connection.ice_controlling else "ICE-CONTROLLED"  # our own role's
        if (
            connection._closing
            or not connection._early_checks_done
            or message.message_method != stun.Method.BINDING
            or "USE-CANDIDATE" in attributes
            or conflict in attributes
            or attributes.get("USERNAME") != f"{connection.local_username}:{connection.remote_username}"
        ):
            return None
        pair = connection._nominated.get(protocol.local_candidate.component)
        if pair is None or pair.protocol is not protocol or pair.remote_addr != addr:
            return None
        return binding_success(message.transaction_id, addr, password)

    return answer


def _muxed_candidate(connection: IceConnection, address: MediaAddress, component: int) -> Candidate:
    """The host candidate on the node's one UDP port: the mux hands this connection its datagrams."""
    assert address.mux is not None
    protocol = address.mux.attach(
        connection.local_username,
        connection.local_password,
        lambda: StunProtocol(connection),
        _consent_answer(connection),
    )
    protocol.local_candidate = Candidate(  # type: ignore[attr-defined]
        foundation=candidate_foundation("host", "udp", address.advertised),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=address.advertised,
        port=address.mux.port,
        type="host",
    )
    connection._protocols.append(protocol)
    return protocol.local_candidate  # type: ignore[attr-defined]


async def _host_candidate(connection: IceConnection, address: MediaAddress, component: int) -> Candidate:
    if address.mux is not None:
        return _muxed_candidate(connection, address, component)
    loop = asyncio.get_running_loop()
    low, high = address.ports
    ports = range(low, high + 1)
    tries = random.sample(ports, min(PORT_ATTEMPTS, len(ports)))
    for port in tries:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address.bind, port)
            )
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", address.advertised),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=address.advertised,
            port=port,
            type="host",
        )
        connection._protocols.append(protocol)
        return protocol.local_candidate
    raise ConnectionError(f"no free UDP port in {low}-{high} on {address.bind}")


# Starts calling ``drain`` when the socket ``fd`` may have data; the function it returns stops that.
SocketWatch = Callable[[int, Callable[[], None]], Callable[[], None]]


def read_rtp_in_the_clear(
    pc: RTCPeerConnection, sink: Callable[[bytes], None], batch: int = 64, watch: SocketWatch | None = None
) -> Callable[[], None] | None:
    """Hand ``pc``'s incoming RTP to ``sink`` undecrypted, many datagrams per wake-up; None if it cannot.

    For load generators, never for the server: SRTP leaves the RTP header in the clear, so a
    receiver that only counts packets (sequence numbers, marker bits) need not decrypt, depacketize
    or pass through aiortc at all. The nominated pair's transport stops reading and a duplicate of its
    socket is drained here, ``batch`` datagrams per readiness event instead of one; STUN (consent
    checks), DTLS and RTCP still go to aiortc. Needs asyncio's own loop (uvloop's UDP transports cannot
    pause). ``watch`` decides when the duplicate is drained: by default on every readiness event of the
    loop; a load generator may drain on a clock of its own instead, so that no datagram wakes it
    (bench/lib/subscriber.py, ``SocketPoller``). Call the returned function before closing ``pc``: it
    closes the duplicate.
    """
    releases: list[Callable[[], None]] = []
    for dtls in {t.receiver.transport for t in pc.getTransceivers()}:
        connection: IceConnection = dtls.transport._connection
        pair = connection._nominated.get(1)
        if pair is None or dtls._state is not DtlsState.CONNECTED:
            continue
        transport, received = pair.protocol.transport, pair.protocol.datagram_received
        if not hasattr(transport, "pause_reading"):
            continue
        transport.pause_reading()
        own = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        own.setblocking(False)

        def drain(own: socket.socket = own, received: Callable[[bytes, Any], None] = received) -> None:
            for _ in range(batch):
                try:
                    data, addr = own.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                    sink(data)  # RTP (RFC 5761: RTCP types 192-223 share the first byte's range)
                else:
                    received(data, addr)

        unwatch = (watch or _watch_readable)(own.fileno(), drain)

        def release(own: socket.socket = own, unwatch: Callable[[], None] = unwatch) -> None:
            if own.fileno() >= 0:
                unwatch()
                own.close()

        releases.append(release)
    if not releases:
        return None

    def release_all() -> None:
        for release in releases:
            release()

    return release_all


def _watch_readable(fd: int, drain: Callable[[], None]) -> Callable[[], None]:
    """The default :data:`SocketWatch`: the running loop calls ``drain`` whenever ``fd`` is readable."""
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, drain)
    return functools.partial(loop.remove_reader, fd)


# --- send side ----------------------------------------------------------------------


_DTLS_CONNECTED = DtlsState.CONNECTED


class RawSender:
    """Sends already-built RTP bytes through an aiortc sender's transport.

    The hot path: SRTP-protect and hand the datagram to the UDP transport of the
    nominated ICE pair directly. aiortc's own path (``_send_rtp`` → ICE transport →
    aioice ``send`` → ``sendto`` → ``send_data``) is four coroutines per packet for the
    same two calls. The sender's packet and octet counters are kept, so the sender
    reports aiortc writes stay right.

    On a node forwarding natively (single-port mode, :mod:`gbmedia.sfu.fanout`),
    :attr:`native` holds what the C fan-out needs for this subscriber: its own SRTP
    session keyed like aiortc's (:func:`native_session`), the client's address as a
    sockaddr, and the shared socket's descriptor. That session then owns the SRTP
    state of this transport's RTP; aiortc's keeps protecting RTCP (SRTCP has its own
    index).
    """

    __slots__ = ("_dtls", "_ext_ids", "_nominated", "_pair", "_route", "_sender", "native", "payload_type", "ssrc")

    def __init__(self, sender: RTCRtpSender, payload_type: int) -> None:
        self._sender = sender
        self._dtls = sender.transport
        self._nominated: dict[int, Any] = sender.transport.transport._connection._nominated  # aioice never rebinds it
        self._ext_ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        self._pair: Any = None
        self._route: tuple[Any, tuple[str, int], Any] | None = None
        self.native: tuple[Any, bytes, int] | None = None
        self.ssrc: int = sender._ssrc
        self.payload_type = payload_type
        # aiortc's sender reports (its RTCP loop, once a second or so) leave by the same short way as the RTP,
        # written by the loop's one SenderReports timer instead of a task per sender where it is not started yet.
        sender._send_rtcp = self._send_rtcp  # type: ignore[method-assign]
        if not sender._RTCRtpSender__started:  # type: ignore[attr-defined]
            sender._run_rtcp = functools.partial(report_from_the_loop, sender)  # type: ignore[method-assign]

    @property
    def ready(self) -> bool:
        """aiortc has started the sender (DTLS up, extension ids configured)."""
        return bool(self._sender._RTCRtpSender__started)  # type: ignore[attr-defined]

    @property
    def mid(self) -> str | None:
        return self._sender._RTCRtpSender__mid  # type: ignore[attr-defined]

    def layout(self) -> ExtensionLayout:
        """The header extensions this sender negotiated (ids, and its mid)."""
        ids = self._ext_ids
        mid = self.mid
        return ExtensionLayout(
            mid_id=ids.mid or 0,
            mid=mid.encode() if mid else b"",
            abs_send_time_id=ids.abs_send_time or 0,
            audio_level_id=ids.audio_level or 0,
        )

    def connected(self) -> bool:
        """DTLS is up and ICE has a nominated pair; resolves the route (and :attr:`native`) once per pair."""
        if self._dtls._state is not _DTLS_CONNECTED:
            return False
        pair = self._nominated.get(1)
        if pair is None:
            return False
        if pair is not self._pair:  # resolved once per nominated pair, not per packet
            self._pair = pair
            transport = pair.protocol.transport
            self._route = (transport.sendto, pair.remote_addr, self._dtls._tx_srtp.protect)
            self.native = _native_route(self._dtls, transport, pair.remote_addr)
            receive_rtp_directly(self._dtls)  # the subscriber's RTCP (reports, REMB, NACK, PLI) skips aioice's queue
        return True

    def send(self, data: bytes, payload_size: int) -> bool:
        """Protect and send one RTP packet on the Python path (a NACK answer; on the native path the
        C downlink answers them); False when not connected (yet, or any more)."""
        if not self.connected():
            return False
        self.transmit(data)
        self.count(payload_size)
        return True

    async def _send_rtcp(self, packets: list[Any]) -> None:
        """aiortc's ``RTCRtpSender._send_rtcp`` without its four coroutines per packet (transport, ICE,
        aioice, the protocol): protect with the transport's own SRTCP session and hand the datagram
        to the nominated pair's socket. Per subscriber and second that was most of the Python left."""
        self.send_rtcp_now(b"".join([bytes(p) for p in packets]))

    def send_rtcp_now(self, payload: bytes) -> None:
        """Protect and send one compound RTCP packet now (dropped while not connected, as aiortc's would)."""
        if not self.connected():
            return
        sendto, address, _ = self._route  # type: ignore[misc]
        sendto(self._dtls._tx_srtp.protect_rtcp(payload), address)

    def transmit(self, data: bytes) -> None:
        """The Python path's protect and send (after :meth:`connected`)."""
        sendto, address, protect = self._route  # type: ignore[misc]
        sendto(protect(data), address)

    def count(self, payload_size: int, packets: int = 1) -> None:
        """Packets sent: aiortc's sender reports carry these counters."""
        sender = self._sender
        sender._RTCRtpSender__octet_count += payload_size  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += packets  # type: ignore[attr-defined]

    def note_timestamp(self, rtp_timestamp: int, ntp_time: int) -> None:
        """Tell aiortc's sender-report writer which RTP time matches ``ntp_time`` (now)."""
        sender = self._sender
        sender._RTCRtpSender__ntp_timestamp = ntp_time  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]


# RFC 3550 6.4.1: a sender report without report blocks (V=2, RC=0, PT=200, length 6 words after the first).
_SR = struct.Struct("!BBHLQLLL")
RTCP_SR_FIRST = 0x80
RTCP_SR = 200


def sender_report_bytes(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int, sdes: bytes) -> bytes:
    """The compound packet aiortc 1.16.0's ``_run_rtcp`` writes: SR (no blocks), then its SDES."""
    return (
        _SR.pack(RTCP_SR_FIRST, RTCP_SR, 6, ssrc, ntp, rtp_timestamp, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF) + sdes
    )


def sdes_bytes(ssrc: int, cname: str | None) -> bytes:
    """The sender's SDES packet with its CNAME (empty: no CNAME yet), written by aiortc once per sender."""
    if cname is None:
        return b""
    return bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, cname.encode("utf8"))])]))


@dataclass(slots=True)
class _Reporting:
    """One sender's reports, from its :meth:`SenderReports.add` until its discard."""

    sdes: bytes


class SenderReports:
    """Every forwarding sender's RTCP sender reports, on the loop's upkeep grid.

    aiortc gives each sender a task that sleeps 0.5-1.5 s, builds its report from
    dataclasses and sends it: about 50 µs per sender and second, 7 % of a natively
    forwarding node's CPU at 256 subscribers (py-spy). Here each sender's next report is a
    timer of the loop's :class:`~gbmedia.sfu.upkeep_clock.UpkeepClock`, which wakes the
    loop once per tick for every report due in it (with the consent checks due then too),
    each packed with one struct call and sent the short way (:meth:`RawSender.send_rtcp_now`).
    The same bytes, the same randomised intervals (RFC 3550 6.2, late by less than a tick),
    the round-trip bookkeeping aiortc does, and the BYE when a sender stops
    (:func:`report_from_the_loop`).
    """

    def __init__(self, clock: UpkeepClock) -> None:
        self._clock = clock
        # the senders reporting, each with its SDES packet; a timer whose sender was discarded (or
        # added again since: a new chain of timers) finds another object here and ends its chain
        self._reporting: dict[RTCRtpSender, _Reporting] = {}
        self.sent = 0
        self.failed = 0

    def __contains__(self, sender: object) -> bool:
        return sender in self._reporting

    def add(self, sender: RTCRtpSender) -> None:
        """Report for ``sender`` (started: its CNAME is known) until :meth:`discard`."""
        reporting = self._reporting[sender] = _Reporting(
            sdes_bytes(sender._ssrc, sender._RTCRtpSender__cname)  # type: ignore[attr-defined]
        )
        self._next(sender, reporting)

    def discard(self, sender: RTCRtpSender) -> None:
        self._reporting.pop(sender, None)

    def _next(self, sender: RTCRtpSender, reporting: _Reporting) -> None:
        """``sender``'s next report 0.5-1.5 s from now (RFC 3550 6.2)."""
        when = self._clock.loop.time() + 0.5 + random.random()
        self._clock.call_at(when, functools.partial(self._fire, sender, reporting))

    def _fire(self, sender: RTCRtpSender, reporting: _Reporting) -> None:
        if self._reporting.get(sender) is not reporting:
            return  # stopped since
        try:
            self._report(sender, reporting.sdes)
        except Exception:  # one sender's failure must not stop its next reports
            self.failed += 1
            log.exception("sender report for SSRC %s failed", sender._ssrc)
        self._next(sender, reporting)

    def _report(self, sender: RTCRtpSender, sdes: bytes) -> None:
        ntp = sender._RTCRtpSender__ntp_timestamp  # type: ignore[attr-defined]
        payload = sender_report_bytes(
            sender._ssrc,
            ntp,
            sender._RTCRtpSender__rtp_timestamp,  # type: ignore[attr-defined]
            sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
            sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
            sdes,
        )
        sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF  # type: ignore[attr-defined]
        sender._RTCRtpSender__lsr_time = time.time()  # type: ignore[attr-defined]
        raw: RawSender = sender._send_rtcp.__self__  # type: ignore[attr-defined]  # only RawSender installs this
        raw.send_rtcp_now(payload)
        self.sent += 1


_loop_reports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SenderReports] = weakref.WeakKeyDictionary()


def sender_reports() -> SenderReports:
    """The running loop's :class:`SenderReports`."""
    loop = asyncio.get_running_loop()
    reports = _loop_reports.get(loop)
    if reports is None:
        reports = _loop_reports[loop] = SenderReports(upkeep_clock())
    return reports


async def report_from_the_loop(sender: RTCRtpSender) -> None:
    """``sender._run_rtcp`` for a forwarding sender: its reports come from :func:`sender_reports`
    until ``stop()`` cancels this, then the BYE aiortc's own loop would send."""
    sender._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
    reports = sender_reports()
    reports.add(sender)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass  # stop(): as aiortc's loop, end with the BYE
    finally:
        reports.discard(sender)
    await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
    sender._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]


def sender_figures(sender: RTCRtpSender) -> tuple[int, int, Any | None]:
    """Packets and payload octets sent, and the latest ``remote-inbound-rtp`` stats (None before a
    receiver report): what ``getStats()`` says of a sender, without it.

    ``getStats()`` also rebuilds the transport's, ICE's and every candidate pair's stats each
    call: sampled for every down track each second, that was 4 % of a natively forwarding
    node's CPU at 256 subscribers (py-spy), for figures the quality monitor never reads.
    """
    report = sender._RTCRtpSender__stats  # type: ignore[attr-defined]
    return (
        sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
        report.get("remote-inbound-rtp_" + str(id(sender))),
    )


_native_sessions: weakref.WeakKeyDictionary[RTCDtlsTransport, Any] = weakref.WeakKeyDictionary()


def native_session(dtls: RTCDtlsTransport) -> Any:
    """A native SRTP session with the keys aiortc derived for this transport's sending side.

    Mirrors aiortc 1.16.0's ``RTCDtlsTransport._setup_srtp``: the TLS exporter is
    deterministic for a DTLS session, so exporting again gives the same key and salt.
    One per transport (senders bundled on it share it), so the rollover counter of each
    SSRC lives in one place for the life of the connection.
    """
    session = _native_sessions.get(dtls)
    if session is None:
        key, profile = srtp_sending_key(dtls)
        session = _native_sessions[dtls] = fanout.native.Session(key, profile)  # type: ignore[union-attr]
    return session


def srtp_sending_key(dtls: RTCDtlsTransport) -> tuple[bytes, int]:
    """The master key and salt this side protects its SRTP with, and the libsrtp profile number.

    Exported again the way aiortc 1.16.0's ``_setup_srtp`` does (RFC 5764 section 4.2:
    client key, server key, client salt, server salt; each side sends with its own).
    """
    return _srtp_key(dtls, sending=True)


def srtp_receiving_key(dtls: RTCDtlsTransport) -> tuple[bytes, int]:
    """The master key and salt the other side protects its SRTP with (what this side unprotects with)."""
    return _srtp_key(dtls, sending=False)


def _srtp_key(dtls: RTCDtlsTransport, sending: bool) -> tuple[bytes, int]:
    selected = dtls._ssl.get_selected_srtp_profile()
    profile = next(p for p in dtls._srtp_profiles if p.openssl_profile == selected)
    view = dtls._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length))
    server = dtls._role == "server"
    return profile.get_key_and_salt(view, 1 if server == sending else 0), profile.libsrtp_profile


def _native_route(dtls: RTCDtlsTransport, transport: Any, address: tuple[str, int]) -> tuple[Any, bytes, int] | None:
    """(session, sockaddr, fd) when this pair's socket is a natively forwarding node's shared one."""
    if not isinstance(transport, MuxedTransport) or not transport.mux.native_fanout or fanout.native is None:
        return None
    mux = transport.mux
    if mux.fileno < 0 or (":" in address[0]) != (":" in mux.local_address[0]):
        return None
    return native_session(dtls), fanout.native.address(address[0], address[1]), mux.fileno


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what sender reports and abs-send-time derive from)."""
    return current_ntp_time()


def abs_send_time(ntp_time: int | None = None) -> int:
    """The abs-send-time extension's value (6.18 fixed point seconds, 24 bits) for now or ``ntp_time``."""
    return ((current_ntp_time() if ntp_time is None else ntp_time) >> 14) & 0x00FFFFFF


NackRequest = Callable[[list[int]], None]
BitrateEstimate = Callable[[int], None]


def tap_sender_rtcp(
    sender: RTCRtpSender, on_keyframe: KeyframeRequest, on_nack: NackRequest, on_remb: BitrateEstimate
) -> None:
    """Route a subscriber's feedback on this sender to the SFU.

    Keyframe requests (PLI/FIR) go upstream; NACKs are answered from the down
    track's own packet history (aiortc's history stays empty: it would need a packet
    object per forwarded packet); REMB is the subscriber's bandwidth estimate, which
    picks its simulcast layer. Receiver reports still reach aiortc (RTT, stats).
    """
    original: Callable[[AnyRtcpPacket], Awaitable[None]] = sender._handle_rtcp_packet
    drop_unparsable_packets(sender.transport)

    async def handle(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                on_keyframe()
                return
            if packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except UNPARSABLE:  # a REMB whose SSRC count runs past its end: struct.error
                    return
                if sender._ssrc in ssrcs:
                    on_remb(bitrate)
                return
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            on_nack(list(packet.lost))
            return
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


# --- simulcast (receive side) --------------------------------------------------------

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"


def accept_rid_extension(transceiver: RTCRtpTransceiver, extension_id: int) -> None:
    """Negotiate the RTP stream id extension on a transceiver the remote offered.

    aiortc does not know simulcast and drops the extension from the answer; without
    it the publisher's layers cannot be told apart. Call after
    ``setRemoteDescription``, before ``createAnswer``.
    """
    if not any(e.uri == RID_URI for e in transceiver._headerExtensions):
        transceiver._headerExtensions.append(RTCRtpHeaderExtensionParameters(id=extension_id, uri=RID_URI))


def route_unknown_ssrcs_by_mid(pc: RTCPeerConnection) -> None:
    """Route packets from SSRCs the SDP never named by their mid header extension.

    A simulcast publisher announces rids, not SSRCs. aiortc 1.16 routes an unknown
    SSRC by payload type alone, so with two video tracks of one codec (camera and
    screen share) on a bundled connection it would drop the camera's layers.
    """
    for dtls in {t.receiver.transport for t in pc.getTransceivers()}:
        router = dtls._rtp_router
        if getattr(router, "_gbmedia_mid_routing", False):
            continue
        original = router.route_rtp

        def route(packet: RtpPacket, router: Any = router, original: Any = original) -> Any:
            if packet.ssrc not in router.ssrc_table and packet.extensions.mid is not None:
                receiver = router.mid_table.get(packet.extensions.mid)
                if receiver is not None:
                    router.ssrc_table[packet.ssrc] = receiver
                    return receiver
            return original(packet)

        router.route_rtp = route
        router._gbmedia_mid_routing = True


# --- recording ------------------------------------------------------------------------

SenderReport = Callable[[int, int, int], None]  # (ssrc, ntp_timestamp, rtp_timestamp)
_RECORDING_RECEIVER_ATTRS = ("_handle_rtcp_packet",)


def tap_sender_reports(receiver: RTCRtpReceiver, listener: SenderReport) -> Callable[[], None]:
    """Call ``listener(ssrc, ntp, rtp)`` for every RTCP sender report the publisher sends.

    A sender report maps the publisher's RTP timestamps to its NTP wall clock, one
    mapping per track, so tracks of one publisher can be lined up on one clock (A/V
    sync of recordings). aiortc reads SRs only for its statistics; its receiver's
    ``_handle_rtcp_packet`` is wrapped once per receiver and still runs. Returns a
    function that removes the listener.
    """
    from aiortc.rtp import RtcpSrPacket

    listeners: list[SenderReport] | None = getattr(receiver, "_gbmedia_sr_listeners", None)
    if listeners is None:
        listeners = []
        receiver._gbmedia_sr_listeners = listeners  # type: ignore[attr-defined]
        original: Callable[[AnyRtcpPacket], Awaitable[None]] = receiver._handle_rtcp_packet

        async def handle(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpSrPacket):
                for each in tuple(listeners):
                    try:
                        each(packet.ssrc, packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp)
                    except Exception:  # a recorder's bug must not stop RTCP handling
                        log.exception("sender report listener failed")
            await original(packet)

        receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]
    listeners.append(listener)

    def untap() -> None:
        if listener in listeners:
            listeners.remove(listener)

    return untap


# --- live (WHEP playback: the server answers a viewer's offer) -----------------------


def answer_with_codec(transceiver: RTCRtpTransceiver, wanted: RTCRtpCodecParameters) -> bool:
    """Answer a remote offer's m-line with exactly ``wanted`` (the publisher's codec), no RTX.

    ``setRemoteDescription`` leaves every codec both sides know in ``_codecs`` and
    ``createAnswer`` lists them all; a forwarder can only send the one its publisher
    sends. Keeps the offer's payload type. False when the offer lacks that codec.
    """
    keep = [c for c in transceiver._codecs if not is_rtx(c) and same_codec(c, wanted)]
    if not keep:
        return False
    transceiver._codecs = keep[:1]
    return True


# --- ICE: which path a connection's media takes ------------------------------------------


def selected_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """The (local, remote) aioice candidates of the pair ICE nominated for ``pc``'s media; None before
    one is (or once closed). aiortc exposes no candidate-pair statistics: aioice's ``_nominated`` holds it.

    With ``max-bundle`` every transceiver shares one ICE transport; the first with a transport is read.
    """
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return None
        return pair.local_candidate, pair.remote_candidate
    return None
