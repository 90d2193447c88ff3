"""Recording a live room over the REST API, with real aiortc participants and a real node."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import av
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCRtpSender

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import OPERATOR, bearer, create_tenant
from tests.recording.helpers import create_room, download, ffprobe, join, poll_recording, recorder_frames
from tests.rtc import NO_STUN, ColorVideoTrack, ToneAudioTrack, close_to, mean_rgb, wait_for

RED = (220, 30, 30)


async def test_record_a_room_per_track_then_download_the_files(client: TestClient, node: Node, tmp_path: Path):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    recorder = bearer(tenant.token("rec-bot", room_record=True))
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=recorder)
    assert resp.status == 201, await resp.text()
    recording = await resp.json()
    rid = recording["id"]
    # Nobody publishes yet: the recording waits (it is not stuck "starting").
    assert (recording["status"], recording["kinds"], recording["files"]) == ("waiting", ["tracks"], [])
    assert recording["storage"] == "local" and recording["started_by"] == tenant.key

    alice = await join(client, tenant, "alice")
    try:
        published = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack())
        tracks = {t["kind"]: t["id"] for t in published["tracks"]}
        await poll_recording(client, recorder, rid, lambda r: r["status"] == "recording" and len(r["files"]) == 2)
        # Record about three seconds of media (counted in frames written, not in wall time).
        await wait_for(lambda: recorder_frames(node, rid).get(tracks["video"], 0) >= 90, within=40)
        await wait_for(lambda: recorder_frames(node, rid).get(tracks["audio"], 0) >= 150, within=40)
        resp = await client.get(f"/api/v1/recordings/{rid}/files/{tracks['video']}.webm", headers=recorder)
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "recording_file_not_ready"

        resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=recorder)
        assert resp.status == 200, await resp.text()
        stopped = await resp.json()
    finally:
        await alice.close()
    assert (stopped["status"], stopped["stop_reason"], stopped["error"]) == ("completed", "api", None)
    files = {f["kind"]: f for f in stopped["files"]}
    assert set(files) == {"audio", "video"}
    assert files["video"]["name"] == f"{tracks['video']}.webm" and files["video"]["codec"] == "video/VP8"
    assert files["audio"]["content_type"] == "audio/webm" and files["audio"]["participant_identity"] == "alice"
    assert stopped["size_bytes"] == sum(f["size_bytes"] for f in files.values()) > 0
    assert stopped["duration_seconds"] >= 2.5  # media time on the wall clock, from the first frame
    for kind, codec in (("video", "vp8"), ("audio", "opus")):
        entry = files[kind]
        assert entry["status"] == "completed" and entry["duration_seconds"] >= 2.9
        assert 0 <= entry["start_offset_seconds"] < stopped["duration_seconds"]
        path = await download(client, recorder, rid, entry["name"], tmp_path / entry["name"])
        assert path.stat().st_size == entry["size_bytes"]
        info = ffprobe(path)
        assert [s["codec_name"] for s in info["streams"]] == [codec]
        assert abs(float(info["format"]["duration"]) - entry["duration_seconds"]) <= 0.5
    # Audio and video of one participant start within a fraction of a second of each other,
    # lined up by the publisher's RTCP sender reports (aiortc sends them about once a second).
    assert {f["aligned_by"] for f in files.values()} == {"sender_report"}
    assert abs(files["audio"]["start_offset_seconds"] - files["video"]["start_offset_seconds"]) < 1.0

    # Listed under the room; minutes counted; start and stop audited.
    resp = await client.get(f"/api/v1/rooms/{room['id']}/recordings", headers=tenant.admin)
    assert [r["id"] for r in (await resp.json())["recordings"]] == [rid]
    async with node.db.pool.acquire() as conn:
        minutes = await conn.fetchval(
            "SELECT sum(quantity)::float8 FROM usage_events WHERE kind = 'recording_minutes' AND customer_id = $1",
            uuid.UUID(tenant.customer_id),
        )
        actions = await conn.fetch("SELECT action, actor FROM audit_log WHERE target_id = $1 ORDER BY id", rid)
    assert abs(minutes - stopped["duration_seconds"] / 60) < 1e-6
    assert [(a["action"], a["actor"]) for a in actions] == [
        ("recording.start", tenant.key),
        ("recording.stop", tenant.key),
    ]
    # A file removed from the store behind the node's back is reported, not served.
    node.recordings.storage.spool_path(f"{tenant.instance_id}/{rid}/{files['audio']['name']}").unlink()
    resp = await client.get(f"/api/v1/recordings/{rid}/files/{files['audio']['name']}", headers=recorder)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "recording_file_missing"

    # Deleted (the dashboard's button): its files leave the store (the one already gone is no
    # error), its rows go with the storage they counted, and the audit log says who did it.
    video_file = node.recordings.storage.spool_path(f"{tenant.instance_id}/{rid}/{files['video']['name']}")
    assert video_file.exists()
    resp = await client.delete(f"/api/v1/recordings/{rid}", headers=recorder)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == rid
    assert not video_file.exists()
    resp = await client.get(f"/api/v1/recordings/{rid}", headers=recorder)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "recording_not_found"
    async with node.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recording_files WHERE recording_id = $1", uuid.UUID(rid)) == 0
        entry = await conn.fetchrow("SELECT actor, details FROM audit_log WHERE action = 'recording.delete'")
        held = await conn.fetchval(
            "SELECT coalesce(sum(size_bytes), 0) FROM recordings WHERE customer_id = $1", uuid.UUID(tenant.customer_id)
        )
    assert entry["actor"] == tenant.key and entry["details"]["files"] == 2
    assert held == 0  # what the storage quota counts


async def test_recording_requests_that_cannot_be_served_are_refused_with_codes(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    base = f"/api/v1/rooms/{room['id']}/recordings"

    async def code(resp) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        return resp.status, (await resp.json())["error"]["code"]

    participant = bearer(mint_token(tenant.key, tenant.secret, "p", Grants.participant("standup")))
    assert await code(await client.post(base, json={}, headers=participant)) == (403, "grant_missing")
    other_room = bearer(tenant.token("r", room_record=True, room="other"))
    assert await code(await client.post(base, json={}, headers=other_room)) == (403, "room_not_granted")
    assert await code(await client.post(base, json={"kinds": ["audio"]}, headers=tenant.admin)) == (
        400,
        "validation_failed",
    )
    assert await code(await client.post(base, json={"kinds": []}, headers=tenant.admin)) == (400, "validation_failed")
    assert await code(await client.post(base, headers=tenant.admin)) == (400, "body_required")
    assert await code(await client.post(f"/api/v1/rooms/{uuid.uuid4()}/recordings", json={}, headers=tenant.admin)) == (
        404,
        "room_not_found",
    )
    assert await code(await client.get(f"/api/v1/recordings/{uuid.uuid4()}", headers=tenant.admin)) == (
        404,
        "recording_not_found",
    )
    assert await code(await client.get("/api/v1/recordings/nope", headers=tenant.admin)) == (400, "invalid_id")

    resp = await client.post(base, json={"kinds": ["tracks", "composite"]}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    assert (await resp.json())["kinds"] == ["tracks", "composite"]
    assert await code(await client.post(base, json={}, headers=tenant.admin)) == (409, "recording_in_progress")
    assert await code(await client.get(f"/api/v1/recordings/{rid}", headers=participant)) == (403, "grant_missing")
    resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
    stopped = await resp.json()
    # Nobody ever published: it completes with no files and no minutes used.
    assert (stopped["status"], stopped["files"], stopped["duration_seconds"]) == ("completed", [], 0)
    assert await code(await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)) == (
        409,
        "recording_not_active",
    )
    assert await code(await client.get(f"/api/v1/recordings/{rid}/files/x.webm", headers=tenant.admin)) == (
        404,
        "recording_file_not_found",
    )

    # A recording still marked running by another node is that node's to stop.
    async with node.db.pool.acquire() as conn:
        elsewhere = await conn.fetchval(
            """INSERT INTO recordings (customer_id, instance_id, room_id, kinds, status, storage, node_id, started_by)
               VALUES ($1, $2, $3, '{tracks}', 'recording', 'local', 'node-b', 'x') RETURNING id""",
            uuid.UUID(tenant.customer_id),
            uuid.UUID(tenant.instance_id),
            uuid.UUID(room["id"]),
        )
    assert await code(await client.post(f"/api/v1/recordings/{elsewhere}/stop", headers=tenant.admin)) == (
        409,
        "recording_on_other_node",
    )
    async with node.db.pool.acquire() as conn:
        await conn.execute("UPDATE recordings SET status = 'completed' WHERE id = $1", elsewhere)
        await conn.execute("UPDATE rooms SET node_id = 'node-b' WHERE id = $1", uuid.UUID(room["id"]))
    assert await code(await client.post(base, json={}, headers=tenant.admin)) == (409, "room_on_other_node")
    async with node.db.pool.acquire() as conn:
        await conn.execute("UPDATE rooms SET node_id = $2 WHERE id = $1", uuid.UUID(room["id"]), node.settings.node_id)

    # Closed rooms, disabled features, tiers without recording, and used-up minutes.
    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert resp.status == 200
    assert await code(await client.post(base, json={}, headers=tenant.admin)) == (409, "room_closed")
    room2 = await create_room(client, tenant, "second")
    base2 = f"/api/v1/rooms/{room2['id']}/recordings"
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}", json={"features": {"recording": False}}, headers=OPERATOR
    )
    assert resp.status == 200, await resp.text()
    assert await code(await client.post(base2, json={}, headers=tenant.admin)) == (403, "feature_disabled")
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}", json={"features": {"recording": True}}, headers=OPERATOR
    )
    async with node.db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO usage_events (customer_id, kind, quantity) VALUES ($1, 'recording_minutes', 600)",
            uuid.UUID(tenant.customer_id),
        )
    resp = await client.post(base2, json={}, headers=tenant.admin)
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (403, "quota_recording_minutes_per_month_exceeded")
    assert body["error"]["details"] == {"quota": "recording_minutes_per_month", "limit": 600, "used": 600}

    free = await create_tenant(client, "cheap", tier="free")
    free_room = await create_room(client, free, "f")
    resp = await client.post(f"/api/v1/rooms/{free_room['id']}/recordings", json={}, headers=free.admin)
    assert await code(resp) == (403, "feature_not_in_plan")


async def test_the_operator_reaches_any_instances_recordings(client: TestClient):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={"kinds": ["tracks"]}, headers=OPERATOR)
    assert resp.status == 201
    rid = (await resp.json())["id"]
    assert (await resp.json())["started_by"] == "operator"
    resp = await client.get(
        f"/api/v1/rooms/{room['id']}/recordings", headers=OPERATOR, params={"limit": "5", "offset": "0"}
    )
    assert [r["id"] for r in (await resp.json())["recordings"]] == [rid]
    resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=OPERATOR)
    assert (await resp.json())["status"] == "completed"
    scoped = bearer(tenant.token("viewer", room_create=True, room="standup"))
    resp = await client.get(f"/api/v1/recordings/{rid}", headers=scoped)
    assert resp.status == 200


async def test_auto_record_starts_with_the_first_track_and_stops_when_the_room_closes(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant, metadata={"auto_record": True})
    alice = await join(client, tenant, "alice")
    try:
        published = await alice.publish(ColorVideoTrack(RED))
        video = published["tracks"][0]["id"]
        await wait_for(lambda: bool(node.recordings.active))
        rid = str(next(iter(node.recordings.active)))
        await wait_for(lambda: recorder_frames(node, rid).get(video, 0) >= 30, within=40)
        resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
        assert resp.status == 200
    finally:
        await alice.close()
    recording = await poll_recording(client, tenant.admin, rid, lambda r: r["status"] == "completed")
    assert recording["stop_reason"] == "room_closed"
    assert recording["started_by"] == f"node:{node.settings.node_id}"
    assert [f["track_id"] for f in recording["files"]] == [video]
    assert recording["files"][0]["duration_seconds"] >= 1


async def test_a_recording_stops_by_itself_when_the_months_minutes_run_out(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    async with node.db.pool.acquire() as conn:  # 600 allowed, 599.97 used: about two seconds left
        await conn.execute(
            "INSERT INTO usage_events (customer_id, kind, quantity) VALUES ($1, 'recording_minutes', 599.97)",
            uuid.UUID(tenant.customer_id),
        )
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        await alice.publish(ToneAudioTrack())
        recording = await poll_recording(client, tenant.admin, rid, lambda r: r["status"] == "completed", within=40)
    finally:
        await alice.close()
    assert recording["stop_reason"] == "quota_exhausted"
    assert 1.0 <= recording["duration_seconds"] < 10
    audio = recording["files"][0]
    assert audio["status"] == "completed" and audio["duration_seconds"] > 1


async def test_recordings_end_cleanly_when_the_node_stops(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        published = await alice.publish(ToneAudioTrack())
        audio = published["tracks"][0]["id"]
        await wait_for(lambda: recorder_frames(node, rid).get(audio, 0) >= 50, within=40)
        await node.recordings.close()
    finally:
        await alice.close()
    recording = await node.recordings.get(None, uuid.UUID(rid))
    assert (recording.status, recording.stop_reason) == ("completed", "node_shutdown")
    assert recording.files[0].status == "completed" and recording.files[0].size_bytes > 0
    samples = {s.name: s.value for s in node.recordings.samples()}
    assert samples["gbmedia_recordings_active"] == 0 and samples["gbmedia_recordings_completed_total"] == 1
    await asyncio.sleep(0)


async def test_an_h264_track_is_recorded_into_fragmented_mp4_as_sent(client: TestClient, node: Node, tmp_path: Path):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        alice.publisher = RTCPeerConnection(NO_STUN)
        transceiver = alice.publisher.addTransceiver(ColorVideoTrack(RED), direction="sendonly")
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        )
        video = (await alice.publish())["tracks"][0]["id"]
        await wait_for(lambda: recorder_frames(node, rid).get(video, 0) >= 60, within=40)
        resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
        stopped = await resp.json()
    finally:
        await alice.close()
    (entry,) = stopped["files"]
    assert (entry["name"], entry["codec"], entry["content_type"]) == (f"{video}.mp4", "video/H264", "video/mp4")
    path = await download(client, tenant.admin, rid, entry["name"], tmp_path / entry["name"])
    info = ffprobe(path)
    assert [(s["codec_name"], s["width"], s["height"]) for s in info["streams"]] == [("h264", 320, 240)]
    assert abs(float(info["format"]["duration"]) - entry["duration_seconds"]) <= 0.5
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 60
    assert close_to(mean_rgb(frames[-1]), RED)
