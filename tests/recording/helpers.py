"""Shared by the recording tests: a room with real aiortc participants, polling, probing."""

from __future__ import annotations

import asyncio
import fractions
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant
from tests.rtc import RtcClient


class NoiseVideoTrack(MediaStreamTrack):
    """Random pixels at 30 fps: incompressible, so a recording grows fast (disk-full tests)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        self._rng = np.random.default_rng(5)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += 3000
            wait = self._start + self._pts / 90000 - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        image = self._rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90000)
        return frame


async def create_room(client: TestClient, tenant: Tenant, name: str = "standup", **extra: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/rooms", json={"name": name, **extra}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def join(client: TestClient, tenant: Tenant, identity: str, room: str = "standup") -> RtcClient:
    participant = RtcClient(await client.ws_connect("/rtc"))
    joined = await participant.join(mint_token(tenant.key, tenant.secret, identity, Grants.participant(room)))
    assert joined["type"] == "joined", joined
    return participant


def recorder_frames(node: Node, recording_id: str) -> dict[str, int]:
    """Frames written so far per file of a running recording (track id or 'composite')."""
    import uuid

    active = node.recordings.active.get(uuid.UUID(recording_id))
    if active is None:
        return {}
    out = {}
    for key, entry in active.files.items():
        writer = getattr(entry.recorder, "_writer", None)
        out[key] = writer.frames if writer is not None else entry.recorder._frames_out
    return out


async def poll_recording(
    client: TestClient, headers: dict[str, str], recording_id: str, predicate: Any, within: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        resp = await client.get(f"/api/v1/recordings/{recording_id}", headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"recording never reached the state: {body}")
        await asyncio.sleep(0.1)


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,codec_type,width,height,sample_rate",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def download(client: TestClient, headers: dict[str, str], recording_id: str, name: str, into: Path) -> Path:
    resp = await client.get(f"/api/v1/recordings/{recording_id}/files/{name}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    data = await resp.read()
    await asyncio.to_thread(into.write_bytes, data)
    return into


ROOT = Path(__file__).resolve().parents[2]


def record_then_kill(codec: str, path: Path, seconds_after_data: float = 3.0) -> int:
    """Record the synthetic stream in real time in a child process, SIGKILL it a few
    seconds after its file has data; returns the child's exit status."""
    import os
    import signal
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "tests.recording.synthetic", codec, str(path), "30"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        for _ in range(600):  # poll the file, not the clock
            if path.exists() and path.stat().st_size >= 4000:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        subprocess.run(["sleep", str(seconds_after_data)], check=True)
        child.send_signal(signal.SIGKILL)
        return child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
