"""The tracks a media bot sends: its video (drawn, or a participant's processed) and a tone.

Where the pixel work happens, and why there:

- **Decoding** a participant's video happens once, in aiortc's decoder thread of the
  bot's subscriber connection (the SFU forwards the participant's packets to the bot
  as to anyone, without transcoding).
- **Drawing and filtering** happen in the bot's :class:`FrameWorker`, one thread of
  its own: a frame's conversion to pixels, the OpenCV work and the conversion back
  take milliseconds, which would stall every socket and packet of the node on the
  event loop. One thread per bot keeps a stateful filter (the face detector) on one
  thread and a slow bot from queueing behind another.
- **Encoding** happens once, in aiortc's sender, which runs its encoder in an
  executor thread; the SFU then forwards the bot's packets to every subscriber.

A processed stream never builds up latency: :class:`LatestFrame` keeps only the
newest decoded frame, so a filter slower than the camera skips frames instead of
falling behind.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from gbmedia.bots.media.filters import Filter
from gbmedia.bots.media.renderers import Renderer
from gbmedia.waits import wait_for_event

T = TypeVar("T")
VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
SOURCE_WAIT = 0.5  # seconds without a frame from the processed participant before the bot draws instead


class FrameWorker:
    """One thread for a bot's pixel work; records which threads did it (they are never the loop's)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.threads: set[str] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self.threads.add(threading.current_thread().name)
        return fn(*args)

    async def close(self) -> None:
        """Stop the thread (after the frame it is on); returns once it has ended."""
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)


class LatestFrame:
    """Reads a remote track as fast as it decodes, keeping only the newest frame."""

    def __init__(self, source: MediaStreamTrack) -> None:
        self.source = source
        self.frame: av.VideoFrame | None = None
        self.ended = False
        self._fresh = asyncio.Event()
        self._task = asyncio.ensure_future(self._pull())

    async def _pull(self) -> None:
        try:
            while True:
                self.frame = await self.source.recv()
                self._fresh.set()
        except MediaStreamError:
            self.ended = True
            self._fresh.set()

    async def next(self, within: float) -> av.VideoFrame | None:
        """The newest frame not handed out yet, or None when none comes within ``within`` seconds."""
        await wait_for_event(self._fresh, within)
        self._fresh.clear()
        frame, self.frame = self.frame, None
        return frame

    def stop(self) -> None:
        self._task.cancel()


class BotVideoTrack(MediaStreamTrack):
    """The bot's one video track: what its renderer draws, or a participant's video through a filter.

    The bot switches between the two without renegotiating: the same track, the same
    encoder, timestamps from one clock. While the processed participant sends nothing
    (it muted, or left) the renderer's picture fills in.
    """

    kind = "video"

    def __init__(self, worker: FrameWorker, renderer: Renderer, *, width: int, height: int, fps: float) -> None:
        super().__init__()
        self.worker = worker
        self.renderer = renderer
        self.width, self.height = width - width % 2, height - height % 2  # 4:2:0 needs even sizes
        self.fps = fps
        self.filter: Filter | None = None
        self.filter_threads: set[str] = set()  # the threads that ran the filter
        self.rendered = 0
        self.processed = 0
        self._latest: LatestFrame | None = None
        self._start: float | None = None
        self._next_at = 0.0

    @property
    def processing(self) -> MediaStreamTrack | None:
        return self._latest.source if self._latest is not None else None

    def show(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self._stop_processing()

    def process(self, source: MediaStreamTrack, filter_: Filter) -> None:
        self._stop_processing()
        self.filter = filter_
        self._latest = LatestFrame(source)

    def _stop_processing(self) -> None:
        if self._latest is not None:
            self._latest.stop()
        self._latest, self.filter = None, None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = self._next_at = now
        frame: av.VideoFrame | None = None
        latest, filter_ = self._latest, self.filter
        if latest is not None and filter_ is not None:
            source = await latest.next(SOURCE_WAIT)
            if source is not None:
                frame = await self.worker.run(self._filtered, source, filter_)
                self.processed += 1
        if frame is None:
            wait = self._next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_at = max(self._next_at + 1 / self.fps, time.monotonic())
            frame = await self.worker.run(self._drawn, self.renderer, time.time())
            self.rendered += 1
        frame.pts = round((time.monotonic() - self._start) * VIDEO_CLOCK)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def _filtered(self, source: av.VideoFrame, filter_: Filter) -> av.VideoFrame:
        """In the worker thread: decoded frame to pixels, the filter, pixels to a fresh frame."""
        self.filter_threads.add(threading.current_thread().name)
        image = filter_(source.to_ndarray(format="bgr24"))
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24").reformat(format="yuv420p")

    def _drawn(self, renderer: Renderer, now: float) -> av.VideoFrame:
        image = renderer(self.width, self.height, now)
        return av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")

    def stop(self) -> None:
        self._stop_processing()
        super().stop()


class ToneTrack(MediaStreamTrack):
    """A sine tone (mono, 48 kHz, 20 ms frames) in real time: the bot's voice until it can speak.

    One frame's samples are a few microseconds of numpy: they are made on the loop.
    """

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.1) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._start: float | None = None
        self._samples = 0
        self._speech = np.zeros(0, dtype=np.int16)  # what SAY queued: sent before the tone goes on
        self.spoken = 0  # samples of speech sent, for tests and stats

    def say(self, samples: np.ndarray) -> None:
        """Queue speech (48 kHz int16): it plays in place of the tone, then the tone comes back."""
        self._speech = np.concatenate([self._speech, samples.astype(np.int16)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / AUDIO_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self._samples + np.arange(AUDIO_SAMPLES)) / AUDIO_RATE
        samples = (np.sin(2 * math.pi * self.frequency * t) * self.amplitude * 32767).astype(np.int16)
        if self._speech.size:
            spoken = self._speech[:AUDIO_SAMPLES]
            self._speech = self._speech[AUDIO_SAMPLES:]
            samples = np.zeros(AUDIO_SAMPLES, dtype=np.int16)
            samples[: spoken.size] = spoken
            self.spoken += spoken.size
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts, frame.time_base = self._samples, AUDIO_TIME_BASE
        self._samples += AUDIO_SAMPLES
        return frame
