"""Media the benchmarks send: synthetic video and audio sources, and a VP8 encoder whose bitrate stays put.

What a publisher sends decides what the server has to forward, so the sources are built
to look like camera video to the encoder (smooth, moving: noise would overshoot the
bitrate, a still image undershoot it) and every frame is a fresh object (aiortc's
sender encodes in a thread pool while the track makes the next frame, so a frame object
reused and changed could be encoded mid-change). The clocks pace frames in real time.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_PTIME, VIDEO_TIME_BASE
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz: one Opus frame

CODECS = {
    "VP8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    "opus": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111),
}


def audio_frame(index: int, frequency: float = 440.0, amplitude: int = 8000) -> av.AudioFrame:
    """The ``index``-th 20 ms frame of a sine tone, mono s16 at 48 kHz, timestamped in samples."""
    t = (np.arange(AUDIO_SAMPLES) + index * AUDIO_SAMPLES) / AUDIO_RATE
    samples = (np.sin(2 * math.pi * frequency * t) * amplitude).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = AUDIO_RATE, index * AUDIO_SAMPLES
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz tone, 20 ms frames at 48 kHz, in real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: int = 8000) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._samples / AUDIO_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = audio_frame(self._samples // AUDIO_SAMPLES, self.frequency, self.amplitude)
        self._samples += AUDIO_SAMPLES
        return frame


class PlasmaVideoTrack(MediaStreamTrack):
    """``width`` x ``height`` at 30 fps: a scrolling smooth pattern, a fresh frame object each time.

    Measured with the encoder at 1 Mbps: about 1.0 Mbps and 113 packets/s come out
    (pure noise overshoots to 6-15 Mbps; a flat colour undershoots to nearly nothing).
    """

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480) -> None:
        super().__init__()
        self.width, self.height = width, height
        yy, xx = np.mgrid[0 : height * 2, 0 : width * 2]
        self._plasma = (
            (128 + 60 * np.sin(xx / 23.0) + 50 * np.sin(yy / 17.0) + 30 * np.sin((xx + yy) / 31.0))
            .clip(0, 255)
            .astype(np.uint8)
        )
        self._chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, flat
        self._start: float | None = None
        self._index = 0
        self.produced = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._index += 1
            wait = self._start + self._index * VIDEO_PTIME - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        i, w, h = self._index, self.width, self.height
        y = self._plasma[(i * 2) % h : (i * 2) % h + h, (i * 3) % w : (i * 3) % w + w]
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, self._chroma]), format="yuv420p")
        frame.pts = int(i * VIDEO_PTIME * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        self.produced += 1
        return frame


class MovingVideo(MediaStreamTrack):
    """640x480 at 30 fps, moving: three seconds of frames made once, in yuv420p, replayed in a loop (a
    fresh frame object every time), so the publisher spends its CPU on encoding only."""

    kind = "video"
    LOOP = 90

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        # Gradients and a moving square: compressible like camera video (noise would make every
        # keyframe huge and measure the encoder instead of the packager).
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=-1).astype(np.uint8)
        self._frames = []
        for step in range(self.LOOP):
            image = np.roll(base, step * 7, axis=1)
            top, left = 100 + (step * 3) % 280, (step * 5) % 560
            image[top : top + 80, left : left + 80] = (255, 255, 255)
            rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
            self._frames.append(rgb.reformat(format="yuv420p").to_ndarray())

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += int(VIDEO_PTIME * VIDEO_CLOCK_RATE)
            wait = self._start + self._pts / VIDEO_CLOCK_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        index = (self._pts // int(VIDEO_PTIME * VIDEO_CLOCK_RATE)) % self.LOOP
        frame = av.VideoFrame.from_ndarray(self._frames[index], format="yuv420p")
        frame.pts, frame.time_base = self._pts, VIDEO_TIME_BASE
        return frame


class ReplayVideoTrack(MediaStreamTrack):
    """A pre-encoded clip's packets (``bench.lib.clip``), replayed in a loop at the clip's frame rate.

    aiortc's sender packetizes an ``av.Packet`` without encoding it (``Vp8Encoder.pack``), so the
    publisher spends no CPU on pixels. aiortc's own ``MediaPlayer(decode=False, loop=True)`` is not
    used: after its first loop the timestamps start again from 0, so its throttle stops waiting and
    the clip goes out as fast as it is read, with RTP timestamps jumping back. Here the packets
    are read once into memory, and frame ``i`` goes out at ``start + i / fps`` with a timestamp that
    keeps growing across loops (the clip starts with a keyframe, so a loop is a clean cut).
    """

    kind = "video"

    def __init__(self, path: Path) -> None:
        super().__init__()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 30.0
            self._packets = [bytes(p) for p in container.demux(stream) if p.size]
        if not self._packets:
            raise ValueError(f"{path}: no video packets")
        self._ticks = VIDEO_CLOCK_RATE / self.fps  # RTP clock ticks per frame
        self._start: float | None = None
        self._index = 0
        self.produced = 0

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._index += 1
            wait = self._start + self._index / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        packet.pts = round(self._index * self._ticks)
        packet.time_base = VIDEO_TIME_BASE
        self.produced += 1
        return packet


class FixedBitrateVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder with a target bitrate that REMB cannot change.

    The server's bandwidth estimate would otherwise move the publisher's bitrate, and with it the
    packets per second every figure is divided by; pinned, each run forwards the same stream."""

    def __init__(self, bitrate: int) -> None:
        super().__init__()
        self._fixed_bitrate = bitrate
        self._Vp8Encoder__target_bitrate = bitrate  # used for the rate-control buffer size
        self.frames = 0
        self.forced_keyframes = 0
        self.remb_updates_ignored = 0

    @property  # type: ignore[override]
    def target_bitrate(self) -> int:
        return self._fixed_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self.remb_updates_ignored += 1

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        self.frames += 1
        self.forced_keyframes += bool(force_keyframe)
        return super().encode(frame, force_keyframe)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        """A pre-encoded frame (``ReplayVideoTrack``): counted as a frame sent like an encoded one, so the
        publisher's frame rate reads the same either way; nothing is forced (a replay cannot make keyframes)."""
        self.frames += 1
        return super().pack(packet)
