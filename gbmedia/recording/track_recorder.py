"""One published track recorded into one file: a packet sink with a muxing thread.

The SFU calls :meth:`TrackRecorder.on_rtp` on the event loop for every packet;
it only stamps the arrival time and queues the packet. A thread of its own
reorders, depacketises and muxes (:class:`FrameAssembler`, :class:`TrackWriter`),
so a slow disk never stalls forwarding. What the thread learns that the loop must
act on (the first frame is on disk, a keyframe is needed after a loss, the file
failed) goes back with ``loop.call_soon_threadsafe``.

A/V alignment: each file starts at its own first frame. The recorder estimates
the wall-clock time of that first frame as the earliest ``arrival - (ts - ts0) /
clock`` over all frames (the least-delayed packet best approximates the sender's
clock), and the service stores it per file as ``start_offset_seconds`` from the
recording's start. That is arrival-time alignment, not RTCP sender reports: SRs
would also remove the difference in network delay between the audio and the
video path, which on one connection is small (both share the transport).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.recording.depacketizer import FrameAssembler
from gbmedia.recording.writer import TrackWriter, WriterStats

log = logging.getLogger(__name__)

MAX_QUEUED = 20_000  # packets (about a minute of 2 Mbps video); past that the thread is stuck: drop


@dataclass(frozen=True)
class TrackResult:
    stats: WriterStats
    first_frame_wall: float | None  # time.time() of the first frame, estimated (see module doc)
    lost_packets: int
    error: str | None = None


class TrackRecorder:
    """A :class:`gbmedia.sfu.track.PacketSink` that writes one track to ``path``."""

    def __init__(self, path: Path, codec: RTCRtpCodecParameters, *, loop: asyncio.AbstractEventLoop,
                 on_started: Callable[[], None] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 request_keyframe: Callable[[], None] | None = None,
                 name: str = "track") -> None:
        self.path = path
        self.codec = codec
        self._assembler = FrameAssembler(codec)  # refuses unsupported codecs before anything starts
        self._writer = TrackWriter(path, codec.name, codec.clockRate)
        self._loop = loop
        self._on_started = on_started
        self._on_failed = on_failed
        self._request_keyframe = request_keyframe
        self._queue: queue.SimpleQueue[tuple[RtpPacket, float] | None] = queue.SimpleQueue()
        self._queued = 0
        self._closed = False
        self.error: str | None = None
        self.done: concurrent.futures.Future[TrackResult] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"rec-{name}", daemon=True)
        self._thread.start()

    # --- on the event loop --------------------------------------------------------------

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if self._closed or self.error is not None:
            return
        if self._queued >= MAX_QUEUED:
            return  # the writer cannot keep up; the assembler treats the gap as a loss
        self._queued += 1
        self._queue.put((packet, time.time()))

    def on_track_closed(self) -> None:
        self.finish()

    def finish(self) -> None:
        """No more packets: the thread writes what it has and closes the file."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    async def result(self) -> TrackResult:
        return await asyncio.wrap_future(self.done)

    def _call(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed (node shutdown): nobody to tell
            pass

    # --- in the thread ------------------------------------------------------------------

    def _run(self) -> None:
        first_wall: float | None = None
        first_ts: int | None = None
        clock = self.codec.clockRate
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                self._queued -= 1
                packet, arrival = item
                for frame in self._assembler.add(packet):
                    started = self._writer.started
                    self._writer.write(frame)
                    if first_ts is None:
                        first_ts = frame.timestamp
                    wall = arrival - (frame.timestamp - first_ts) / clock
                    first_wall = wall if first_wall is None else min(first_wall, wall)
                    if not started:
                        self._call(self._on_started)
                if self._assembler.keyframe_wanted:
                    self._assembler.keyframe_wanted = False
                    self._call(self._request_keyframe)
            for frame in self._assembler.flush():
                self._writer.write(frame)
            stats = self._writer.close()
            self.done.set_result(TrackResult(stats, first_wall, self._assembler.lost))
        except Exception as exc:  # disk full, storage gone: the file fails, the room goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("track recording failed", extra={"path": str(self.path), "error": self.error})
            try:
                stats = self._writer.close()
            except Exception:
                stats = WriterStats(self._writer.frames, self._writer.keyframes, self._writer.duration,
                                    self.path.stat().st_size if self.path.exists() else 0)
            self.done.set_result(TrackResult(stats, first_wall, self._assembler.lost, self.error))
            self._call(self._on_failed, self.error)
