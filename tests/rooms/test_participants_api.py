"""The Room API's view of live participants, with real aiortc peers: list, mute, remove."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from tests.helpers import OPERATOR, Tenant
from tests.rtc import ColorVideoTrack, ToneAudioTrack, wait_for
from tests.signaling.test_ws import RED, token

MUTE = "/api/v1/rooms/{room}/participants/{participant}/tracks/{track}/mute"


async def test_get_room_lists_participants_and_their_tracks(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    await bob.join(token(tenant, "bob"))
    video = next(t for t in reply["tracks"] if t["kind"] == "video")
    await wait_for(lambda: len(bob.decoded(video["id"])) >= 1, within=20)

    resp = await client.get(f"/api/v1/rooms/{joined['room']['id']}", headers=tenant.admin)
    assert resp.status == 200
    room = await resp.json()
    assert room["num_participants"] == 2
    by_identity = {p["identity"]: p for p in room["participants"]}
    assert by_identity["alice"]["state"] == "active"
    assert {(t["kind"], t["source"]) for t in by_identity["alice"]["tracks"]} == {
        ("video", "camera"),
        ("audio", "microphone"),
    }
    assert set(by_identity["bob"]["subscriptions"]) == {t["id"] for t in reply["tracks"]}
    assert by_identity["bob"]["tracks"] == [] and by_identity["bob"]["can_publish"] is True

    await alice.ws.close()  # a dropped socket shows as disconnected during the grace period
    states: dict[str, str] = {}
    for _ in range(100):
        resp = await client.get(f"/api/v1/rooms/{joined['room']['id']}/participants", headers=tenant.admin)
        states = {p["identity"]: p["state"] for p in (await resp.json())["participants"]}
        if states["alice"] == "disconnected":
            break
        await asyncio.sleep(0.05)
    assert states == {"alice": "disconnected", "bob": "active"}


async def test_an_admin_mute_stops_forwarding_until_an_admin_unmutes(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    track_id = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(track_id)) >= 3, within=20)
    url = MUTE.format(room=joined["room"]["id"], participant="alice", track=track_id)

    resp = await client.post(url, json={"muted": True}, headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["track"]["muted"] is True
    told = await alice.wait_event(lambda e: e["type"] == "track_muted")
    assert (told["track_id"], told["muted"], told["by_admin"]) == (track_id, True, True)
    seen = await bob.wait_event(lambda e: e["type"] == "track_muted")
    assert "by_admin" not in seen and seen["muted"] is True

    # Nothing is forwarded while muted: bob's decoder gets no new frames.
    await asyncio.sleep(0.5)  # frames already in flight drain
    frozen = len(bob.decoded(track_id))
    await asyncio.sleep(1.5)
    assert len(bob.decoded(track_id)) <= frozen + 1

    # The owner cannot undo an administrator's mute.
    error = await alice.request({"type": "mute", "track_id": track_id, "muted": False})
    assert (error["type"], error["code"]) == ("error", "muted_by_admin")

    resp = await client.post(url, json={"muted": False}, headers=OPERATOR)
    assert resp.status == 200
    await wait_for(lambda: len(bob.decoded(track_id)) > frozen + 5, within=20)

    resp = await client.get("/api/v1/audit", headers=OPERATOR)
    actions = [e["action"] for e in (await resp.json())["entries"]]
    assert actions.count("participant.mute_track") == 2


async def test_removing_a_participant_disconnects_it_and_tells_the_others(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    track_id = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    url = f"/api/v1/rooms/{joined['room']['id']}/participants/{joined['participant']['id']}"

    resp = await client.delete(url, headers=tenant.admin)
    assert resp.status == 200
    assert (await alice.wait_event(lambda e: e["type"] == "removed"))["reason"] == "removed_by_admin"
    await bob.wait_event(lambda e: e["type"] == "track_unpublished" and e["track_id"] == track_id)
    left = await bob.wait_event(lambda e: e["type"] == "participant_left")
    assert left["reason"] == "removed_by_admin"
    resp = await client.delete(url, headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "participant_not_found")


async def test_participant_routes_need_room_admin_and_stay_in_the_tenant(rtc, tenant: Tenant, client: TestClient):
    from tests.helpers import bearer, create_tenant

    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    room_id = joined["room"]["id"]
    creator = bearer(tenant.token("app", room_create=True))
    resp = await client.get(f"/api/v1/rooms/{room_id}/participants", headers=creator)
    assert resp.status == 200  # reading is open to room_create
    resp = await client.delete(f"/api/v1/rooms/{room_id}/participants/alice", headers=creator)
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "grant_missing")
    other = await create_tenant(client, "globex")
    for method, path in (
        ("GET", f"/api/v1/rooms/{room_id}/participants"),
        ("DELETE", f"/api/v1/rooms/{room_id}/participants/alice"),
    ):
        resp = await client.request(method, path, headers=other.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "room_not_found")
    assert (await alice.request({"type": "ping"}))["type"] == "pong"  # alice was never touched
