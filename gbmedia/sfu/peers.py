"""The two server-side peer connections of a participant.

Each participant has at most one publisher connection (it offers, carrying every
track it sends) and one subscriber connection (the server offers, carrying every
track it receives): track multiplexing, renegotiated as tracks come and go, with
subscriber transceivers reused for later tracks of the same kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.codecs import capability_for
from gbmedia.sfu.forwarder import DownTrack, SenderSlot, share_estimate
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.sdp_check import InvalidSdp, check_sdp
from gbmedia.sfu.simulcast import complete_answer, offered_simulcast
from gbmedia.sfu.track import PublishedTrack

SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio", "unknown")


def server_configuration() -> RTCConfiguration:
    """How every server-side connection is set up.

    ``max-bundle``: all m-lines share one transport. With aiortc's default
    ("balanced") a first offer holding two tracks of one kind (two cameras for a
    late joiner, camera plus screen share) leaves the second on a transport that
    bundling then shuts down, and that track never flows. No STUN/TURN servers:
    the node's own address is its candidate (see :mod:`gbmedia.sfu.media_address`).
    """
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def on_connected(pc: RTCPeerConnection, callback: Callable[[], None]) -> None:
    """Call ``callback`` each time ``pc`` reaches ``connected`` (ICE and DTLS up): the moment its path is known."""

    @pc.on("connectionstatechange")
    def changed() -> None:
        if pc.connectionState == "connected":
            callback()


class NegotiationError(ValueError):
    """An offer or answer the server cannot use; ``code`` goes to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TrackInfo:
    """What a publisher says about one of its m-lines."""

    source: str = "unknown"
    name: str = ""


