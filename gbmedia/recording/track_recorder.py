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
clock). When the publisher sends RTCP sender reports (browsers and aiortc do,
about once a second) it also computes the first frame's time on the publisher's
own NTP clock (:func:`sender_time`), which the service uses to line up the tracks
of one publisher exactly: arrival times carry each path's network and jitter-buffer
delay, sender reports do not. The recorder follows one SSRC (the first it sees).
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
    # The first frame's time on the publisher's NTP clock, from an RTCP sender report
    # (seconds since 1900); None when the publisher sent none.
    first_frame_sender: float | None = None


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32


def sender_time(rtp_timestamp: int, report: tuple[int, int], clock: int) -> float:
    """The publisher's NTP time of an RTP timestamp, from one (ntp, rtp) sender report."""
    ntp, rtp = report
    delta = ((rtp_timestamp - rtp + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    return ntp_seconds(ntp) + delta / clock


class TrackRecorder:
    """A :class:`gbmedia.sfu.track.PacketSink` that writes one track to ``path``."""

    def __init__(
        self,
        path: Path,
        codec: RTCRtpCodecParameters,
        *,
        loop: asyncio.AbstractEventLoop,
        on_started: Callable[[], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        request_keyframe: Callable[[], None] | None = None,
        name: str = "track",
    ) -> None:
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
        self._ssrc: int | None = None
        self._reports: dict[int, tuple[int, int]] = {}  # ssrc -> latest (ntp, rtp) sender report
        self.error: str | None = None
        self.done: concurrent.futures.Future[TrackResult] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"rec-{name}", daemon=True)
        self._thread.start()

    # --- on the event loop --------------------------------------------------------------

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if self._closed or self.error is not None:
            return
        if self._ssrc is None:
            self._ssrc = packet.ssrc
        elif packet.ssrc != self._ssrc:
            return  # another simulcast layer: one file holds one stream
        if self._queued >= MAX_QUEUED:
            return  # the writer cannot keep up; the assembler treats the gap as a loss
        self._queued += 1
        self._queue.put((packet, time.time()))

    def on_sender_report(self, ssrc: int, ntp: int, rtp: int) -> None:
        """An RTCP sender report of the track's publisher (on the loop; a dict write only)."""
        self._reports[ssrc] = (ntp, rtp)

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
        first_sender: float | None = None
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
                if first_sender is None and first_ts is not None:
                    first_sender = self._first_sender(first_ts)
            for frame in self._assembler.flush():
                self._writer.write(frame)
            if first_sender is None and first_ts is not None:
                first_sender = self._first_sender(first_ts)
            stats = self._writer.close()
            self.done.set_result(TrackResult(stats, first_wall, self._assembler.lost, first_frame_sender=first_sender))
        except Exception as exc:  # disk full, storage gone: the file fails, the room goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("track recording failed", extra={"path": str(self.path), "error": self.error})
            try:
                stats = self._writer.close()
            except Exception:
                stats = WriterStats(
                    self._writer.frames,
                    self._writer.keyframes,
                    self._writer.duration,
                    self.path.stat().st_size if self.path.exists() else 0,
                )
            self.done.set_result(TrackResult(stats, first_wall, self._assembler.lost, self.error))
            self._call(self._on_failed, self.error)

    def _first_sender(self, first_ts: int) -> float | None:
        report = self._reports.get(self._ssrc) if self._ssrc is not None else None
        return None if report is None else sender_time(first_ts & 0xFFFFFFFF, report, self.codec.clockRate)
