"""Encoded frames into a container file with PyAV, no transcoding, flushed as it goes.

VP8 and Opus go into WebM (Matroska), H.264 into fragmented MP4. Both layouts are
written so that a file cut at any point (the process killed, the machine lost)
still plays up to about the last second before the cut:

* WebM: the segment is written with an unknown size, clusters are closed every
  ``CLUSTER_MS`` and every packet is flushed to the file (``flush_packets``);
  a reader simply stops at the last complete cluster. Cues (the seek index) are
  only written at a clean close.
* MP4: ``empty_moov`` puts the track header first, then one ``moof``/``mdat``
  fragment per keyframe or per ``FRAGMENT_US``, whichever comes first; a reader
  plays every complete fragment.

Everything here is blocking (file I/O, muxing): callers run it in a thread.
"""

from __future__ import annotations

import fractions
import os
from dataclasses import dataclass
from pathlib import Path

import av

from gbmedia.sfu.frames import EncodedFrame

CLUSTER_MS = 1000
FRAGMENT_US = 1_000_000

# codec name (RTP) -> (container format, file extension, PyAV codec name, MIME type)
CONTAINERS: dict[str, tuple[str, str, str, str]] = {
    "VP8": ("webm", "webm", "vp8", "video/webm"),
    "opus": ("webm", "webm", "opus", "audio/webm"),
    "H264": ("mp4", "mp4", "h264", "video/mp4"),
}


def extension_for(codec: str) -> str:
    return CONTAINERS[codec][1]


def content_type_for(codec: str) -> str:
    return CONTAINERS[codec][3]


def frame_size(av_codec: str, keyframe: bytes) -> tuple[int, int]:
    """Width and height of a video keyframe, for the container header.

    VP8 says it in the keyframe header (RFC 6386 section 9.1); for H.264 the SPS
    would have to be parsed, so the keyframe is decoded once instead.
    """
    if av_codec == "vp8" and len(keyframe) >= 10 and keyframe[3:6] == b"\x9d\x01\x2a":
        return (int.from_bytes(keyframe[6:8], "little") & 0x3FFF, int.from_bytes(keyframe[8:10], "little") & 0x3FFF)
    decoder = av.CodecContext.create(av_codec, "r")
    try:
        for frame in [*decoder.decode(av.Packet(keyframe)), *decoder.decode(None)]:
            return frame.width, frame.height
    except av.error.FFmpegError as exc:
        raise ValueError(f"the first keyframe does not decode: {exc}") from None
    raise ValueError("the first keyframe does not decode")


@dataclass(frozen=True)
class WriterStats:
    frames: int
    keyframes: int
    duration: float  # seconds, from the first frame to the end of the last
    size_bytes: int


class TrackWriter:
    """One track's frames into one file. The file is created at the first frame
    (for video, a keyframe: the track's frame source guarantees it)."""

    def __init__(self, path: Path, codec: str, clock_rate: int) -> None:
        if codec not in CONTAINERS:
            raise ValueError(f"no container for {codec}")
        self.path = path
        self.codec = codec
        self.clock_rate = clock_rate
        self.time_base = fractions.Fraction(1, clock_rate)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._first_ts: int | None = None
        self._last_pts = -1
        self._frame_ticks = clock_rate // 50 if codec == "opus" else clock_rate // 30
        self.frames = 0
        self.keyframes = 0
        # Matroska counts in milliseconds: a smaller step would round to the same time.
        self._min_step = max(1, clock_rate // 1000) if CONTAINERS[codec][0] == "webm" else 1

    @property
    def started(self) -> bool:
        return self._container is not None

    def _open(self, first: EncodedFrame) -> None:
        fmt, _, av_codec, _ = CONTAINERS[self.codec]
        if fmt == "webm":
            options = {"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"}
        else:
            options = {
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "frag_duration": str(FRAGMENT_US),
                "flush_packets": "1",
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=fmt, container_options=options)
        try:
            if self.codec == "opus":
                stream = container.add_mux_stream(av_codec, rate=self.clock_rate)
            else:
                width, height = frame_size(av_codec, first.data)
                stream = container.add_mux_stream(av_codec, width=width, height=height)
            stream.time_base = self.time_base
        except Exception:
            container.close()
            raise
        self._container, self._stream = container, stream

    def write(self, frame: EncodedFrame) -> None:
        if self._container is None:
            self._open(frame)
            self._first_ts = frame.timestamp
        assert self._first_ts is not None
        pts = frame.timestamp - self._first_ts
        if pts <= self._last_pts:  # a repeated or backwards timestamp would stop the muxer
            pts = self._last_pts + self._min_step
        if self._last_pts >= 0:
            self._frame_ticks = max(1, min(pts - self._last_pts, self.clock_rate))
        self._last_pts = pts
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts
        packet.time_base = self.time_base
        packet.stream = self._stream
        if frame.keyframe:
            packet.is_keyframe = True
            self.keyframes += 1
        self._container.mux(packet)  # type: ignore[union-attr]
        self.frames += 1

    @property
    def duration(self) -> float:
        if self._last_pts < 0:
            return 0.0
        return (self._last_pts + self._frame_ticks) / self.clock_rate

    def close(self) -> WriterStats:
        """Finish the file (cues / the last fragment); safe to call twice."""
        container, self._container = self._container, None
        if container is not None:
            container.close()
        size = os.path.getsize(self.path) if self.path.exists() else 0
        return WriterStats(self.frames, self.keyframes, self.duration, size)


def repair(path: Path) -> bool:
    """Rewrite a file cut by a crash into a clean one (duration, seek index), in place.

    The cut file already plays; a remux (packets copied, nothing decoded) adds what a
    clean close writes: WebM's duration and cues, MP4's last fragment's index. Returns
    False, leaving the file as it was, when nothing in it can be read.
    """
    tmp = path.with_name(path.name + ".repair")
    try:
        with av.open(str(path)) as source:
            streams = [s for s in source.streams if s.type in ("audio", "video")]
            if not streams:
                return False
            fmt = "mp4" if path.suffix == ".mp4" else "webm"
            options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if fmt == "mp4" else {}
            copied = 0
            with av.open(str(tmp), "w", format=fmt, container_options=options) as target:
                mapping = {s.index: target.add_stream_from_template(s) for s in streams}
                for packet in source.demux(streams):
                    if packet.dts is None or packet.size == 0:
                        continue
                    packet.stream = mapping[packet.stream.index]
                    target.mux(packet)
                    copied += 1
        if copied == 0:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True
    except (av.error.FFmpegError, OSError, ValueError):
        tmp.unlink(missing_ok=True)
        return False
