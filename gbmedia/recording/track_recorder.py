"""One published track recorded into one file: a frame sink with a muxing thread.

The track's frame source (:mod:`gbmedia.sfu.frames`) hands :meth:`TrackRecorder.on_frame`
whole frames on the event loop, in order, from a keyframe on, after a loss from the
next keyframe (it asks the publisher for one); the recorder only queues them. A
thread of its own muxes them (:class:`TrackWriter`), so a slow disk never stalls
forwarding. What the thread learns that the loop must act on (the first frame is on
disk, the file failed) goes back with ``loop.call_soon_threadsafe``. A recorder
lets a missing packet hold its frames back for up to ``REORDER_WAIT``: a file wants
every frame, not low delay (the source gives up sooner when a live consumer shares
the track).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gbmedia.recording.codecs import check_supported
from gbmedia.recording.writer import TrackWriter, WriterStats
from gbmedia.sfu.frames import EncodedFrame, FrameSink
from gbmedia.sfu.unwrap import TIMESTAMP_BITS, wrap_delta

log = logging.getLogger(__name__)

MAX_QUEUED = 3000  # frames (a minute of audio, more of video); past that the thread is stuck: refuse
REORDER_WAIT = 1.0  # seconds; a retransmission that comes at all comes within a round trip


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
    return ntp_seconds(ntp) + wrap_delta(rtp, rtp_timestamp, TIMESTAMP_BITS) / clock


class TrackRecorder(FrameSink):
    """A :class:`~gbmedia.sfu.frames.FrameSink` that writes one track to ``path``.

    Keyframes after a loss are the track's frame source's to ask for, not the recorder's.
    """

    reorder_wait = REORDER_WAIT

    def __init__(
        self,
        path: Path,
        codec: RTCRtpCodecParameters,
        *,
        loop: asyncio.AbstractEventLoop,
        on_started: Callable[[], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        name: str = "track",
    ) -> None:
        check_supported(codec)  # refuses unsupported codecs before anything starts
        self.path = path
        self.codec = codec
        self._writer = TrackWriter(path, codec.name, codec.clockRate)
        self._loop = loop
        self._on_started = on_started
        self._on_failed = on_failed
        self._queue: queue.SimpleQueue[EncodedFrame | None] = queue.SimpleQueue()
        self._queued = 0
        self._closed = False
        self._ssrc: int | None = None
        self._reports: dict[int, tuple[int, int]] = {}  # ssrc -> latest (ntp, rtp) sender report
        self.lost_packets = 0  # sequence numbers the frame source gave up on while this recorded
        self.error: str | None = None
        self.done: concurrent.futures.Future[TrackResult] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"rec-{name}", daemon=True)
        self._thread.start()

    # --- on the event loop --------------------------------------------------------------

    def on_frame(self, frame: EncodedFrame) -> bool:
        if self._closed or self.error is not None:
            return True  # taken, and nothing more is written
        if self._ssrc is None:
            self._ssrc = frame.ssrc
        elif frame.ssrc != self._ssrc:
            return True  # another simulcast layer: one file holds one stream
        if self._queued >= MAX_QUEUED:
            return False  # the writer cannot keep up: the source resumes this file at a keyframe
        self._queued += 1
        self._queue.put(frame)
        return True

    def on_loss(self, packets: int, frames: int) -> None:
        self.lost_packets += packets

    def on_sender_report(self, ssrc: int, ntp: int, rtp: int) -> None:
        """An RTCP sender report of the track's publisher (on the loop; a dict write only)."""
        self._reports[ssrc] = (ntp, rtp)

    def on_track_closed(self) -> None:
        self.finish()

    def finish(self) -> None:
        """No more frames: the thread writes what it has and closes the file."""
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
        first: EncodedFrame | None = None
        first_sender: float | None = None
        clock = self.codec.clockRate
        try:
            while True:
                frame = self._queue.get()
                if frame is None:
                    break
                self._queued -= 1
                started = self._writer.started
                self._writer.write(frame)
                if first is None:
                    first = frame
                wall = frame.arrival - (frame.timestamp - first.timestamp) / clock
                first_wall = wall if first_wall is None else min(first_wall, wall)
                if not started:
                    self._call(self._on_started)
                if first_sender is None:
                    first_sender = self._first_sender(first)
            if first_sender is None and first is not None:  # a report that came after the last frame
                first_sender = self._first_sender(first)
            stats = self._writer.close()
            self.done.set_result(TrackResult(stats, first_wall, self.lost_packets, first_frame_sender=first_sender))
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
            self.done.set_result(TrackResult(stats, first_wall, self.lost_packets, self.error))
            self._call(self._on_failed, self.error)

    def _first_sender(self, first: EncodedFrame) -> float | None:
        report = self._reports.get(first.ssrc)
        return None if report is None else sender_time(first.rtp_timestamp, report, self.codec.clockRate)
