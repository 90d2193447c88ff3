"""Feature gates and the storage quota, through the real routes: REST, the /rtc socket, WHIP/WHEP, bots.

Each gate is refused with its code, then let through once the tier or the instance's
features turn it on (gbmedia/tenancy/gates.py says which switch wins).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy.gates import feature_refusal
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.bots.chat import Person, bot_conversation, upload
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.recording.helpers import NoiseVideoTrack, create_room, join, poll_recording, recorder_frames
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, ToneAudioTrack, offer_from, wait_for

SDP = {"Content-Type": "application/sdp"}


async def refused(resp: Any) -> tuple[int, str, Any]:
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"]["details"].get("feature")


async def patch_features(client: TestClient, tenant: Tenant, **features: bool) -> None:
    resp = await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"features": features}, headers=OPERATOR)
    assert resp.status == 200, await resp.text()


async def set_tier(client: TestClient, tenant: Tenant, tier: str) -> None:
    resp = await client.patch(
        f"/api/v1/customers/{tenant.customer_id}", json={"subscription_tier": tier}, headers=OPERATOR
    )
    assert resp.status == 200, await resp.text()


def host(tenant: Tenant, room: str) -> str:
    grants = Grants(room=room, room_join=True, can_publish=True, can_subscribe=True)
    return mint_token(tenant.key, tenant.secret, "host", grants)


async def whip_whep(client: TestClient, tenant: Tenant, room: str) -> tuple[Any, Any]:
    """The answers to a WHIP publish and a WHEP play of ``room`` (real offers from aiortc)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(NO_STUN)
    try:
        pc.addTransceiver("video", direction="sendrecv")
        pc.addTransceiver("audio", direction="sendrecv")
        offer = await offer_from(pc)
    finally:
        await pc.close()
    headers = {**bearer(host(tenant, room)), **SDP}
    whip = await client.post(f"/whip/{room}", data=offer, headers=headers)
    whep = await client.post(f"/whep/{room}", data=offer, headers=headers)
    return whip, whep


async def socket_join(client: TestClient, tenant: Tenant, room: str) -> dict[str, Any]:
    socket = RtcClient(await client.ws_connect("/rtc"))
    try:
        return await socket.join(host(tenant, room), kind="live")
    finally:
        await socket.close()


