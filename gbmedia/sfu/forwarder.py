"""Down tracks: one published track as one subscriber receives it.

The subscriber's sending transceiver (a :class:`SenderSlot`) outlives any single
published track: when a transceiver is reused for another track, or the same track
is republished, the output sequence numbers and timestamps continue where they
stopped, so the subscriber's jitter buffer never sees a jump backwards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from aiortc import RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.codecs import is_keyframe
from gbmedia.sfu.track import PublishedTrack

# Timestamp step inserted when the source changes: about one frame / one packet.
_SWITCH_GAP = {90000: 3000, 48000: 960}


@dataclass(eq=False)
class SenderSlot:
    """A subscriber's sending transceiver and its output numbering."""

    transceiver: RTCRtpTransceiver
    kind: str
    last_seq: int = field(default_factory=lambda: random.getrandbits(16))
    last_ts: int = field(default_factory=lambda: random.getrandbits(32))
    down: DownTrack | None = None

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    def on_keyframe_request(self) -> None:
        """The subscriber lost the picture: ask whoever feeds this slot now."""
        if self.down is not None:
            self.down.track.request_keyframe()


class DownTrack:
    __slots__ = ("_raw", "_seq_offset", "_source_ssrc", "_ts_offset", "packets_out", "slot", "track",
                 "waiting_keyframe")

    def __init__(self, track: PublishedTrack, slot: SenderSlot) -> None:
        self.track = track
        self.slot = slot
        self._raw: aiortc_adapter.RawSender | None = None
        self._source_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self.waiting_keyframe = track.kind == "video"
        self.packets_out = 0
        slot.down = self
        track.down_tracks.add(self)

    def bind(self) -> bool:
        """Connect to the negotiated sender; False until negotiation finished."""
        if self._raw is None:
            codec = aiortc_adapter.negotiated_codec(self.slot.transceiver)
            if codec is None:
                return False
            self._raw = aiortc_adapter.RawSender(self.slot.transceiver.sender, codec.payloadType)
        return self._raw.ready

    def rebind(self) -> None:
        """Renegotiation may change the payload type: look it up again."""
        self._raw = None

    async def write(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if not self.bind():
            self.waiting_keyframe = self.track.kind == "video"
            return
        if self.waiting_keyframe:
            if not packet.payload or not is_keyframe(codec.mimeType, packet.payload):
                self.track.request_keyframe()
                return
            self.waiting_keyframe = False
        if packet.ssrc != self._source_ssrc:
            self._start_source(packet, codec)
        slot = self.slot
        out = RtpPacket(
            payload_type=self._raw.payload_type,  # type: ignore[union-attr]
            marker=packet.marker,
            sequence_number=(packet.sequence_number + self._seq_offset) & 0xFFFF,
            timestamp=(packet.timestamp + self._ts_offset) & 0xFFFFFFFF,
            ssrc=self._raw.ssrc,  # type: ignore[union-attr]
            payload=packet.payload,
        )
        out.padding_size = packet.padding_size
        out.extensions.audio_level = packet.extensions.audio_level
        if await self._raw.send(out):  # type: ignore[union-attr]
            slot.last_seq, slot.last_ts = out.sequence_number, out.timestamp
            self.packets_out += 1
            self.track.packets_forwarded += 1

    def _start_source(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Continue the slot's numbering from this source's first packet."""
        slot = self.slot
        gap = _SWITCH_GAP.get(codec.clockRate, 3000)
        self._seq_offset = (slot.last_seq + 1 - packet.sequence_number) & 0xFFFF
        self._ts_offset = (slot.last_ts + gap - packet.timestamp) & 0xFFFFFFFF
        self._source_ssrc = packet.ssrc

    def detach(self) -> None:
        self.track.down_tracks.discard(self)
        if self.slot.down is self:
            self.slot.down = None
