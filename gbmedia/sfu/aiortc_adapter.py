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
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.clock import current_datetime, current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTP_HISTORY_SIZE,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
)

from gbmedia.sfu.media_address import MediaAddress

log = logging.getLogger(__name__)

SUPPORTED_AIORTC = "1.16.0"
RTCP_PSFB_FIR = 4  # RFC 5104; aiortc has no constant for it

PacketSink = Callable[[RtpPacket, RTCRtpCodecParameters], Awaitable[None]]
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
    "_RTCRtpSender__rtp_header_extensions_map",
    "_RTCRtpSender__rtp_history",
    "_RTCRtpSender__mid",
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__started",
    "_handle_rtcp_packet",
)


_ICE_ATTRS = ("get_component_candidates", "_protocols")


async def check_internals() -> None:
    """Raise :class:`AiortcInternalsChanged` unless every private name used exists."""
    if aiortc.__version__ != SUPPORTED_AIORTC:
        raise AiortcInternalsChanged(
            f"gbmedia's SFU adapter is written for aiortc {SUPPORTED_AIORTC}, found {aiortc.__version__}"
        )
    from aiortc import RTCPeerConnection
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    missing = [] if hasattr(RTCDtlsTransport, "_send_rtp") else ["RTCDtlsTransport._send_rtp"]
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video")
        missing += [a for a in _RECEIVER_ATTRS if not hasattr(transceiver.receiver, a)]
        missing += [a for a in _SENDER_ATTRS if not hasattr(transceiver.sender, a)]
        if not hasattr(transceiver, "_codecs"):
            missing.append("RTCRtpTransceiver._codecs")
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        missing += [f"aioice.Connection.{a}" for a in _ICE_ATTRS if not hasattr(connection, a)]
    finally:
        await pc.close()
    if missing:
        raise AiortcInternalsChanged(f"aiortc internals moved: {', '.join(missing)}")


# --- receive side -------------------------------------------------------------------

def tap_receiver(receiver: RTCRtpReceiver, sink: PacketSink) -> None:
    """Route the receiver's RTP packets to ``sink`` instead of aiortc's decoder.

    Mirrors aiortc 1.16.0's ``RTCRtpReceiver._handle_rtp_packet`` up to the point
    where it would depacketise: bandwidth estimate (REMB), statistics for receiver
    reports, NACK generation. RTX is not negotiated on publisher connections (see
    :func:`prefer_codecs`), so every packet is an original.
    """
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    streams: dict[int, Any] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
    nack_generator = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
    from aiortc.rtcrtpreceiver import StreamStatistics

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
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
                await receiver._send_rtcp(
                    RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb))
                )
        active[packet.ssrc] = current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None or is_rtx(codec):
            return
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if nack_generator is not None and nack_generator.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nack_generator.missing))
        await sink(packet, codec)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


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
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for dtls in transports:
        connection: IceConnection = dtls.transport.iceGatherer._connection
        if getattr(connection, "_gbmedia_address", None) is not None:
            continue
        connection._gbmedia_address = address  # type: ignore[attr-defined]

        async def gather(component: int, addresses: list[str], timeout: int = 5,  # noqa: ASYNC109 - aioice signature
                         connection: IceConnection = connection) -> list[Candidate]:
            return [await _host_candidate(connection, address, component)]

        connection.get_component_candidates = gather  # type: ignore[method-assign]


async def _host_candidate(connection: IceConnection, address: MediaAddress, component: int) -> Candidate:
    loop = asyncio.get_running_loop()
    low, high = address.ports
    ports = range(low, high + 1)
    tries = random.sample(ports, min(PORT_ATTEMPTS, len(ports)))
    for port in tries:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address.bind, port))
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", address.advertised), component=component,
            transport="udp", priority=candidate_priority(component, "host"), host=address.advertised,
            port=port, type="host")
        connection._protocols.append(protocol)
        return protocol.local_candidate
    raise ConnectionError(f"no free UDP port in {low}-{high} on {address.bind}")


# --- send side ----------------------------------------------------------------------

class RawSender:
    """Sends already-encoded RTP packets through an aiortc sender."""

    __slots__ = ("_ext_map", "_history", "_sender", "payload_type", "ssrc")

    def __init__(self, sender: RTCRtpSender, payload_type: int) -> None:
        self._sender = sender
        self._ext_map = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        self._history: dict[int, RtpPacket] = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
        self.ssrc: int = sender._ssrc
        self.payload_type = payload_type

    @property
    def ready(self) -> bool:
        """aiortc has started the sender (DTLS up, extension ids configured)."""
        return bool(self._sender._RTCRtpSender__started)  # type: ignore[attr-defined]

    @property
    def mid(self) -> str | None:
        return self._sender._RTCRtpSender__mid  # type: ignore[attr-defined]

    async def send(self, packet: RtpPacket) -> bool:
        """Send ``packet`` (already carrying our SSRC, PT, sequence and timestamp).

        Returns False when the transport is not connected (yet, or any more).
        """
        packet.extensions.mid = self.mid
        packet.extensions.abs_send_time = (current_ntp_time() >> 14) & 0x00FFFFFF
        self._history[packet.sequence_number % RTP_HISTORY_SIZE] = packet
        data = packet.serialize(self._ext_map)
        try:
            await self._sender.transport._send_rtp(data)
        except ConnectionError:
            return False
        sender = self._sender
        sender._RTCRtpSender__ntp_timestamp = current_ntp_time()  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = packet.timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += len(packet.payload)  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        return True


def tap_keyframe_requests(sender: RTCRtpSender, on_request: KeyframeRequest) -> None:
    """Call ``on_request`` when the subscriber asks this sender for a keyframe."""
    original: Callable[[AnyRtcpPacket], Awaitable[None]] = sender._handle_rtcp_packet

    async def handle(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_request()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


# --- live (WHEP playback: the server answers a viewer's offer) -----------------------

def _same_codec(negotiated: RTCRtpCodecParameters, wanted: RTCRtpCodecParameters) -> bool:
    if negotiated.mimeType.lower() != wanted.mimeType.lower() or negotiated.clockRate != wanted.clockRate:
        return False
    if negotiated.mimeType.lower() == "video/h264":
        def key(codec: RTCRtpCodecParameters) -> tuple[str, str]:
            return (str(codec.parameters.get("packetization-mode", "0")),
                    str(codec.parameters.get("profile-level-id", "42")).lower()[:2])
        return key(negotiated) == key(wanted)
    return True


def answer_with_codec(transceiver: RTCRtpTransceiver, wanted: RTCRtpCodecParameters) -> bool:
    """Answer a remote offer's m-line with exactly ``wanted`` (the publisher's codec), no RTX.

    ``setRemoteDescription`` leaves every codec both sides know in ``_codecs`` and
    ``createAnswer`` lists them all; a forwarder can only send the one its publisher
    sends. Keeps the offer's payload type. False when the offer lacks that codec.
    """
    keep = [c for c in transceiver._codecs if not is_rtx(c) and _same_codec(c, wanted)]
    if not keep:
        return False
    transceiver._codecs = keep[:1]
    return True