def parse_sdp(sdp: str, expected_type: str) -> SessionDescription:
    """A client's offer or answer, parsed; :class:`NegotiationError` ``invalid_sdp`` naming the bad line.

    :func:`check_sdp` goes first: aiortc's parser asserts on what it does not expect.
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise NegotiationError("invalid_sdp", f"the {expected_type} is not an SDP description")
    try:
        check_sdp(sdp)
    except InvalidSdp as exc:
        raise NegotiationError("invalid_sdp", f"the {expected_type} is refused: {exc}") from None
    try:
        return SessionDescription.parse(sdp)
    except (ValueError, IndexError, KeyError) as exc:
        raise NegotiationError("invalid_sdp", f"the {expected_type} SDP does not parse: {exc}") from None


async def apply_remote(pc: RTCPeerConnection, sdp: str, kind: str) -> None:
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except (ValueError, InvalidStateError) as exc:
        raise NegotiationError("invalid_sdp", f"the {kind} was refused: {exc}") from None
    except Exception as exc:  # aiortc raises OperationError when no codec is shared
        if "send parameters" in str(exc) or "codec" in str(exc).lower():
            raise NegotiationError("no_usable_codec", f"no codec in the {kind} is supported: {exc}") from None
        raise


async def set_local(pc: RTCPeerConnection, description: RTCSessionDescription, address: MediaAddress | None) -> None:
    if address is not None:
        aiortc_adapter.use_media_address(pc, address)
    try:
        await pc.setLocalDescription(description)
    except ConnectionError as exc:  # the UDP port range is exhausted
        raise NegotiationError("media_unavailable", f"the server cannot open a media socket: {exc}") from None


class PublisherPeer:
    def __init__(
        self, participant_id: str, configuration: RTCConfiguration | None = None, address: MediaAddress | None = None
    ) -> None:
        self.participant_id = participant_id
        self.pc = RTCPeerConnection(configuration or server_configuration())
        self.address = address
        self.tracks: dict[str, PublishedTrack] = {}  # by mid
        self._lock = asyncio.Lock()

    async def answer(
        self,
        offer_sdp: str,
        infos: dict[str, TrackInfo] | None = None,
        adopt: list[PublishedTrack] | None = None,
    ) -> tuple[str, list[PublishedTrack], list[PublishedTrack]]:
        """Apply the publisher's offer; returns (answer SDP, new tracks, ended tracks).

        ``adopt``: the tracks of the participant's previous publisher connection (a media
        restart). A new m-line of the same kind, source and layers takes one over (its id,
        subscribers and sinks; :meth:`PublishedTrack.rebind`) instead of starting a new
        track; those taken are removed from the list, which the caller ends.
        """
        description = parse_sdp(offer_sdp, "offer")
        infos = infos or {}
        adopt = adopt if adopt is not None else []
        simulcast = {
            mid: offer
            for mid, offer in offered_simulcast(offer_sdp).items()
            if any(m.rtp.muxId == mid and m.kind == "video" for m in description.media)
        }
        async with self._lock:
            await apply_remote(self.pc, offer_sdp, "offer")
            sending = {
                m.rtp.muxId: m
                for m in description.media
                if m.kind in ("audio", "video") and m.direction in ("sendonly", "sendrecv") and m.port != 0
            }
            for transceiver in self.pc.getTransceivers():
                if transceiver.mid not in self.tracks:
                    aiortc_adapter.drop_rtx(transceiver)
                if transceiver.mid in simulcast:
                    aiortc_adapter.accept_rid_extension(transceiver, simulcast[transceiver.mid].extension_id)
            aiortc_adapter.route_unknown_ssrcs_by_mid(self.pc)
            await set_local(self.pc, await self.pc.createAnswer(), self.address)
            added: list[PublishedTrack] = []
            for transceiver in self.pc.getTransceivers():
                mid = transceiver.mid
                if mid in self.tracks or mid not in sending:
                    continue
                codec = aiortc_adapter.negotiated_codec(transceiver)
                if codec is None:  # pragma: no cover - apply_remote refuses such offers
                    continue
                info = infos.get(mid, TrackInfo())
                offer = simulcast.get(mid)
                rids = offer.rids if offer else ()
                kept = next(
                    (t for t in adopt if t.kind == transceiver.kind and t.source == info.source and t.rids == rids),
                    None,
                )
                if kept is not None:
                    adopt.remove(kept)
                    kept.rebind(transceiver.receiver, codec, mid)
                    self.tracks[mid] = kept
                    continue
                track = PublishedTrack(
                    self.participant_id,
                    transceiver.kind,
                    info.source,
                    transceiver.receiver,
                    codec,
                    mid,
                    name=info.name,
                    rids=rids,
                )
                track.attach()
                self.tracks[mid] = track
                added.append(track)
            ended = [self.tracks.pop(mid) for mid in list(self.tracks) if mid not in sending]
            for track in ended:
                track.close()
            return complete_answer(self.pc.localDescription.sdp, simulcast), added, ended

    async def add_ice_candidate(self, candidate: object) -> None:
        await self.pc.addIceCandidate(candidate)  # type: ignore[arg-type]

    def release_tracks(self) -> list[PublishedTrack]:
        """Hand the tracks over (to a replacing connection, :meth:`answer`'s ``adopt``): closing this
        connection afterwards leaves them open."""
        tracks = list(self.tracks.values())
        self.tracks.clear()
        return tracks

    async def close(self) -> None:
        for track in self.tracks.values():
            track.close()
        self.tracks.clear()
        await self.pc.close()


class PlaceholderTrack(MediaStreamTrack):
    """Gives a sending transceiver a track without producing frames.

    The forwarder writes RTP itself; aiortc's own send loop waits here forever
    instead of polling for a track.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    async def recv(self) -> object:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        self._ended.set()
        super().stop()


class SubscriberPeer:
    def __init__(
        self, participant_id: str, configuration: RTCConfiguration | None = None, address: MediaAddress | None = None
    ) -> None:
        self.participant_id = participant_id
        self.pc = RTCPeerConnection(configuration or server_configuration())
        self.address = address
        self.slots: list[SenderSlot] = []
        self.estimate_bps: int | None = None  # the subscriber's bandwidth (REMB), all streams

    def add(self, track: PublishedTrack) -> DownTrack:
        """Route ``track`` to this subscriber; takes effect after the next offer/answer."""
        capability = capability_for(track.codec)
        if capability is None:
            raise NegotiationError("no_usable_codec", f"cannot forward codec {track.codec.mimeType}")
        slot = next((s for s in self.slots if s.kind == track.kind and s.down is None), None)
        if slot is None:
            transceiver = self.pc.addTransceiver(PlaceholderTrack(track.kind), direction="sendonly")
            slot = SenderSlot(transceiver, track.kind)
            aiortc_adapter.tap_sender_rtcp(
                transceiver.sender,
                slot.on_keyframe_request,
                slot.on_nack,
                lambda bitrate, slot=slot: self._on_estimate(slot, bitrate),
            )
            self.slots.append(slot)
        slot.transceiver.direction = "sendonly"
        aiortc_adapter.prefer_codecs(slot.transceiver, [capability])
        return DownTrack(track, slot)

    def _on_estimate(self, slot: SenderSlot, bitrate: int) -> None:
        slot.estimate_bps = bitrate
        self.estimate_bps = bitrate
        self.allocate()

    def allocate(self, now: float | None = None) -> None:
        """Share the subscriber's bandwidth estimate among its simulcast video down tracks."""
        if self.estimate_bps is None:
            return
        share_estimate(
            [s.down for s in self.slots if s.down is not None],
            self.estimate_bps,
            time.monotonic() if now is None else now,
        )

    def remove(self, down: DownTrack) -> None:
        down.detach()
        down.slot.transceiver.direction = "inactive"

    def track_ids_by_mid(self) -> dict[str, str]:
        return {s.mid: s.down.track.id for s in self.slots if s.down is not None and s.mid is not None}

    async def offer(self) -> tuple[str, dict[str, str]]:
        """A new offer for the current set of tracks, with mid → track id.

        One offer or answer at a time: the caller serialises them (the room's
        ``SubscriberNegotiation`` is their one owner).
        """
        await set_local(self.pc, await self.pc.createOffer(), self.address)
        return self.pc.localDescription.sdp, self.track_ids_by_mid()

    async def accept_answer(self, answer_sdp: str) -> None:
        parse_sdp(answer_sdp, "answer")
        if self.pc.signalingState != "have-local-offer":
            raise NegotiationError("unexpected_answer", "there is no subscriber offer waiting for an answer")
        await apply_remote(self.pc, answer_sdp, "answer")
        for slot in self.slots:
            if slot.down is not None:
                slot.down.rebind()
                slot.down.track.request_keyframe()

    async def add_ice_candidate(self, candidate: object) -> None:
        await self.pc.addIceCandidate(candidate)  # type: ignore[arg-type]

    async def close(self) -> None:
        for slot in self.slots:
            if slot.down is not None:
                slot.down.detach()
        await self.pc.close()
