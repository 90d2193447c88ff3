"""Real aiortc peers for tests: synthetic tracks whose content can be checked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_PTIME, VIDEO_TIME_BASE

# The benchmarks' tone is the tests' too (re-exported for the tests that import it from here).
from bench.lib.media import ToneAudioTrack as ToneAudioTrack


def receiver_threads() -> set[threading.Thread]:
    """aiortc's decoder threads, one per started receiver, alive until its peer connection closes.

    They are not daemons: one left running keeps the process from exiting.
    """
    return {t for t in threading.enumerate() if t.name in ("video-decoder", "audio-decoder") and t.is_alive()}


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


NO_STUN = RTCConfiguration(iceServers=[])  # nothing outside this machine answers


@dataclass
class RtcClient:
    """A participant as a browser would be: one socket, two peer connections."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    publisher: RTCPeerConnection | None = None
    subscriber: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(NO_STUN))
    frames: dict[str, list[Any]] = field(default_factory=dict)  # by track id
    track_ids: dict[str, str] = field(default_factory=dict)  # mid -> track id
    video_arrivals: list[float] = field(default_factory=list)  # monotonic time of each decoded video frame
    _waiters: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _next_id: int = 0

    def __post_init__(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._read()))
        self.subscriber.on("track", self._on_track)

    async def _read(self) -> None:
        async for msg in self.ws:
            event = json.loads(msg.data)
            self.events.append(event)
            for predicate, future in list(self._waiters):
                if not future.done() and predicate(event):
                    future.set_result(event)
            if event["type"] == "offer":
                self._tasks.append(asyncio.ensure_future(self._answer(event)))

    async def _answer(self, offer: dict[str, Any]) -> None:
        self.track_ids.update(offer["tracks"])
        await self.subscriber.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
        await self.ws.send_json({"type": "answer", "sdp": self.subscriber.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = next(t.mid for t in self.subscriber.getTransceivers() if t.receiver.track is track)

        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await track.recv()
                    self.frames.setdefault(self.track_ids.get(mid, mid), []).append(frame)
                    if isinstance(frame, av.VideoFrame):
                        self.video_arrivals.append(time.monotonic())

        self._tasks.append(asyncio.ensure_future(pull()))

    async def wait_event(self, predicate, within: float = 15.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        for event in self.events:
            if predicate(event):
                return event
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        return await asyncio.wait_for(future, within)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        request_id = f"r{self._next_id}"
        await self.ws.send_json({**message, "id": request_id})
        return await self.wait_event(lambda e: e.get("id") == request_id)

    async def join(self, token: str, **extra: Any) -> dict[str, Any]:
        return await self.request({"type": "join", "token": token, **extra})

    async def publish(self, *tracks: MediaStreamTrack, sources: dict[str, str] | None = None) -> dict[str, Any]:
        if self.publisher is None:
            self.publisher = RTCPeerConnection(NO_STUN)
        for track in tracks:
            self.publisher.addTrack(track)
        offer = await offer_from(self.publisher)
        infos = {mid: {"source": source} for mid, source in (sources or {}).items()}
        reply = await self.request({"type": "publish", "sdp": offer, "tracks": infos})
        if reply["type"] == "publish_answer":
            await self.publisher.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        return reply

    def decoded(self, track_id: str) -> list[av.VideoFrame]:
        return self.frames.get(track_id, [])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.ws.close()
        if self.publisher is not None:
            await self.publisher.close()
        await self.subscriber.close()
