"""Real aiortc peers for tests: synthetic tracks whose content can be checked."""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_PTIME, VIDEO_TIME_BASE


class ColorVideoTrack(MediaStreamTrack):
    """A solid-colour video at 30 fps; a fresh frame object every time (see notes)."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.rgb = rgb
        self.width, self.height = width, height
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += int(VIDEO_PTIME * VIDEO_CLOCK_RATE)
            wait = self._start + self._pts / VIDEO_CLOCK_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:, :] = self.rgb
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self._pts, VIDEO_TIME_BASE
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz tone, 20 ms frames at 48 kHz; ``amplitude`` 0 is silence (aiortc then sends level 127)."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: int = 8000) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        rate, count = 48000, 960
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._samples / rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(count) + self._samples) / rate
        samples = (np.sin(2 * math.pi * self.frequency * t) * self.amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, self._samples, fractions.Fraction(1, rate)
        self._samples += count
        return frame


def mean_rgb(frame: av.VideoFrame) -> tuple[int, int, int]:
    image = frame.to_ndarray(format="rgb24")
    return tuple(int(v) for v in image.reshape(-1, 3).mean(axis=0))  # type: ignore[return-value]


def close_to(rgb: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected, strict=True))


async def offer_from(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def answer_to(pc: RTCPeerConnection, offer_sdp: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


async def wait_for(predicate, within: float = 15.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within} s")
