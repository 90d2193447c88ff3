"""RTP in, fMP4 parts out: the packaging pipeline of one live room's program.

A program is the host's video track and its audio track. Their frames come from
each track's frame source (:mod:`gbmedia.sfu.frames`, shared with recordings):
reordered by sequence number, depacketized (H.264: single NAL, STAP-A, FU-A), and
after a loss only from the next keyframe on, asked for by the source. A missing
packet holds them back for ``REORDER_WAIT`` at most (viewers see any wait as
latency). The program's :class:`~gbmedia.sfu.frames.FrameSink` objects only queue the
frames (on the event loop); one worker thread per program does the rest, never on
the loop:

* video: H.264 access units are remuxed as they are;
  VP8 is decoded and encoded once to H.264 (libx264, ultrafast, zerolatency) with an
  IDR at every segment start;
* audio: Opus is decoded and encoded once to AAC-LC (what HLS players play);
* the :class:`Segmenter` cuts parts of about ``part_seconds`` and segments that
  start on a keyframe after about ``segment_seconds``, writing each part as one
  ``moof``+``mdat`` (see :mod:`gbmedia.streaming.fmp4`).

Audio is placed on the video's timeline by arrival time: each track's first frame
anchors its RTP clock to the wall clock, and the first video keyframe is time 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fractions
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from gbmedia.sfu.frames import EncodedFrame, FrameSink
from gbmedia.streaming import fmp4
from gbmedia.streaming.fmp4 import AUDIO_TIMESCALE, VIDEO_TIMESCALE, Sample, TrackRun
from gbmedia.streaming.playlist import HlsConfig, Part, Rendition

log = logging.getLogger(__name__)

REORDER_WAIT = 0.1  # seconds a gap may stay open before the missing packets count as lost
QUEUE_LIMIT = 1000  # frames waiting for the worker; beyond that they are refused (video resumes at a keyframe)
AUDIO_LAG_FILL = 0.5  # seconds: audio further behind the video than this is filled with silence
KEYFRAME_RETRY = 1.0


class VideoTranscoder:
    """VP8 frames to H.264 access units: decoded and encoded once per program, never per viewer."""

    def __init__(self, bitrate: int) -> None:
        self.bitrate = bitrate
        self._decoder = av.CodecContext.create("vp8", "r")
        self._encoder: Any = None
        self.frames_encoded = 0

    def transcode(self, data: bytes, pts: int, force_keyframe: bool) -> list[tuple[bytes, int, bool]]:
        """(Annex-B access unit, pts, keyframe) for each frame the encoder gives back."""
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.error.FFmpegError:
            return []
        out: list[tuple[bytes, int, bool]] = []
        for frame in frames:
            if self._encoder is None or (frame.width, frame.height) != (self._encoder.width, self._encoder.height):
                self._encoder = self._open_encoder(frame.width, frame.height)
                force_keyframe = True
            image = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
            image.pts = pts
            image.time_base = fractions.Fraction(1, VIDEO_TIMESCALE)
            image.pict_type = av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
            for packet in self._encoder.encode(image):
                out.append((bytes(packet), int(packet.pts if packet.pts is not None else pts), packet.is_keyframe))
            self.frames_encoded += 1
        return out

    def _open_encoder(self, width: int, height: int) -> Any:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height = width, height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = fractions.Fraction(1, VIDEO_TIMESCALE)
        encoder.framerate = fractions.Fraction(30, 1)
        encoder.bit_rate = self.bitrate
        encoder.gop_size = 10 * 30 * 60  # keyframes are forced at segment starts instead
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
        encoder.open()
        return encoder


def _silence(samples: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((2, samples), dtype=np.float32), format="fltp", layout="stereo")
    frame.sample_rate = AUDIO_TIMESCALE
    return frame


class AudioTranscoder:
    """Opus packets to AAC-LC frames (48 kHz stereo) on one continuous sample timeline."""

    FRAME = 1024

    def __init__(self, bitrate: int = 96_000) -> None:
        self._decoder = av.CodecContext.create("opus", "r")
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_TIMESCALE)
        self._fifo = av.AudioFifo()
        encoder = av.CodecContext.create("aac", "w")
        encoder.sample_rate, encoder.layout, encoder.format = AUDIO_TIMESCALE, "stereo", "fltp"
        encoder.bit_rate = bitrate
        encoder.time_base = fractions.Fraction(1, AUDIO_TIMESCALE)
        encoder.open()
        self._encoder = encoder
        self.audio_specific_config = bytes(encoder.extradata or b"\x11\x90")
        self.next_index: int | None = None  # timeline index of the next sample into the fifo
        self._encode_index = 0

    def add(self, payload: bytes, index: int) -> list[Sample]:
        """Decode one Opus packet whose first sample belongs at ``index`` on the timeline."""
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return []
        out: list[Sample] = []
        for frame in frames:
            frame.pts = None
            for chunk in self._resampler.resample(frame):
                out.extend(self._write(chunk, index))
                index += chunk.samples
        return out

    def fill_to(self, index: int) -> list[Sample]:
        """Silence up to ``index`` (a muted, lost or ended audio track must not stall players)."""
        if self.next_index is None:
            self.next_index = self._encode_index = max(0, index)
            return []
        if index <= self.next_index:
            return []
        return self._write(None, index)

    def _write(self, chunk: av.AudioFrame | None, index: int) -> list[Sample]:
        if self.next_index is None:
            self.next_index = self._encode_index = max(0, index)
        out: list[Sample] = []
        gap = index - self.next_index
        if gap > self.FRAME // 2 or (chunk is None and gap > 0):
            while gap > 0:
                count = min(gap, 48_000)
                self._fifo.write(_silence(count))
                self.next_index += count
                gap -= count
                out.extend(self._encode_ready())
        elif chunk is not None and gap < -2 * 960:
            return out  # this audio overlaps what is already on the timeline: late, drop it
        if chunk is not None:
            chunk.pts = None
            self._fifo.write(chunk)
            self.next_index += chunk.samples
        out.extend(self._encode_ready())
        return out

    def _encode_ready(self) -> list[Sample]:
        out: list[Sample] = []
        while self._fifo.samples >= self.FRAME:
            frame = self._fifo.read(self.FRAME)
            frame.pts = self._encode_index
            frame.time_base = fractions.Fraction(1, AUDIO_TIMESCALE)
            self._encode_index += self.FRAME
            for packet in self._encoder.encode(frame):
                if packet.pts is not None and packet.pts >= 0:
                    out.append(Sample(int(packet.pts), bytes(packet), True, self.FRAME))
        return out


PartSink = Callable[[Part, float], None]  # (part, seconds of its segment's start on the timeline)
SegmentSink = Callable[[int, float], None]  # (msn, duration)


class Segmenter:
    """Cuts samples into parts and segments (LL-HLS) and writes each part as an fMP4 fragment.

    Video drives the cuts: a part ends when the next frame would take it past the
    part target; a segment ends at the first keyframe after the segment target (or,
    when no keyframe comes, at the target duration, so the playlist's promise holds).
    Audio samples ride in the part during which they end.
    """

    def __init__(self, config: HlsConfig, on_part: PartSink, on_segment: SegmentSink, *, audio: bool) -> None:
        self.config = config
        self.on_part = on_part
        self.on_segment = on_segment
        self.audio = audio
        self.msn = 0
        self.part_index = 0
        self.sequence = 1
        self.segment_start: int | None = None
        self.part_start = 0
        self.part_independent = True
        self.interval = VIDEO_TIMESCALE // 30
        self._pending: Sample | None = None
        self._video: list[Sample] = []
        self._audio: deque[Sample] = deque()

    @property
    def started(self) -> bool:
        return self.segment_start is not None

    def wants_keyframe(self, dts: int) -> bool:
        """True when a frame at ``dts`` should be a keyframe (it would start a new segment)."""
        if self.segment_start is None:
            return True
        return dts - self.segment_start >= self.config.segment_seconds * VIDEO_TIMESCALE - self.interval // 2

    def video_end(self) -> int:
        return self._pending.dts if self._pending is not None else self.part_start

    def add_audio(self, sample: Sample) -> None:
        if self.audio and self.started:
            self._audio.append(sample)

    def add_video(self, sample: Sample) -> None:
        if self._pending is None:
            if self.segment_start is None:
                if not sample.keyframe:
                    return
                self.segment_start = self.part_start = sample.dts
                self.part_independent = True
            self._pending = sample
            return
        previous = self._pending
        if sample.dts <= previous.dts:
            return  # not a later frame: a repeat or a reordered source, which we cannot carry
        if sample.dts - previous.dts > max(VIDEO_TIMESCALE, 2 * self.config.part_seconds * VIDEO_TIMESCALE):
            # The video stalled (muted, lost, a frozen publisher). The segment ends where its media ends, so
            # no duration in the playlist lies; the next one starts at the new frame, after a hole players skip.
            previous.duration = self.interval
            self._video.append(previous)
            self._cut(previous.dts + previous.duration, end_segment=True)
            self.segment_start = self.part_start = sample.dts
            self.part_independent = sample.keyframe
            self._pending = sample
            return
        previous.duration = sample.dts - previous.dts
        self.interval = max(1, (self.interval * 3 + previous.duration) // 4)
        self._video.append(previous)
        self._pending = sample
        dts = sample.dts
        assert self.segment_start is not None
        segment_elapsed = dts - self.segment_start
        target = self.config.segment_seconds * VIDEO_TIMESCALE
        if sample.keyframe and segment_elapsed >= target - self.interval // 2:
            self._cut(dts, end_segment=True)
        elif segment_elapsed + self.interval > self.config.target_duration * VIDEO_TIMESCALE:
            self._cut(dts, end_segment=True)
        elif dts - self.part_start + self.interval > self.config.part_seconds * VIDEO_TIMESCALE + 1:
            self._cut(dts, end_segment=False)
        else:
            return
        self.part_independent = sample.keyframe

    def _cut(self, end: int, *, end_segment: bool) -> None:
        assert self.segment_start is not None
        audio: list[Sample] = []
        audio_end = end * AUDIO_TIMESCALE // VIDEO_TIMESCALE
        while self._audio and self._audio[0].dts + self._audio[0].duration <= audio_end:
            audio.append(self._audio.popleft())
        runs = [TrackRun(fmp4.VIDEO_TRACK_ID, self._video), TrackRun(fmp4.AUDIO_TRACK_ID, audio)]
        data = fmp4.fragment(self.sequence, runs)
        self.sequence += 1
        part = Part(self.msn, self.part_index, (end - self.part_start) / VIDEO_TIMESCALE, self.part_independent, data)
        self.on_part(part, self.segment_start / VIDEO_TIMESCALE)
        self._video = []
        self.part_index += 1
        self.part_start = end
        if end_segment:
            self.on_segment(self.msn, (end - self.segment_start) / VIDEO_TIMESCALE)
            self.msn += 1
            self.part_index = 0
            self.segment_start = end


@dataclass
class ProgramStats:
    video_frames: int = 0  # frames that reached the segmenter (remuxed or transcoded)
    frames_encoded: int = 0
    audio_frames: int = 0
    frames_refused: int = 0  # the worker's queue was full (a refused video frame also counts as dropped)
    packets_lost: int = 0  # sequence gaps the reorder buffer gave up on (video and audio)
    frames_dropped: int = 0  # video frames broken by loss or waiting for a keyframe


_STOP = object()


class Program:
    """One live room's rendition and the worker thread that produces it."""

    def __init__(
        self, room_id: str, config: HlsConfig, *, video_bitrate: int, request_keyframe: Callable[[], None], audio: bool
    ) -> None:
        self.room_id = room_id
        self.config = config
        self.video_bitrate = video_bitrate
        self.rendition = Rendition(config)
        self.stats = ProgramStats()
        self.has_audio = audio
        self.video_codec: str | None = None
        self._request_keyframe = request_keyframe
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"hls-{room_id[:8]}", daemon=True)
        self.video_sink = _Sink(self, "video")
        self.audio_sink = _Sink(self, "audio")
        self.failed: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join, 10)
        self.rendition.end()

    def enqueue(self, kind: str, frame: EncodedFrame) -> bool:
        """Queue a frame for the worker (on the loop); False when the worker is that far behind."""
        if self._queue.qsize() > QUEUE_LIMIT:
            self.stats.frames_refused += 1
            return False
        self._queue.put((kind, frame))
        return True

    # --- the worker thread ------------------------------------------------------------------

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us: the node is stopping
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        try:
            _Worker(self).run()
        except Exception as exc:  # a broken stream must end this program, not the node
            self.failed = exc
            log.exception("hls packaging failed", extra={"room_id": self.room_id})
            self._to_loop(self.rendition.end)


