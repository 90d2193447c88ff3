"""The server side of a playback-only viewer (WHEP): the viewer offers, the server answers.

A :class:`~gbmedia.sfu.peers.SubscriberPeer` makes the offers and renegotiates as
tracks come and go. A WHEP viewer is the other way round: it sends one offer with a
receive-only audio and video m-line and never renegotiates. So the answer fixes, per
kind, the one codec the room's publisher sends (the forwarder never transcodes),
and the server then feeds each m-line whichever published track of that kind and
codec is the room's program, switching tracks on the same sender slot as hosts
come and go (the slot keeps sequence numbers and timestamps continuous).
"""

from __future__ import annotations

import time

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.codecs import same_codec
from gbmedia.sfu.forwarder import DownTrack, SenderSlot, share_estimate
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.peers import (
    NegotiationError,
    PlaceholderTrack,
    apply_remote,
    parse_sdp,
    server_configuration,
    set_local,
)
from gbmedia.sfu.track import PublishedTrack

PLAYBACK_KINDS = ("audio", "video")


class PlaybackPeer:
    """One viewer's connection: at most one sending slot per kind."""

    def __init__(self, session_id: str, address: MediaAddress | None = None) -> None:
        self.session_id = session_id
        self.pc = RTCPeerConnection(server_configuration())
        self.address = address
        self.slots: dict[str, SenderSlot] = {}  # by kind
        self.codecs: dict[str, RTCRtpCodecParameters] = {}  # what each slot was negotiated to send
        self.estimate_bps: int | None = None

    async def answer(self, offer_sdp: str, codecs: dict[str, RTCRtpCodecParameters]) -> str:
        """Answer the viewer's offer, sending ``codecs[kind]`` on its first m-line of each kind.

        Raises :class:`NegotiationError`: ``invalid_sdp`` for an offer that does not
        parse or receives nothing, ``no_usable_codec`` when an m-line of a kind the
        room sends lacks the codec the publisher sends.
        """
        description = parse_sdp(offer_sdp, "offer")
        receiving = {
            m.rtp.muxId
            for m in description.media
            if m.kind in PLAYBACK_KINDS and m.direction in ("recvonly", "sendrecv") and m.port != 0
        }
        if not receiving:
            raise NegotiationError("invalid_sdp", "the offer has no receiving audio or video m-line")
        await apply_remote(self.pc, offer_sdp, "offer")
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind in self.slots or kind not in codecs or transceiver.mid not in receiving:
                continue  # answered inactive: nothing of that kind to send
            codec = codecs[kind]
            if not aiortc_adapter.answer_with_codec(transceiver, codec):
                raise NegotiationError(
                    "no_usable_codec",
                    f"the offer's {kind} m-line does not offer {codec.mimeType}, the codec the room's host sends",
                )
            transceiver.sender.replaceTrack(PlaceholderTrack(kind))
            transceiver.direction = "sendonly"
            slot = SenderSlot(transceiver, kind)
            aiortc_adapter.tap_sender_rtcp(
                transceiver.sender, slot.on_keyframe_request, slot.on_nack, self._on_estimate
            )
            self.slots[kind] = slot
            self.codecs[kind] = codec
        if not self.slots:
            raise NegotiationError("no_usable_codec", "the offer receives no kind of media the room sends")
        await set_local(self.pc, await self.pc.createAnswer(), self.address)
        return self.pc.localDescription.sdp

    def _on_estimate(self, bitrate: int) -> None:
        """The viewer's REMB: a simulcast program gets the layer its bandwidth allows."""
        self.estimate_bps = bitrate
        share_estimate([s.down for s in self.slots.values() if s.down is not None], bitrate, time.monotonic())

    def can_play(self, track: PublishedTrack) -> bool:
        codec = self.codecs.get(track.kind)
        return codec is not None and same_codec(track.codec, codec)

    def playing(self, kind: str) -> PublishedTrack | None:
        slot = self.slots.get(kind)
        return slot.down.track if slot is not None and slot.down is not None else None

    def play(self, track: PublishedTrack) -> DownTrack | None:
        """Feed ``track`` to the slot of its kind (replacing what it carried); None if it cannot."""
        slot = self.slots.get(track.kind)
        if slot is None or not self.can_play(track):
            return None
        if slot.down is not None:
            if slot.down.track is track:
                return slot.down
            slot.down.detach()
        down = DownTrack(track, slot)
        track.request_keyframe()
        return down

    def stop(self, kind: str) -> None:
        slot = self.slots.get(kind)
        if slot is not None and slot.down is not None:
            slot.down.detach()

    async def add_ice_candidate(self, candidate: object) -> None:
        await self.pc.addIceCandidate(candidate)  # type: ignore[arg-type]

    async def close(self) -> None:
        for kind in list(self.slots):
            self.stop(kind)
        await self.pc.close()
