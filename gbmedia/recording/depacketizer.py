"""RTP packets in, whole encoded frames out: reordering, loss handling, keyframes.

A recorder sees the publisher's packets exactly as the SFU forwards them: out of
order now and then, some lost (the publisher's retransmission may come late or never).
A :class:`FrameAssembler` keeps a small reorder window keyed by the extended
sequence number, emits a frame when every packet from its first to its marker is
there, and, for video, after a loss drops frames until the next keyframe (a decoder
fed a frame with a missing reference shows garbage until then) and says so, so
the caller can ask the publisher for a keyframe.

Payload formats: VP8 (RFC 7741: the payload descriptor's S bit and partition id
mark a frame's first packet; bit 0 of the first payload byte is 0 on a keyframe),
H.264 (RFC 6184: single NAL units, FU-A, STAP-A, depacketised by aiortc into an
Annex B byte stream; a frame with an IDR slice is a keyframe), Opus (one packet is
one frame). The depayloaders are aiortc's public codec functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

REORDER_WINDOW = 64  # packets held while waiting for a missing one (about 0.2 s of 1 Mbps video)
SUPPORTED = ("VP8", "H264", "opus")


class UnsupportedCodec(ValueError):
    """The track's codec is not one a recording can store without transcoding."""


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame: ``timestamp`` is the RTP timestamp, unwrapped (it never goes back)."""

    data: bytes
    timestamp: int
    keyframe: bool


def _seq_delta(a: int, b: int) -> int:
    """b - a on the 16-bit sequence circle, in -32768..32767."""
    return ((b - a + 0x8000) & 0xFFFF) - 0x8000


def _is_frame_start(codec: str, payload: bytes) -> bool:
    if codec == "VP8":
        return bool(payload) and bool(payload[0] & 0x10) and (payload[0] & 0x0F) == 0
    if codec == "H264":
        if not payload:
            return False
        nal_type = payload[0] & 0x1F
        if nal_type == 28:  # FU-A: the start bit of the FU header
            return len(payload) > 1 and bool(payload[1] & 0x80)
        return True  # a single NAL unit or an aggregate starts (or is) an access unit part
    return True


def is_keyframe_frame(codec: str, frame: bytes) -> bool:
    """Whether a whole depayloaded frame (VP8, or H.264 in Annex B) starts a picture on its own."""
    if codec == "VP8":
        return bool(frame) and not frame[0] & 0x01
    if codec == "H264":
        # Annex B: look at each NAL unit header after a start code.
        i = frame.find(b"\x00\x00\x01")
        while i != -1 and i + 3 < len(frame):
            if frame[i + 3] & 0x1F == 5:
                return True
            i = frame.find(b"\x00\x00\x01", i + 3)
        return False
    return True


class FrameAssembler:
    """Turns one track's RTP packets into :class:`EncodedFrame` objects, in order."""

    def __init__(self, codec: RTCRtpCodecParameters, window: int = REORDER_WINDOW) -> None:
        if codec.name not in SUPPORTED:
            raise UnsupportedCodec(f"recording does not store {codec.mimeType}")
        self.codec = codec
        self.name = codec.name
        self.is_video = codec.name != "opus"
        self.window = window
        self._packets: dict[int, RtpPacket] = {}  # by extended sequence number
        self._next: int | None = None  # extended sequence number of the next packet to consume
        self._highest: int | None = None
        self._ts_high = 0  # unwrapping of the 32-bit RTP timestamp
        self._last_ts: int | None = None
        self.waiting_for_keyframe = self.is_video
        self.lost = 0  # packets given up on
        self.dropped_frames = 0  # frames thrown away while waiting for a keyframe
        self.keyframe_wanted = False  # set on a loss; the caller asks upstream and clears it

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            return seq + 0x10000  # room below for packets that arrive before the first one
        ext = self._highest + _seq_delta(self._highest & 0xFFFF, seq)
        return ext

    def _unwrap_ts(self, ts: int) -> int:
        if self._last_ts is None:
            self._last_ts = ts
            return ts
        last = self._last_ts
        ext = last + ((ts - (last & 0xFFFFFFFF) + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        self._last_ts = max(last, ext)
        return ext

    def add(self, packet: RtpPacket) -> list[EncodedFrame]:
        """Take one packet; return the frames it completes (often none, sometimes several)."""
        if not packet.payload:
            return []  # padding only: nothing to store
        ext = self._extend(packet.sequence_number)
        if self._next is None:
            self._next = ext
        if ext < self._next or ext in self._packets:
            return []  # a duplicate, or a late packet we already gave up on
        self._packets[ext] = packet
        if self._highest is None or ext > self._highest:
            self._highest = ext
        return self._drain()

    def _drain(self) -> list[EncodedFrame]:
        frames: list[EncodedFrame] = []
        while True:
            frame, progressed = self._take_frame()
            if frame is not None:
                frames.append(frame)
            if not progressed:
                break
        return frames

    def _take_frame(self) -> tuple[EncodedFrame | None, bool]:
        """Consume the frame at the head of the buffer if complete; skip lost packets when
        the window overflows. Returns (frame or None, whether anything was consumed)."""
        assert self._next is not None and self._highest is not None
        head = self._packets.get(self._next)
        if head is None:
            if self._highest - self._next < self.window:
                return None, False
            self._abandon_head()
            return None, True
        if not _is_frame_start(self.name, head.payload) and self.is_video:
            # The frame's first packet was lost: this frame is broken.
            self._abandon_head()
            return None, True
        # Collect packets of the same timestamp up to the marker.
        seq = self._next
        parts: list[RtpPacket] = []
        while True:
            packet = self._packets.get(seq)
            if packet is None:
                if self._highest - self._next >= self.window:
                    self._abandon_head()
                    return None, True
                return None, False
            if packet.timestamp != head.timestamp:  # the marker was lost; the frame ends here
                break
            parts.append(packet)
            seq += 1
            if packet.marker or not self.is_video:
                break
        for s in range(self._next, seq):
            del self._packets[s]
        self._next = seq
        try:
            data = b"".join(depayload(self.codec, p.payload) for p in parts)
        except ValueError:  # a malformed payload: treat like a loss
            self._lost_frame()
            return None, True
        keyframe = is_keyframe_frame(self.name, data)
        if self.waiting_for_keyframe and not keyframe:
            self.dropped_frames += 1
            return None, True
        self.waiting_for_keyframe = False
        return EncodedFrame(data, self._unwrap_ts(head.timestamp), keyframe), True

    def _abandon_head(self) -> None:
        """Give up on the frame at the head: drop its packets, then skip the missing ones."""
        assert self._next is not None and self._highest is not None
        head = self._packets.get(self._next)
        if head is not None:
            while (p := self._packets.get(self._next)) is not None and p.timestamp == head.timestamp:
                del self._packets[self._next]
                self._next += 1
        while self._next not in self._packets and self._next <= self._highest:
            self._next += 1
            self.lost += 1
        self._lost_frame()

    def _lost_frame(self) -> None:
        self.dropped_frames += 1
        if self.is_video:
            self.waiting_for_keyframe = True
            self.keyframe_wanted = True

    def flush(self) -> list[EncodedFrame]:
        """At the end of the track: emit what is complete, give up on the rest."""
        frames: list[EncodedFrame] = []
        while self._packets:
            frame, progressed = self._take_frame()
            if frame is not None:
                frames.append(frame)
            if not progressed:
                self._abandon_head()
        return frames