class _Sink(FrameSink):
    """The frame sink a published track feeds: only queues and counts (it runs on the event loop)."""

    reorder_wait = REORDER_WAIT

    def __init__(self, program: Program, kind: str) -> None:
        self.program, self.kind = program, kind

    def on_frame(self, frame: EncodedFrame) -> bool:
        return self.program.enqueue(self.kind, frame)

    def on_loss(self, packets: int, frames: int) -> None:
        stats = self.program.stats
        stats.packets_lost += packets
        if self.kind == "video":
            stats.frames_dropped += frames

    def on_track_closed(self) -> None:
        self.program._queue.put((self.kind, None))


class _Worker:
    """The state the worker thread owns; nothing here is touched from the loop."""

    def __init__(self, program: Program) -> None:
        self.p = program
        self.config = program.config
        self.transcoder: VideoTranscoder | None = None
        self.audio = AudioTranscoder() if program.has_audio else None
        self.segmenter = Segmenter(self.config, self._part, self._segment_end, audio=program.has_audio)
        self.origin_ts: int | None = None  # extended RTP timestamp of the first keyframe
        self.origin_wall: float | None = None  # its capture time, estimated on the arrival clock (time.time())
        self.origin_utc: dt.datetime | None = None
        self.video_anchor: tuple[float, int] | None = None  # (arrival, extended timestamp) of the first frame
        self.audio_offset: int | None = None  # timeline index = extended audio timestamp + offset
        self.audio_anchor: tuple[float, int] | None = None
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.init_written = False
        self.last_keyframe_request = 0.0

    def run(self) -> None:
        while True:
            try:
                item = self.p._queue.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                kind, frame = item
                if frame is None:
                    continue  # a track closed: the service stops or re-plans the program
                if kind == "video":
                    self._video_codec(frame.codec.mimeType.lower())
                    if self.video_anchor is None:
                        self.video_anchor = (frame.arrival, frame.timestamp)
                    self._video_frame(frame)
                else:
                    if self.audio_anchor is None:
                        self.audio_anchor = (frame.arrival, frame.timestamp)
                    self._audio_frame(frame)
            self._keep_audio_up()

    def _video_codec(self, mime: str) -> None:
        if self.p.video_codec is not None:
            return
        codec = {"video/h264": "h264", "video/vp8": "vp8"}.get(mime)
        if codec is None:
            raise ValueError(f"HLS cannot package {mime}")
        self.p.video_codec = codec
        if codec == "vp8":
            self.transcoder = VideoTranscoder(self.p.video_bitrate)

    def _ask_keyframe(self, now: float) -> None:
        if now - self.last_keyframe_request >= KEYFRAME_RETRY:
            self.last_keyframe_request = now
            self.p._to_loop(self.p._request_keyframe)

    def _video_frame(self, frame: EncodedFrame) -> None:
        if self.origin_ts is None:
            if not frame.keyframe:
                return
            self.origin_ts = frame.timestamp
            assert self.video_anchor is not None
            # The keyframe's capture time, on the arrival clock of the first frame.
            anchor_wall, anchor_ts = self.video_anchor
            self.origin_wall = anchor_wall + (frame.timestamp - anchor_ts) / VIDEO_TIMESCALE
            self.origin_utc = dt.datetime.fromtimestamp(self.origin_wall, dt.UTC)
        pts = frame.timestamp - self.origin_ts
        self.p.stats.video_frames += 1
        if self.transcoder is not None:
            force = self.segmenter.wants_keyframe(pts)
            units = self.transcoder.transcode(frame.data, pts, force)
            self.p.stats.frames_encoded = self.transcoder.frames_encoded
        else:
            units = [(frame.data, pts, frame.keyframe)]
            if self.segmenter.started and self.segmenter.wants_keyframe(pts + self.segmenter.interval * 6):
                self._ask_keyframe(time.monotonic())  # a publisher's keyframe ends each segment
        for data, unit_pts, keyframe in units:
            self._video_unit(data, unit_pts, keyframe)

    def _video_unit(self, annexb: bytes, pts: int, keyframe: bool) -> None:
        units = [u for u in fmp4.split_annexb(annexb) if fmp4.nal_type(u) != fmp4.NAL_AUD]
        for unit in units:
            if fmp4.nal_type(unit) == fmp4.NAL_SPS and self.sps is None:
                self.sps = unit
            elif fmp4.nal_type(unit) == fmp4.NAL_PPS and self.pps is None:
                self.pps = unit
        if not self.init_written:
            if not keyframe or self.sps is None or self.pps is None:
                return
            self._write_init(annexb)
        # Parameter sets equal to the init segment's live there; changed ones stay in-band.
        sample_units = [u for u in units if u not in (self.sps, self.pps)]
        if not sample_units:
            return
        self.segmenter.add_video(Sample(pts, fmp4.to_avcc(sample_units), keyframe))

    def _write_init(self, annexb: bytes) -> None:
        assert self.sps is not None and self.pps is not None
        width, height = _probe_size(annexb)
        video = fmp4.VideoTrackInfo(width, height, self.sps, self.pps)
        audio = (
            fmp4.AudioTrackInfo(AUDIO_TIMESCALE, 2, self.audio.audio_specific_config)
            if self.audio is not None
            else None
        )
        codecs = video.codec_string + (("," + audio.codec_string) if audio is not None else "")
        self.p._to_loop(self.p.rendition.set_init, fmp4.init_segment(video, audio), codecs, (width, height))
        self.init_written = True
        log.info(
            "hls rendition started",
            extra={
                "room_id": self.p.room_id,
                "codec": self.p.video_codec,
                "width": width,
                "height": height,
                "audio": audio is not None,
            },
        )

    def _audio_frame(self, frame: EncodedFrame) -> None:
        if self.audio is None or self.origin_wall is None or self.audio_anchor is None:
            return  # nothing plays before the first video keyframe
        if self.audio_offset is None:
            anchor_wall, anchor_ts = self.audio_anchor
            self.audio_offset = round((anchor_wall - self.origin_wall) * AUDIO_TIMESCALE) - anchor_ts
        index = frame.timestamp + self.audio_offset
        if index < 0:
            return
        for sample in self.audio.add(frame.data, index):
            self.p.stats.audio_frames += 1
            self.segmenter.add_audio(sample)

    def _keep_audio_up(self) -> None:
        """Silence where audio is missing, so the audio track never falls far behind the video."""
        if self.audio is None or not self.segmenter.started or self.origin_wall is None:
            return
        video_now = self.segmenter.video_end() * AUDIO_TIMESCALE // VIDEO_TIMESCALE
        behind = video_now - int(AUDIO_LAG_FILL * AUDIO_TIMESCALE)
        if self.audio.next_index is None or self.audio.next_index < behind:
            for sample in self.audio.fill_to(behind):
                self.segmenter.add_audio(sample)

    def _part(self, part: Part, segment_start: float) -> None:
        assert self.origin_utc is not None
        started = self.origin_utc + dt.timedelta(seconds=segment_start)
        self.p._to_loop(self.p.rendition.add_part, part, started)

    def _segment_end(self, msn: int, duration: float) -> None:
        self.p._to_loop(self.p.rendition.end_segment, msn, duration)


def _probe_size(annexb: bytes) -> tuple[int, int]:
    """Width and height of an H.264 keyframe, decoded once (simpler and surer than parsing the SPS)."""
    decoder = av.CodecContext.create("h264", "r")
    frames = list(decoder.decode(av.Packet(annexb)))
    frames += list(decoder.decode(None)) if not frames else []
    if not frames:
        raise ValueError("the first H.264 keyframe does not decode")
    return frames[0].width, frames[0].height
