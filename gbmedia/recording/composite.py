"""Composite recording of a room: a grid of its video tracks and its audio mixed, in one MP4.

Unlike per-track recording this needs pixels and samples, so each source track
is decoded exactly once, here (never per subscriber): a background job with one
thread takes every source's frames (from the track's frame source, shared with the
per-track recorder and LL-HLS: see :mod:`gbmedia.sfu.frames`), decodes them, keeps
the latest picture of each video source
and a sample queue for each audio source, and on its own clock renders the grid
(``FPS`` frames a second, ``WIDTH`` x ``HEIGHT``, tiles in arrival order, each
picture fitted into its tile) and mixes the audio (sum of the sources, clipped),
encoding H.264 (libx264, ultrafast) and AAC into a fragmented MP4, crash-safe
like the per-track files.

The clock is the wall clock as frames arrive, held ``LATENCY`` behind so that
every source's media for an instant is there before the instant is rendered; a
source that starts late is padded with silence so its audio lines up with the
moment it joined. A missing packet may hold a source's frames back for half of
``LATENCY`` (``reorder_wait``): longer, and they would miss their moment anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from gbmedia.recording.codecs import SUPPORTED
from gbmedia.recording.track_recorder import MAX_QUEUED, TrackResult
from gbmedia.recording.writer import FRAGMENT_US, WriterStats
from gbmedia.sfu.frames import EncodedFrame, FrameSink

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 640, 360, 15
SAMPLE_RATE = 48000
AAC_FRAME = 1024
LATENCY = 0.4  # seconds the render clock stays behind arrivals
_DECODERS = {"VP8": "vp8", "H264": "h264", "opus": "opus"}


@dataclass(eq=False)
class _Source:
    key: int
    kind: str
    decoder: Any
    picture: np.ndarray | None = None  # the latest frame, fitted to its tile
    picture_tile: tuple[int, int] = (0, 0)
    last_frame: Any = None
    samples: deque[np.ndarray] = field(default_factory=deque)
    buffered: int = 0
    started: bool = False
    ended: bool = False
    resampler: Any = None


class _Sink(FrameSink):
    """The frame sink one source track gets; queues into the job."""

    reorder_wait = LATENCY / 2

    def __init__(self, job: CompositeJob, key: int, track: Any) -> None:
        self.job, self.key, self.track = job, key, track

    def on_frame(self, frame: EncodedFrame) -> bool:
        return self.job._put((self.key, frame, frame.arrival))

    def on_track_closed(self) -> None:
        self.job._put((self.key, None, time.time()))


class CompositeJob:
    """One room's composite: add its tracks as they come, finish when the recording stops."""

    def __init__(
        self,
        path: Path,
        *,
        loop: asyncio.AbstractEventLoop,
        on_started: Callable[[], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._loop = loop
        self._on_started = on_started
        self._on_failed = on_failed
        self._queue: queue.SimpleQueue[tuple[int, EncodedFrame | None, float] | None] = queue.SimpleQueue()
        self._queued = 0
        self._sinks: dict[str, tuple[_Sink, Any]] = {}  # track id -> (sink, track)
        self._next_key = 0
        self._closed = False
        self.error: str | None = None
        self.done: concurrent.futures.Future[TrackResult] = concurrent.futures.Future()
        self._sources: dict[int, _Source] = {}
        self._order: list[int] = []  # video sources in the order they appeared
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._t0: float | None = None  # wall time of composite time 0
        self._frames_out = 0
        self._samples_out = 0
        self._last_arrival = 0.0
        self._thread = threading.Thread(target=self._run, name="rec-composite", daemon=True)
        self._thread.start()

    # --- on the event loop -------------------------------------------------------------

    def add_track(self, track: Any, participant: Any = None) -> None:
        if self._closed or track.id in self._sinks or track.codec.name not in SUPPORTED:
            return
        sink = _Sink(self, self._next_key, track)
        self._next_key += 1
        self._sinks[track.id] = (sink, track)
        track.add_sink(sink)

    def remove_track(self, track: Any) -> None:
        entry = self._sinks.pop(track.id, None)
        if entry is not None:
            track.remove_sink(entry[0])
            entry[0].on_track_closed()

    def finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sink, track in self._sinks.values():
            track.remove_sink(sink)
        self._sinks.clear()
        self._queue.put(None)

    async def result(self) -> TrackResult:
        return await asyncio.wrap_future(self.done)

    def _put(self, item: tuple[int, EncodedFrame | None, float]) -> bool:
        """Queue for the thread; False when it cannot keep up (the frame source then resumes at a keyframe)."""
        if self._closed or self.error is not None:
            return True  # taken, and nothing more is made of it
        if self._queued >= MAX_QUEUED:
            return False
        self._queued += 1
        self._queue.put(item)
        return True

    def _call(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is not None:
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:
                pass

    # --- in the thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=1 / FPS)
                except queue.Empty:  # nothing arrives (all muted): the picture still moves on
                    self._render_until(time.time() - LATENCY)
                    continue
                if item is None:
                    break
                self._queued -= 1
                key, frame, arrival = item
                self._last_arrival = max(self._last_arrival, arrival)
                self._take(key, frame, arrival)
                self._render_until(arrival - LATENCY)
            if self._t0 is not None:  # the end: render what arrived, no silence after it
                self._render_until(self._last_arrival)
            self.done.set_result(TrackResult(self._close(), self._t0, 0))
        except Exception as exc:  # disk full, an encoder failure: the composite fails, the room goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("composite recording failed", extra={"path": str(self.path), "error": self.error})
            try:
                stats = self._close()
            except Exception:
                stats = WriterStats(
                    self._frames_out, 0, self._frames_out / FPS, self.path.stat().st_size if self.path.exists() else 0
                )
            self.done.set_result(TrackResult(stats, self._t0, 0, self.error))
            self._call(self._on_failed, self.error)

    def _take(self, key: int, frame: EncodedFrame | None, arrival: float) -> None:
        source = self._sources.get(key)
        if frame is None:
            if source is not None:
                source.ended = True
                if key in self._order:
                    self._order.remove(key)
            return
        if source is None:
            codec = frame.codec.name
            kind = "audio" if codec == "opus" else "video"
            source = self._sources[key] = _Source(key, kind, av.CodecContext.create(_DECODERS[codec], "r"))
            if kind == "audio":
                source.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            decoded = source.decoder.decode(av.Packet(frame.data))
        except av.error.FFmpegError:
            return  # a broken frame: the next keyframe repairs the picture
        for out in decoded:
            self._use(source, out, arrival)

    def _use(self, source: _Source, frame: Any, arrival: float) -> None:
        if self._t0 is None:
            self._t0 = arrival - LATENCY
            self._open()
            self._call(self._on_started)
        if source.kind == "video":
            if not source.started:
                source.started = True
                self._order.append(source.key)
            source.last_frame = frame
            source.picture = None  # fitted lazily, at the tile size of the next render
            return
        if not source.started:
            source.started = True
            # Line up a late source with the moment it joined.
            lead = int((arrival - LATENCY - self._t0) * SAMPLE_RATE) - self._samples_out
            if lead > 0:
                source.samples.append(np.zeros(lead, dtype=np.int16))
                source.buffered += lead
        for resampled in source.resampler.resample(frame):
            samples = resampled.to_ndarray().reshape(-1)
            source.samples.append(samples)
            source.buffered += len(samples)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(
            str(self.path),
            "w",
            format="mp4",
            container_options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "frag_duration": str(FRAGMENT_US),
                "flush_packets": "1",
            },
        )
        video = container.add_stream(
            "libx264", rate=FPS, options={"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS * 2)}
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self._container, self._video, self._audio = container, video, audio

    def _render_until(self, wall: float) -> None:
        if self._t0 is None or self._container is None:
            return
        until = wall - self._t0
        while (self._frames_out + 1) / FPS <= until:
            self._encode_video(self._grid())
        while (self._samples_out + AAC_FRAME) / SAMPLE_RATE <= until:
            self._encode_audio(self._mix(AAC_FRAME))

    def _grid(self) -> np.ndarray:
        canvas = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        keys = [k for k in self._order if self._sources[k].last_frame is not None]
        if not keys:
            return canvas
        cols = math.ceil(math.sqrt(len(keys)))
        rows = math.ceil(len(keys) / cols)
        tile_w, tile_h = WIDTH // cols, HEIGHT // rows
        for index, key in enumerate(keys):
            source = self._sources[key]
            if source.picture is None or source.picture_tile != (tile_w, tile_h):
                frame = source.last_frame
                scale = min(tile_w / frame.width, tile_h / frame.height)
                w = max(2, int(frame.width * scale) // 2 * 2)
                h = max(2, int(frame.height * scale) // 2 * 2)
                source.picture = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
                source.picture_tile = (tile_w, tile_h)
            picture = source.picture
            row, col = divmod(index, cols)
            y = row * tile_h + (tile_h - picture.shape[0]) // 2
            x = col * tile_w + (tile_w - picture.shape[1]) // 2
            canvas[y : y + picture.shape[0], x : x + picture.shape[1]] = picture
        return canvas

    def _mix(self, count: int) -> np.ndarray:
        mixed = np.zeros(count, dtype=np.int32)
        for source in self._sources.values():
            if source.kind != "audio":
                continue
            filled = 0
            while filled < count and source.samples:
                chunk = source.samples[0]
                take = min(count - filled, len(chunk))
                mixed[filled : filled + take] += chunk[:take]
                if take == len(chunk):
                    source.samples.popleft()
                else:
                    source.samples[0] = chunk[take:]
                filled += take
                source.buffered -= take
        return np.clip(mixed, -32768, 32767).astype(np.int16)

    def _encode_video(self, image: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._frames_out
        frame.time_base = fractions.Fraction(1, FPS)
        self._container.mux(self._video.encode(frame))
        self._frames_out += 1

    def _encode_audio(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples_out
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._container.mux(self._audio.encode(frame))
        self._samples_out += len(samples)

    def _close(self) -> WriterStats:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.mux(self._video.encode(None))
                container.mux(self._audio.encode(None))
            finally:
                container.close()
        size = self.path.stat().st_size if self.path.exists() else 0
        return WriterStats(self._frames_out, 0, self._frames_out / FPS, size)