async def test_live_rooms_whip_and_whep_are_refused_until_the_tier_includes_live(client: TestClient):
    free = await create_tenant(client, "cheap", tier="free")  # the free tier has no live
    resp = await client.post("/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=free.admin)
    assert await refused(resp) == (403, "feature_not_in_plan", "live")
    assert (await resp.json())["error"]["details"]["tier"] == "free"
    reply = await socket_join(client, free, "show")
    assert (reply["type"], reply["code"], reply["details"]["feature"]) == ("error", "feature_not_in_plan", "live")
    whip, whep = await whip_whep(client, free, "show")
    assert await refused(whip) == (403, "feature_not_in_plan", "live")
    assert await refused(whep) == (403, "feature_not_in_plan", "live")
    resp = await client.post("/api/v1/rooms", json={"name": "standup"}, headers=free.admin)
    assert resp.status == 201  # meetings are not gated

    await set_tier(client, free, "starter")
    resp = await client.post("/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=free.admin)
    assert resp.status == 201, await resp.text()
    assert (await socket_join(client, free, "show"))["type"] == "joined"


async def test_an_instance_that_turns_live_off_refuses_it_even_where_the_tier_allows(client: TestClient):
    tenant = await create_tenant(client)  # starter: live is in the plan
    resp = await client.post("/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=tenant.admin)
    assert resp.status == 201
    await patch_features(client, tenant, live=False)
    resp = await client.post("/api/v1/rooms", json={"name": "other", "kind": "live"}, headers=tenant.admin)
    assert await refused(resp) == (403, "feature_disabled", "live")
    reply = await socket_join(client, tenant, "show")  # the live room opened before is refused too
    assert (reply["type"], reply["code"], reply["details"]["feature"]) == ("error", "feature_disabled", "live")
    whip, whep = await whip_whep(client, tenant, "show")
    assert await refused(whip) == (403, "feature_disabled", "live")
    assert await refused(whep) == (403, "feature_disabled", "live")

    await patch_features(client, tenant, live=True)
    assert (await socket_join(client, tenant, "show"))["type"] == "joined"
    whip, whep = await whip_whep(client, tenant, "show")
    assert (whip.status, whep.status) == (201, 201), await whep.text()  # the encoder's tracks are the program
    for session in (whep, whip):
        resp = await client.delete(session.headers["Location"], headers=bearer(host(tenant, "show")))
        assert resp.status == 200


async def _stored(node: Node, tenant: Tenant, room: dict[str, Any], size: int) -> None:
    """A finished recording of ``size`` bytes the customer holds."""
    await node.db.pool.execute(
        """INSERT INTO recordings (customer_id, instance_id, room_id, kinds, status, storage, node_id,
                                   started_by, size_bytes, stop_reason, stopped_at)
           VALUES ($1, $2, $3, '{tracks}', 'completed', 'local', 'elsewhere', 'test', $4, 'api', now())""",
        uuid.UUID(tenant.customer_id),
        uuid.UUID(tenant.instance_id),
        uuid.UUID(room["id"]),
        size,
    )


async def test_a_recording_is_refused_once_stored_bytes_reach_the_quota_until_the_tier_grows(
    client: TestClient, node: Node
):
    tenant = await create_tenant(client)  # starter: 10 GiB
    room = await create_room(client, tenant)
    limit = 10 * 1024**3
    await _stored(node, tenant, room, limit)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (403, "quota_storage_bytes_exceeded")
    assert body["error"]["details"] == {"quota": "storage_bytes", "limit": limit, "used": limit}

    await set_tier(client, tenant, "pro")  # 100 GiB
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/api/v1/recordings/{(await resp.json())['id']}/stop", headers=tenant.admin)
    assert resp.status == 200


async def test_a_running_recording_stops_when_the_stored_bytes_reach_the_quota(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    await _stored(node, tenant, room, 10 * 1024**3 - 100_000)  # about 100 kB left
    node.recordings.storage_check_interval = 0.2
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        await alice.publish(NoiseVideoTrack())  # incompressible: the 100 kB go in seconds
        recording = await poll_recording(client, tenant.admin, rid, lambda r: r["status"] == "completed", within=60)
    finally:
        await alice.close()
    assert recording["stop_reason"] == "storage_quota_exhausted"
    assert recording["size_bytes"] >= 100_000
    assert [f["status"] for f in recording["files"]] == ["completed"]  # what was written is kept, playable


async def test_auto_record_is_refused_while_recording_is_off_and_starts_once_it_is_on(
    client: TestClient, node: Node, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="gbmedia.recording.service")
    tenant = await create_tenant(client)
    await patch_features(client, tenant, recording=False)
    await create_room(client, tenant, metadata={"auto_record": True})
    alice = await join(client, tenant, "alice")
    try:
        await alice.publish(ToneAudioTrack())
        await wait_for(lambda: any(getattr(r, "code", None) == "feature_disabled" for r in caplog.records), within=20)
        assert not node.recordings.active
        await patch_features(client, tenant, recording=True)
        await alice.publish(ColorVideoTrack((200, 20, 20)))  # the next track starts it, with both tracks
        await wait_for(lambda: bool(node.recordings.active), within=20)
        rid = str(next(iter(node.recordings.active)))
        await wait_for(lambda: len(recorder_frames(node, rid)) == 2, within=20)
    finally:
        await alice.close()
    resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
    assert resp.status == 200


async def test_bots_rest_and_answers_stop_while_the_instance_turns_bots_off(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    await upload(client, tenant, "start", 'TALK "hello"')
    alice = Person(client, node, tenant, "alice", await bot_conversation(client, tenant))
    assert await alice.say("hi") == ["hello"]
    room = await create_room(client, tenant)

    await patch_features(client, tenant, bots=False)
    resp = await client.put("/api/v1/bots/dialogs/start", json={"source": 'TALK "x"'}, headers=tenant.admin)
    assert await refused(resp) == (403, "feature_disabled", "bots")
    resp = await client.post(f"/api/v1/rooms/{room['id']}/media_bots", json={}, headers=tenant.admin)
    assert await refused(resp) == (403, "feature_disabled", "bots")
    assert await alice.say("hi") == []  # the engine passes the message by
    resp = await client.get("/api/v1/bots/dialogs", headers=tenant.admin)
    assert resp.status == 200  # what exists stays readable (and removable)

    await patch_features(client, tenant, bots=True)
    assert await alice.say("hi") == ["hello"]
    resp = await client.post(f"/api/v1/rooms/{room['id']}/media_bots", json={}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    resp = await client.delete(
        f"/api/v1/rooms/{room['id']}/media_bots/{(await resp.json())['media_bot']['id']}", headers=tenant.admin
    )
    assert resp.status == 200


def test_the_plan_is_asked_first_and_an_instance_only_narrows_it():
    on, off = {"live": True}, {"live": False}
    assert feature_refusal("live", on, "starter", "Starter", {}) is None
    assert feature_refusal("live", on, "starter", "Starter", on) is None
    refusal = feature_refusal("live", off, "free", "Free", on)  # an instance cannot widen its plan
    assert refusal is not None and (refusal.status, refusal.code) == (403, "feature_not_in_plan")
    refusal = feature_refusal("live", on, "starter", "Starter", off)
    assert refusal is not None and (refusal.status, refusal.code) == (403, "feature_disabled")
