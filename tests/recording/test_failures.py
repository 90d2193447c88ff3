"""Recording failures: a full disk, a broken store, a node that died mid-recording.

In each the recording ends ``failed`` with the error, and the room goes on: its
participants stay and keep getting media.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.config import Settings
from gbmedia.node import Node
from tests.conftest import make_settings, service_missing
from tests.helpers import create_tenant
from tests.recording.helpers import (
    NoiseVideoTrack,
    create_room,
    ffprobe,
    join,
    poll_recording,
    record_then_kill,
    recorder_frames,
)
from tests.rtc import ColorVideoTrack, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> AsyncIterator[Path]:
    """A real 96 KiB filesystem (tmpfs): writes past it fail with ENOSPC, as on a full disk."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        service_missing(f"cannot mount a small tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
async def full_client(tmp_path: Path, database_url: str, small_disk: Path) -> AsyncIterator[TestClient]:
    # The free-space reserve off: this is the write that fails with ENOSPC, past any guard.
    settings: Settings = make_settings(tmp_path, database_url, recording_dir=small_disk, min_free_disk_mb=0)
    node = await Node.start(settings)
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield client
    finally:
        await node.stop()


async def _bob_keeps_receiving(bob, track_id: str) -> None:  # type: ignore[no-untyped-def]
    seen = len(bob.decoded(track_id))
    await wait_for(lambda: len(bob.decoded(track_id)) >= seen + 15, within=20)


async def test_a_full_disk_fails_the_recording_and_leaves_the_room_alone(full_client: TestClient):
    client = full_client
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    bob = await join(client, tenant, "bob")
    try:
        video = (await alice.publish(NoiseVideoTrack()))["tracks"][0]["id"]
        failed = await poll_recording(
            client, tenant.admin, rid, lambda r: r["status"] == "failed" and r["stopped_at"], within=60
        )
        assert "No space left on device" in failed["error"], failed
        assert failed["stop_reason"] == "failed" and failed["stopped_at"]
        (entry,) = failed["files"]
        assert entry["status"] == "failed" and "No space left on device" in entry["error"]
        # The room is untouched: both still in it, bob still gets alice's video.
        resp = await client.get(f"/api/v1/rooms/{room['id']}/participants", headers=tenant.admin)
        assert sorted(p["identity"] for p in (await resp.json())["participants"]) == ["alice", "bob"]
        await _bob_keeps_receiving(bob, video)
        # A new recording can start once the old one failed.
        resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
    finally:
        await alice.close()
        await bob.close()


async def test_a_broken_store_fails_the_recording_and_leaves_the_room_alone(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    # Where the instance's recordings go, a file now stands: nothing can be created there.
    spool = node.recordings.storage.spool
    spool.mkdir(parents=True, exist_ok=True)
    (spool / tenant.instance_id).write_text("not a directory")
    alice = await join(client, tenant, "alice")
    bob = await join(client, tenant, "bob")
    try:
        video = (await alice.publish(ColorVideoTrack((30, 30, 220))))["tracks"][0]["id"]
        failed = await poll_recording(client, tenant.admin, rid, lambda r: r["status"] == "failed" and r["stopped_at"])
        assert "cannot record" in failed["error"] and failed["files"] == []
        figures = {sample.name: sample.value for sample in node.recordings.samples()}
        assert (figures["gbmedia_recordings_failed_total"], figures["gbmedia_recordings_completed_total"]) == (1, 0)
        await _bob_keeps_receiving(bob, video)
    finally:
        await alice.close()
        await bob.close()


async def test_an_interrupted_recording_is_closed_out_at_the_next_start(client: TestClient, node: Node, tmp_path: Path):
    """What a crash leaves (rows still 'recording', a cut file on disk) becomes a failed
    recording with ``interrupted`` whose file is listed with its size and downloads."""
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    rid = uuid.uuid4()
    key = f"{tenant.instance_id}/{rid}/TR_cut.webm"
    path = node.recordings.storage.spool_path(key)
    path.parent.mkdir(parents=True)
    # A cut file, as a crash leaves it: a recorder SIGKILLed mid-way.
    await asyncio.to_thread(record_then_kill, "VP8", path, 2.0)
    with av.open(str(path)) as container:
        cut_until = max(frame.time for frame in container.decode(video=0))
    async with node.db.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO recordings (id, customer_id, instance_id, room_id, kinds, status, storage, node_id,
                                       started_by, started_at)
               VALUES ($1, $2, $3, $4, '{tracks}', 'recording', 'local', $5, 'x', now() - interval '5 seconds')""",
            rid,
            uuid.UUID(tenant.customer_id),
            uuid.UUID(tenant.instance_id),
            uuid.UUID(room["id"]),
            node.settings.node_id,
        )
        await conn.execute(
            """INSERT INTO recording_files (recording_id, name, kind, codec, content_type, storage_key)
               VALUES ($1, 'TR_cut.webm', 'video', 'video/VP8', 'video/webm', $2)""",
            rid,
            key,
        )
    cut_at = path.stat().st_mtime  # the recorder's last write before it was killed
    assert await node.recordings.recover() == 1
    # Billed from its start to that last write, once (usage metering, docs/api.md "Usage").
    billed = await node.db.pool.fetchrow(
        """SELECT e.quantity::float8 * 60 AS seconds, extract(epoch FROM r.started_at)::float8 AS started
             FROM usage_events e JOIN recordings r ON r.id = $1 WHERE e.idempotency_key = 'recording:' || $1::text""",
        rid,
    )
    assert billed["seconds"] == pytest.approx(cut_at - billed["started"], abs=0.01)
    recording = await node.recordings.get(None, rid)
    assert recording.status == "failed" and recording.error.startswith("interrupted")
    (entry,) = recording.files
    assert recording.duration_seconds >= 5 and recording.size_bytes == entry.size_bytes == path.stat().st_size
    assert entry.status == "completed" and entry.error.startswith("interrupted")
    # Repaired at recovery: the file now says how long it is, and still holds everything up to the cut.
    resp = await client.get(f"/api/v1/recordings/{rid}/files/TR_cut.webm", headers=tenant.admin)
    assert resp.status == 200
    downloaded = tmp_path / "downloaded.webm"
    downloaded.write_bytes(await resp.read())
    assert abs(float(ffprobe(downloaded)["format"]["duration"]) - cut_until) <= 0.5
    assert recorder_frames(node, str(rid)) == {}
