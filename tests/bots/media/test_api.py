"""The media bots' REST routes against a real node: a processing bot started and stopped by a moderator,
the per-room limit, a closed room, and the audit log. (Who may call is tests/tenancy/test_scopes.py's.)"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants
from tests.bots.media.test_bot import CheckerTrack, token
from tests.helpers import Tenant, bearer


async def create_room(client: TestClient, tenant: Tenant, name: str) -> str:
    resp = await client.post("/api/v1/rooms", json={"name": name}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def bots_in(client: TestClient, room: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/rooms/{room}/media_bots", headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["media_bots"]


async def test_a_moderator_starts_a_processing_bot_and_stops_it(client: TestClient, rtc, tenant: Tenant, node: Node):
    room = await create_room(client, tenant, "standup")
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    alice_video = (await alice.publish(CheckerTrack()))["tracks"][0]["id"]
    host = bearer(tenant.token("host", room="standup", room_join=True, room_admin=True))

    resp = await client.post(
        f"/api/v1/rooms/{room}/media_bots",
        json={"name": "Edges", "participant": "alice", "filter": "edges", "audio": False},
        headers=host,
    )
    assert resp.status == 201, await resp.text()
    bot = (await resp.json())["media_bot"]
    assert (bot["identity"], bot["processing"], bot["left"]) == ("bot:edges", alice_video, False)
    joined = await alice.wait_event(lambda e: e["type"] == "participant_joined")
    assert joined["participant"]["id"] == bot["participant_id"]

    for _ in range(300):  # the bot decodes, filters and publishes alice's frames
        if (await bots_in(client, room, host))[0]["frames_processed"] >= 5:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the bot processed no frames of alice's")

    resp = await client.delete(f"/api/v1/rooms/{room}/media_bots/{bot['id']}", headers=host)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["media_bot"]["left"] is True
    left = await alice.wait_event(lambda e: e["type"] == "participant_left")
    assert left["participant_id"] == bot["participant_id"]
    assert await bots_in(client, room, host) == []
    rows = await node.db.pool.fetch(
        "SELECT action, actor FROM audit_log WHERE target_type = 'media_bot' AND target_id = $1 ORDER BY id", bot["id"]
    )
    assert [r["action"] for r in rows] == ["media_bot.start", "media_bot.stop"]
    assert {r["actor"] for r in rows} == {tenant.key}


async def test_a_room_holds_four_media_bots_and_a_closed_room_none(client: TestClient, tenant: Tenant):
    room = await create_room(client, tenant, "crowded")
    for n in range(4):
        resp = await client.post(f"/api/v1/rooms/{room}/media_bots", json={"audio": False}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["media_bot"]["identity"] == ("bot:bot" if n == 0 else f"bot:bot-{n + 1}")
    resp = await client.post(f"/api/v1/rooms/{room}/media_bots", json={}, headers=tenant.admin)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert (error["code"], error["details"]) == ("too_many_media_bots", {"limit": 4})

    resp = await client.delete(f"/api/v1/rooms/{room}", headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    resp = await client.post(f"/api/v1/rooms/{room}/media_bots", json={}, headers=tenant.admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (409, "room_closed")
    viewer = bearer(tenant.token("carol", **vars(Grants.participant("crowded"))))
    resp = await client.get(f"/api/v1/rooms/{room}/media_bots", headers=viewer)
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "grant_missing")
