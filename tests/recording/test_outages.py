"""Recordings through outages: PostgreSQL stopped mid-recording, and a disk running out.

Both with real servers and filesystems: the test's own PostgreSQL, really stopped
(tests/outages.py), and a small tmpfs as the recording directory.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.errors import ApiError
from gbmedia.node import Node
from tests.conftest import make_settings, service_missing
from tests.helpers import OPERATOR, create_tenant
from tests.outages import OwnPostgres
from tests.recording.helpers import (
    NoiseVideoTrack,
    create_room,
    download,
    ffprobe,
    join,
    poll_recording,
    recorder_frames,
)
from tests.rtc import ColorVideoTrack, wait_for


@pytest.fixture
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    server = OwnPostgres()
    await server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)


@asynccontextmanager
async def _serve(tmp_path: Path, database_url: str, **overrides: Any) -> AsyncIterator[tuple[Node, TestClient]]:
    node = await Node.start(make_settings(tmp_path, database_url, **overrides))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield node, client
    finally:
        await node.stop()


async def test_a_recording_stopped_while_the_database_is_down_stops_at_once_and_is_finished_when_it_is_back(
    tmp_path: Path, own_postgres: OwnPostgres, media_tools: str
):
    database = await own_postgres.database()
    async with _serve(tmp_path, database, database_command_timeout_seconds=2) as (node, client):
        tenant = await create_tenant(client)
        room = await create_room(client, tenant)
        resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        rid = (await resp.json())["id"]
        alice = await join(client, tenant, "alice")
        bob = await join(client, tenant, "bob")
        try:
            video = (await alice.publish(ColorVideoTrack((200, 40, 40))))["tracks"][0]["id"]
            await wait_for(lambda: sum(recorder_frames(node, rid).values()) >= 30, within=30)
            await own_postgres.stop()
            # A recording this node does not run cannot be told apart from none: the outage's 503.
            resp = await client.post(f"/api/v1/recordings/{uuid.uuid4()}/stop", headers=OPERATOR)
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "database_unavailable"
            assert recorder_frames(node, rid)  # still recording
            # The operator (authenticated without the database) stops it: the media stops at once,
            # and the 503 says the rest waits for the database.
            resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=OPERATOR)
            body = await resp.json()
            assert resp.status == 503 and body["error"]["code"] == "database_unavailable", body
            assert "media is stopped" in body["error"]["message"]
            written = recorder_frames(node, rid)
            # The room goes on (bob keeps getting alice's video) while the file gets nothing more.
            seen = len(bob.decoded(video))
            await wait_for(lambda: len(bob.decoded(video)) >= seen + 30, within=30)
            assert recorder_frames(node, rid) == written
            # Asked again during the outage (here as a room closing, the quota or the disk guard ask):
            # the same answer, and still the one stop under way.
            with pytest.raises(ApiError) as again:
                await node.recordings.stop(node.recordings.system_actor, uuid.UUID(rid), reason="room_closed")
            assert (again.value.status, again.value.code) == (503, "database_unavailable")
            await own_postgres.start()
            # Once PostgreSQL is back the recording ends completed, with no restart and no new stop.
            done = await poll_recording(
                client, tenant.admin, rid, lambda r: r["status"] == "completed" and r["stopped_at"], within=60
            )
            assert done["stop_reason"] == "api" and done["duration_seconds"] > 0 and done["size_bytes"] > 0, done
            (entry,) = done["files"]
            assert entry["status"] == "completed" and entry["size_bytes"] > 0, entry
            path = await download(client, tenant.admin, rid, entry["name"], tmp_path / entry["name"])
            assert float(ffprobe(path)["format"]["duration"]) > 0
            assert uuid.UUID(rid) not in node.recordings.active
            # And the room can be recorded again.
            resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
            assert resp.status == 201, await resp.text()
        finally:
            await alice.close()
            await bob.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> AsyncIterator[Path]:
    """A real 6 MiB filesystem for the recording directory."""
    mount = tmp_path / "recordings"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        service_missing(f"cannot mount a tmpfs for the free-space test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_below_the_free_space_reserve_recordings_stop_cleanly_and_new_ones_are_refused(
    tmp_path: Path, database_url: str, small_tmpfs: Path, media_tools: str
):
    # 6 MiB of disk, 5 MB kept free: about 1 MB of recording is allowed.
    async with _serve(tmp_path, database_url, recording_dir=small_tmpfs, min_free_disk_mb=5) as (_node, client):
        tenant = await create_tenant(client)
        room = await create_room(client, tenant)
        resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        rid = (await resp.json())["id"]
        alice = await join(client, tenant, "alice")
        bob = await join(client, tenant, "bob")
        try:
            video = (await alice.publish(NoiseVideoTrack()))["tracks"][0]["id"]
            done = await poll_recording(client, tenant.admin, rid, lambda r: r["stopped_at"] is not None, within=120)
            # Stopped by the guard before the disk was full: completed, its file finished and playable.
            assert done["status"] == "completed" and done["stop_reason"] == "disk_full" and done["error"] is None, done
            (entry,) = done["files"]
            assert entry["status"] == "completed" and entry["size_bytes"] > 0, entry
            path = await download(client, tenant.admin, rid, entry["name"], tmp_path / entry["name"])
            assert float(ffprobe(path)["format"]["duration"]) > 0
            # The room is left alone.
            seen = len(bob.decoded(video))
            await wait_for(lambda: len(bob.decoded(video)) >= seen + 15, within=20)
            # Below the reserve a new recording is refused, saying how much is free.
            resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
            body = await resp.json()
            assert resp.status == 507 and body["error"]["code"] == "insufficient_storage", body
            assert body["error"]["details"]["min_free_mb"] == 5 and body["error"]["details"]["free_mb"] < 5
        finally:
            await alice.close()
            await bob.close()
