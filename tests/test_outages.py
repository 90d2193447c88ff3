"""Outages of the node's dependencies (docs/operations.md, "Outages"), with real servers.

Each test starts the PostgreSQL or Redis it takes down (tests/outages.py), never the
machine's shared ones, and really stops it (or freezes it with SIGSTOP, a hang). What
is checked: the node stays up, a request that needs the missing service answers 503
with the service's code (JSON error body) instead of 500 or a hang, a request that does
not need it still answers, /readyz says which one is missing, and the node serves again
once the service is back, without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings, service_missing
from tests.helpers import OPERATOR, create_tenant
from tests.outages import OwnPostgres, OwnRedis
from tests.rtc import RtcClient

# A hang guard only (a request that never answers would otherwise stall the suite): far
# above every timeout the tests configure, never a measurement.
HANG_GUARD = 120.0


@pytest.fixture
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    server = OwnPostgres()
    await server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = OwnRedis()
    if server.binary is None:
        service_missing("redis-server (Debian package redis-server)")
    await server.start()
    try:
        yield server
    finally:
        await server.cleanup()


@asynccontextmanager
async def _serve(tmp_path: Path, database_url: str, **overrides: Any) -> AsyncIterator[tuple[Node, TestClient]]:
    node = await Node.start(make_settings(tmp_path, database_url, **overrides))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield node, client
    finally:
        await node.stop()


async def _error(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    return resp.status, body["error"]["code"]


async def _until_ok(client: TestClient, path: str, headers: dict[str, str]) -> None:
    """Poll until the node answers ``path`` with 200 again (it reconnects by itself)."""
    for _ in range(600):
        resp = await client.get(path, headers=headers)
        if resp.status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered 200 again: {resp.status} {await resp.text()}")


async def _created_room(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    """A room, made before the outage under test: with a 0.5 s Redis timeout a slow moment of a
    loaded machine can answer the first try 503 (redis_unavailable), which is not what is tested."""
    for attempt in range(50):
        resp = await client.post("/api/v1/rooms", json={"name": f"standup-{attempt}"}, headers=headers)
        if resp.status == 201:
            return await resp.json()
        assert resp.status == 503, await resp.text()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no room was made: {resp.status} {await resp.text()}")


async def test_a_database_that_is_down_answers_503_and_the_node_comes_back(tmp_path: Path, own_postgres: OwnPostgres):
    async with _serve(tmp_path, await own_postgres.database(), database_command_timeout_seconds=2) as (_node, client):
        tenant = await create_tenant(client)
        assert (await client.get("/api/v1/rooms", headers=tenant.admin)).status == 200
        await own_postgres.stop()
        # An instance's call, the operator's, a write: each a 503 naming the database, never a 500.
        assert await _error(await client.get("/api/v1/rooms", headers=tenant.admin)) == (503, "database_unavailable")
        assert await _error(await client.get("/api/v1/customers", headers=OPERATOR)) == (503, "database_unavailable")
        resp = await client.post("/api/v1/rooms", json={"name": "during"}, headers=tenant.admin)
        assert await _error(resp) == (503, "database_unavailable")
        # The socket says so too, in the protocol's error message.
        participant = RtcClient(await client.ws_connect("/rtc"))
        try:
            reply = await participant.join(mint_token(tenant.key, tenant.secret, "alice", Grants.participant("r")))
            assert reply["type"] == "error" and reply["code"] == "database_unavailable", reply
        finally:
            await participant.close()
        # The node is up (liveness) but not ready, and says why.
        assert (await client.get("/healthz")).status == 200
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["checks"]["database"]["ok"] is False, body
        await own_postgres.start()
        await _until_ok(client, "/api/v1/rooms", tenant.admin)
        resp = await client.post("/api/v1/rooms", json={"name": "after"}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        resp = await client.get("/readyz")
        assert resp.status == 200, await resp.text()


async def test_a_hung_database_answers_503_after_the_command_timeout(tmp_path: Path, own_postgres: OwnPostgres):
    async with _serve(tmp_path, await own_postgres.database(), database_command_timeout_seconds=1) as (_node, client):
        tenant = await create_tenant(client)
        assert (await client.get("/api/v1/rooms", headers=tenant.admin)).status == 200
        with own_postgres.frozen():
            # Without a command timeout this waited for as long as the server stayed frozen.
            resp = await asyncio.wait_for(client.get("/api/v1/rooms", headers=tenant.admin), HANG_GUARD)
            assert await _error(resp) == (503, "database_unavailable")
            resp = await asyncio.wait_for(client.get("/readyz"), HANG_GUARD)
            assert resp.status == 503
        await _until_ok(client, "/api/v1/rooms", tenant.admin)


async def test_with_redis_down_postgres_calls_answer_and_redis_calls_answer_503(
    tmp_path: Path, database_url: str, own_redis: OwnRedis
):
    async with _serve(tmp_path, database_url, redis_url=own_redis.url, redis_timeout_seconds=1) as (_node, client):
        tenant = await create_tenant(client)
        resp = await client.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        room = await resp.json()
        await own_redis.stop()
        # What needs only PostgreSQL goes on: tenancy, token minting, the room list.
        resp = await client.get("/api/v1/rooms", headers=tenant.admin)
        assert resp.status == 200, await resp.text()
        resp = await client.post(
            f"/api/v1/instances/{tenant.instance_id}/tokens",
            json={"identity": "bob", "room": "standup"},
            headers=OPERATOR,
        )
        assert resp.status == 201, await resp.text()
        # What needs Redis (where the room lives in the cluster) says so, and no 500.
        resp = await client.get(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
        assert await _error(resp) == (503, "redis_unavailable")
        resp = await client.get("/readyz")
        body = await resp.json()
        assert body["checks"]["redis"]["ok"] is False and body["checks"]["database"]["ok"] is True, body
        await own_redis.start()
        await _until_ok(client, f"/api/v1/rooms/{room['id']}", tenant.admin)


async def test_a_hung_redis_answers_503_rather_than_holding_the_request(
    tmp_path: Path, database_url: str, own_redis: OwnRedis
):
    async with _serve(tmp_path, database_url, redis_url=own_redis.url, redis_timeout_seconds=0.5) as (_node, client):
        tenant = await create_tenant(client)
        room = await _created_room(client, tenant.admin)
        with own_redis.frozen():
            # Before, the timeout (redis-py's 5 s default) ended in a 500 internal_error.
            resp = await asyncio.wait_for(client.get(f"/api/v1/rooms/{room['id']}", headers=tenant.admin), HANG_GUARD)
            assert await _error(resp) == (503, "redis_unavailable")
        await _until_ok(client, f"/api/v1/rooms/{room['id']}", tenant.admin)
