"""The Room API over REST: create, list, get, close; quotas, grants, the operator, bad input."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from tests.conftest import make_settings
from tests.helpers import OPERATOR, bearer, create_tenant


async def error_of(resp) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    body = await resp.json()
    assert set(body["error"]) >= {"code", "message"}, body
    return resp.status, body["error"]["code"]


async def create(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    resp = await client.post("/api/v1/rooms", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def names(client: TestClient, headers: dict[str, str], query: str = "") -> list[str]:
    resp = await client.get(f"/api/v1/rooms{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    return [r["name"] for r in (await resp.json())["rooms"]]


# --- the lifecycle ---------------------------------------------------------------------


async def test_create_list_get_and_close_a_room(client: TestClient, node: Node):
    tenant = await create_tenant(client, "acme", "starter")
    room = await create(
        client,
        tenant.admin,
        name="standup",
        kind="live",
        max_participants=20,
        empty_timeout=600,
        metadata={"topic": "sprint"},
    )
    assert {
        k: room[k]
        for k in (
            "name",
            "kind",
            "status",
            "max_participants",
            "empty_timeout",
            "metadata",
            "instance_id",
            "customer_id",
            "node_id",
            "closed_at",
        )
    } == {
        "name": "standup",
        "kind": "live",
        "status": "open",
        "max_participants": 20,
        "empty_timeout": 600,
        "metadata": {"topic": "sprint"},
        "instance_id": tenant.instance_id,
        "customer_id": tenant.customer_id,
        "node_id": node.settings.node_id,
        "closed_at": None,
    }
    defaults = await create(client, tenant.admin, name="daily.sync_2")
    assert (defaults["kind"], defaults["max_participants"], defaults["empty_timeout"], defaults["metadata"]) == (
        "meeting",
        50,
        300,
        {},
    )  # starter allows 50 participants per room

    assert await names(client, tenant.admin) == ["daily.sync_2", "standup"]
    resp = await client.get(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert resp.status == 200 and await resp.json() == {**room, "num_participants": 0, "participants": []}

    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert resp.status == 200
    closed = await resp.json()
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert (resp.status, await resp.json()) == (200, closed)  # closing again changes nothing

    assert await names(client, tenant.admin) == ["daily.sync_2"]
    assert await names(client, tenant.admin, "?status=closed") == ["standup"]
    assert await names(client, tenant.admin, "?status=all") == ["daily.sync_2", "standup"]
    assert await names(client, tenant.admin, "?status=all&limit=1&offset=1") == ["standup"]
    resp = await client.get(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert (await resp.json())["status"] == "closed"


async def test_a_closed_rooms_name_can_be_used_again_but_an_open_ones_cannot(client: TestClient):
    tenant = await create_tenant(client)
    first = await create(client, tenant.admin, name="standup")
    resp = await client.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
    assert await error_of(resp) == (409, "room_name_taken")
    await client.delete(f"/api/v1/rooms/{first['id']}", headers=tenant.admin)
    second = await create(client, tenant.admin, name="standup")
    assert second["id"] != first["id"]
    assert await names(client, tenant.admin, "?status=all") == ["standup", "standup"]


# --- quotas --------------------------------------------------------------------------


async def test_the_room_beyond_the_concurrent_quota_is_refused_until_one_closes(client: TestClient):
    tenant = await create_tenant(client, "small", "free")  # free: 2 open rooms
    first = await create(client, tenant.admin, name="one")
    await create(client, tenant.admin, name="two")
    resp = await client.post("/api/v1/rooms", json={"name": "three"}, headers=tenant.admin)
    assert await error_of(resp) == (403, "quota_max_concurrent_rooms_exceeded")
    assert (await resp.json())["error"]["details"] == {"quota": "max_concurrent_rooms", "limit": 2, "used": 2}
    assert await names(client, tenant.admin, "?status=all") == ["two", "one"]
    resp = await client.get(f"/api/v1/customers/{tenant.customer_id}", headers=OPERATOR)
    assert (await resp.json())["usage"]["open_rooms"] == 2

    await client.delete(f"/api/v1/rooms/{first['id']}", headers=tenant.admin)
    await create(client, tenant.admin, name="three")


async def test_concurrent_creations_cannot_exceed_the_room_quota(client: TestClient):
    tenant = await create_tenant(client, "race", "free")
    results = await asyncio.gather(
        *[client.post("/api/v1/rooms", json={"name": f"r{n}"}, headers=tenant.admin) for n in range(5)]
    )
    assert sorted(r.status for r in results) == [201, 201, 403, 403, 403]
    assert len(await names(client, tenant.admin, "?status=all")) == 2


async def test_max_participants_above_the_tier_quota_is_refused(client: TestClient):
    tenant = await create_tenant(client, "small", "free")  # free: 10 per room
    resp = await client.post("/api/v1/rooms", json={"name": "big", "max_participants": 11}, headers=tenant.admin)
    assert await error_of(resp) == (403, "quota_max_participants_per_room_exceeded")
    assert (await resp.json())["error"]["details"] == {
        "quota": "max_participants_per_room",
        "limit": 10,
        "requested": 11,
    }
    assert await names(client, tenant.admin, "?status=all") == []
    room = await create(client, tenant.admin, name="full", max_participants=10)
    assert room["max_participants"] == 10


# --- who may call ----------------------------------------------------------------------


async def test_grants_decide_who_may_create_read_and_close(client: TestClient):
    tenant = await create_tenant(client)
    joiner = bearer(tenant.token("bob", room="standup", room_join=True, can_publish=True))
    for method, path in [("POST", "/api/v1/rooms"), ("GET", "/api/v1/rooms")]:
        resp = await client.request(method, path, json={"name": "standup"}, headers=joiner)
        assert await error_of(resp) == (403, "grant_missing"), (method, path)
        assert (await resp.json())["error"]["details"] == {"grant": "room_create"}
    assert await names(client, tenant.admin, "?status=all") == []

    creator = bearer(tenant.token("app", room_create=True))
    room = await create(client, creator, name="standup")
    assert await names(client, creator) == ["standup"]
    assert (await client.get(f"/api/v1/rooms/{room['id']}", headers=creator)).status == 200
    resp = await client.get(f"/api/v1/rooms/{room['id']}", headers=joiner)
    assert await error_of(resp) == (403, "grant_missing")
    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=creator)
    assert await error_of(resp) == (403, "grant_missing")
    assert (await resp.json())["error"]["details"] == {"grant": "room_admin"}
    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
    assert (await resp.json())["status"] == "closed"


async def test_the_operator_names_the_instance(client: TestClient):
    a = await create_tenant(client, "alpha")
    b = await create_tenant(client, "bravo")
    resp = await client.post("/api/v1/rooms", json={"name": "ops"}, headers=OPERATOR)
    assert await error_of(resp) == (400, "instance_id_required")
    resp = await client.post("/api/v1/rooms", json={"name": "ops", "instance_id": str(uuid.uuid4())}, headers=OPERATOR)
    assert await error_of(resp) == (404, "instance_not_found")

    room = await create(client, OPERATOR, name="ops", instance_id=a.instance_id)
    assert (room["instance_id"], room["customer_id"]) == (a.instance_id, a.customer_id)
    await create(client, b.admin, name="mine", instance_id=b.instance_id)  # its own id: allowed
    assert await names(client, a.admin) == ["ops"]
    assert await names(client, OPERATOR, f"?instance_id={b.instance_id}") == ["mine"]
    assert await names(client, OPERATOR) == ["mine", "ops"]  # every instance
    resp = await client.get(f"/api/v1/rooms?instance_id={uuid.uuid4()}", headers=OPERATOR)
    assert await error_of(resp) == (404, "instance_not_found")
    assert (await client.get(f"/api/v1/rooms/{room['id']}", headers=OPERATOR)).status == 200
    resp = await client.delete(f"/api/v1/rooms/{room['id']}", headers=OPERATOR)
    assert (await resp.json())["status"] == "closed"


async def test_an_instance_reaches_only_its_own_rooms(client: TestClient):
    a = await create_tenant(client, "alpha")
    b = await create_tenant(client, "bravo")
    room = await create(client, a.admin, name="secret")
    resp = await client.post("/api/v1/rooms", json={"name": "implant", "instance_id": a.instance_id}, headers=b.admin)
    assert await error_of(resp) == (404, "instance_not_found")
    assert a.instance_id not in await resp.text()
    resp = await client.get(f"/api/v1/rooms?instance_id={a.instance_id}", headers=b.admin)
    assert await error_of(resp) == (404, "instance_not_found")
    for method in ("GET", "DELETE"):
        resp = await client.request(method, f"/api/v1/rooms/{room['id']}", headers=b.admin)
        assert await error_of(resp) == (404, "room_not_found"), method
    assert await names(client, b.admin, "?status=all") == []
    resp = await client.get(f"/api/v1/rooms/{room['id']}", headers=a.admin)
    assert (await resp.json())["status"] == "open"


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "has space"},
        {"name": "a/b"},
        {"name": "é"},
        {"name": "x" * 201},
        {"name": 5},
        {"name": "ok", "kind": "webinar"},
        {"name": "ok", "max_participants": 0},
        {"name": "ok", "max_participants": "5"},
        {"name": "ok", "max_participants": 2.5},
        {"name": "ok", "empty_timeout": 0},
        {"name": "ok", "empty_timeout": 86401},
        {"name": "ok", "empty_timeout": True},
        {"name": "ok", "metadata": ["x"]},
        {"name": "ok", "instance_id": "not-a-uuid"},
        {"name": "ok", "status": "closed"},
        {"name": "ok", "node_id": "elsewhere"},
    ],
)
async def test_bad_bodies_are_refused_and_nothing_is_stored(client: TestClient, body: dict[str, Any]):
    tenant = await create_tenant(client)
    resp = await client.post("/api/v1/rooms", json=body, headers=tenant.admin)
    assert await error_of(resp) == (400, "validation_failed"), body
    assert (await resp.json())["error"]["details"]["problems"]
    assert await names(client, tenant.admin, "?status=all") == []


async def test_bad_queries_and_ids_are_refused(client: TestClient):
    tenant = await create_tenant(client)
    for query in ("?status=bogus", "?limit=0", "?offset=-1", "?instance_id=nope"):
        resp = await client.get(f"/api/v1/rooms{query}", headers=tenant.admin)
        assert await error_of(resp) == (400, "invalid_query"), query
    for method in ("GET", "DELETE"):
        resp = await client.request(method, "/api/v1/rooms/standup", headers=tenant.admin)
        assert await error_of(resp) == (400, "invalid_id"), method
        resp = await client.request(method, f"/api/v1/rooms/{uuid.uuid4()}", headers=tenant.admin)
        assert await error_of(resp) == (404, "room_not_found"), method
    resp = await client.post(
        "/api/v1/rooms", data=b"{nope", headers={**tenant.admin, "Content-Type": "application/json"}
    )
    assert await error_of(resp) == (400, "invalid_json")


# --- audit -----------------------------------------------------------------------------


async def test_create_and_close_write_audit_rows(client: TestClient, pool: asyncpg.Pool):
    tenant = await create_tenant(client)
    room = await create(client, {**tenant.admin, "X-Request-Id": "room-create-1"}, name="standup")
    await client.delete(f"/api/v1/rooms/{room['id']}", headers={**tenant.admin, "X-Request-Id": "room-close-1"})
    await client.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)  # already closed: no new row
    resp = await client.get("/api/v1/audit", headers=tenant.admin)
    entries = [e for e in (await resp.json())["entries"] if e["target_type"] == "room"]
    assert [(e["action"], e["target_id"], e["actor"], e["actor_kind"], e["request_id"]) for e in entries] == [
        ("room.close", room["id"], tenant.key, "api_key", "room-close-1"),
        ("room.create", room["id"], tenant.key, "api_key", "room-create-1"),
    ]
    assert entries[0]["instance_id"] == entries[1]["instance_id"] == tenant.instance_id
    assert entries[1]["details"]["name"] == "standup"
    assert entries[0]["details"]["reason"] == "api"


# --- the node's idle sweeper -----------------------------------------------------------


async def test_the_nodes_sweeper_closes_an_idle_empty_room(client: TestClient, node: Node):
    tenant = await create_tenant(client)
    idle = await create(client, tenant.admin, name="idle", empty_timeout=1)
    kept = await create(client, tenant.admin, name="kept")  # 300 s: stays open
    assert node.room_sweeper.running
    # Sweep often for this test instead of the production interval.
    await node.room_sweeper.stop()
    node.room_sweeper.interval = 0.1
    node.room_sweeper.start()
    deadline = time.monotonic() + 30
    status = "open"
    while status == "open" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        resp = await client.get(f"/api/v1/rooms/{idle['id']}", headers=tenant.admin)
        status = (await resp.json())["status"]
    assert status == "closed"
    resp = await client.get(f"/api/v1/rooms/{kept['id']}", headers=tenant.admin)
    assert (await resp.json())["status"] == "open"
    resp = await client.get("/api/v1/audit", headers=OPERATOR)
    (entry,) = [e for e in (await resp.json())["entries"] if e["action"] == "room.close"]
    assert (entry["actor"], entry["actor_kind"], entry["details"]["reason"]) == (
        f"node:{node.settings.node_id}",
        "system",
        "idle",
    )


async def test_node_start_and_stop_run_the_sweeper(tmp_path: Path, database_url: str):
    node = await Node.start(make_settings(tmp_path, database_url, node_id="sweeper-test"))
    try:
        assert node.room_sweeper.running
        assert node.rooms.node_id == "sweeper-test"
    finally:
        await node.stop()
    assert not node.room_sweeper.running
