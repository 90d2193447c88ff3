"""Relaying between two nodes in this process: signed requests, forwarded REST calls, piped sockets.

Two :class:`~gbmedia.node.Node` s share the test database and a Redis database; each
serves its app on its own port, which is also its cluster listener. The process tests in
tests/test_cluster.py do the same with real ``gbmedia serve`` processes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

from gbmedia.app import create_app
from gbmedia.errors import ApiError
from gbmedia.node import Node
from gbmedia.signaling.relay import NODE_HEADER, SIGNATURE_HEADER, TIME_HEADER, ClusterAuth
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, wait_for
from tests.signaling.test_whip import host_token, live_token, whep, whip

RELAY_REDIS_DB = 15
SECRET = "relay-test-cluster-secret"


class FakeRequest:
    """Just what ClusterAuth.verify reads of a request."""

    def __init__(self, method: str, path_qs: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path_qs = path_qs
        self.path = path_qs.split("?")[0]
        self.headers = headers
        self.remote = "198.51.100.9"


def test_a_signature_binds_the_node_the_time_the_method_and_the_path():
    auth = ClusterAuth(SECRET, "node-a")
    headers = auth.headers("GET", "/rtc?room=x")
    assert ClusterAuth(SECRET, "node-b").verify(FakeRequest("GET", "/rtc?room=x", headers)) == "node-a"  # type: ignore[arg-type]
    for method, path, changed in (
        ("POST", "/rtc?room=x", {}),  # another method
        ("GET", "/rtc?room=y", {}),  # another path
        ("GET", "/rtc?room=x", {NODE_HEADER: "node-z"}),  # another sender
        ("GET", "/rtc?room=x", {TIME_HEADER: f"{time.time() - 120:.3f}"}),  # too old: a replay
        ("GET", "/rtc?room=x", {TIME_HEADER: "soon"}),
    ):
        with pytest.raises(ApiError) as refused:
            auth.verify(FakeRequest(method, path, {**headers, **changed}))  # type: ignore[arg-type]
        assert refused.value.status == 403 and refused.value.code == "cluster_auth_failed"
    other = ClusterAuth("another-secret-entirely", "node-a")
    assert not other.signed(FakeRequest("GET", "/rtc?room=x", headers))  # type: ignore[arg-type]
    assert auth.signed(FakeRequest("GET", "/rtc?room=x", headers))  # type: ignore[arg-type]
    assert not auth.signed(FakeRequest("GET", "/rtc", {}))  # type: ignore[arg-type]


@pytest.fixture
async def redis_db(redis_url: str) -> AsyncIterator[str]:
    url = f"{redis_url.rpartition('/')[0]}/{RELAY_REDIS_DB}"
    client = aioredis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


async def started(tmp_path: Path, database_url: str, redis: str, name: str, secret_key: str) -> TestClient:
    settings = make_settings(
        tmp_path / name,
        database_url,
        node_id=name,
        redis_url=redis,
        cluster_secret=SECRET,
        secret_key=secret_key,
        node_max_cpu=1.0,
        hls_enabled=False,
    )
    node = await Node.start(settings)
    client = TestClient(TestServer(create_app(node), host="127.0.0.1"))
    await client.start_server()
    url = str(client.make_url("")).rstrip("/")
    await node.member.serve_at(url, url)  # its one port is also its cluster listener
    return client


def node_of(client: TestClient) -> Node:
    from gbmedia.app import NODE

    app: web.Application = client.server.app  # type: ignore[assignment]
    return app[NODE]


@pytest.fixture
async def pair(tmp_path: Path, database_url: str, redis_db: str) -> AsyncIterator[tuple[TestClient, TestClient]]:
    key = Fernet.generate_key().decode()
    a = await started(tmp_path, database_url, redis_db, "node-a", key)
    b = await started(tmp_path, database_url, redis_db, "node-b", key)
    yield a, b
    for client in (b, a):
        node = node_of(client)
        await client.close()
        await node.stop()


async def test_a_rest_call_for_a_room_on_another_node_is_answered_there(pair: tuple[TestClient, TestClient]):
    a, b = pair
    tenant: Tenant = await create_tenant(a)
    resp = await a.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
    room = await resp.json()
    assert room["node_id"] == "node-a"
    alice = RtcClient(await a.ws_connect("/rtc"))
    try:
        token = mint_token(tenant.key, tenant.secret, "alice", Grants.participant("standup"))
        assert (await alice.join(token))["type"] == "joined"
        # Asked on B, answered by A (which has the participant), and marked so.
        resp = await b.get(f"/api/v1/rooms/{room['id']}/participants", headers=tenant.admin)
        assert resp.status == 200 and resp.headers["X-Gbmedia-Served-By"] == "node-a"
        assert [p["identity"] for p in (await resp.json())["participants"]] == ["alice"]
        assert node_of(b).relay.relayed_requests == 1
        # Closing through B closes it on A: alice hears of it.
        resp = await b.delete(f"/api/v1/rooms/{room['id']}", headers=tenant.admin)
        assert resp.status == 200 and (await resp.json())["status"] == "closed"
        await alice.wait_event(lambda e: e["type"] == "room_closed")
    finally:
        await alice.close()


async def test_a_socket_on_the_other_node_is_piped_to_the_rooms_node(pair: tuple[TestClient, TestClient]):
    a, b = pair
    tenant: Tenant = await create_tenant(a)
    await a.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
    alice = RtcClient(await a.ws_connect("/rtc"))
    bob = RtcClient(await b.ws_connect("/rtc?room=standup"))
    try:
        await alice.join(mint_token(tenant.key, tenant.secret, "alice", Grants.participant("standup")))
        joined = await bob.join(mint_token(tenant.key, tenant.secret, "bob", Grants.participant("standup")))
        assert [p["identity"] for p in joined["participants"]] == ["alice"]
        await alice.wait_event(lambda e: e["type"] == "participant_joined")
        assert len(node_of(b).relay.pipes) == 1 and node_of(b).live_rooms.live == {}
        # A ping and a leave pass through the pipe like any message.
        assert (await bob.request({"type": "ping"}))["type"] == "pong"
        assert (await bob.request({"type": "leave"}))["type"] == "left"
        await alice.wait_event(lambda e: e["type"] == "participant_left")
        # The node's metrics count what it relayed.
        metrics = await (await b.get("/metrics")).text()
        assert "gbmedia_relayed_sockets_total 1.0" in metrics and "gbmedia_node_load" in metrics
    finally:
        await alice.close()
        await bob.close()


async def test_the_owner_moving_its_room_away_ends_the_piped_socket_with_moved(pair: tuple[TestClient, TestClient]):
    a, b = pair
    tenant: Tenant = await create_tenant(a)
    await a.post("/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin)
    bob = RtcClient(await b.ws_connect("/rtc"))
    try:
        await bob.join(mint_token(tenant.key, tenant.secret, "bob", Grants.participant("standup")))
        owner = node_of(a)
        (live,) = owner.live_rooms.live.values()
        await owner.placement.release(live.room.id)
        await live.move_away("drain")
        moved = await bob.wait_event(lambda e: e["type"] == "moved")
        assert moved["reason"] == "drain"
        await bob.ws.receive()  # the close, relayed
        assert bob.ws.closed and bob.ws.close_code == 1012
        # The room is placed again on the next join, through whichever node.
        again = RtcClient(await b.ws_connect("/rtc"))
        try:
            assert (await again.join(mint_token(tenant.key, tenant.secret, "bob", Grants.participant("standup"))))[
                "type"
            ] == "joined"
        finally:
            await again.close()
    finally:
        await bob.close()


async def test_a_relayed_request_with_a_forged_signature_is_refused(pair: tuple[TestClient, TestClient]):
    a, _b = pair
    forged = {NODE_HEADER: "node-b", TIME_HEADER: f"{time.time():.3f}", SIGNATURE_HEADER: "0" * 64}
    resp = await a.get("/api/v1/nodes", headers={**OPERATOR, **forged})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "cluster_auth_failed"
    resp = await a.get(
        "/api/v1/nodes", headers={**OPERATOR, **ClusterAuth(SECRET, "node-b").headers("GET", "/api/v1/nodes")}
    )
    assert resp.status == 200
    assert sorted(n["node_id"] for n in (await resp.json())["nodes"]) == ["node-a", "node-b"]


async def test_whip_and_whep_on_the_other_node_reach_the_live_rooms_node(pair: tuple[TestClient, TestClient]):
    a, b = pair
    tenant: Tenant = await create_tenant(a)
    resp = await a.post("/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=tenant.admin)
    room = await resp.json()
    assert room["node_id"] == "node-a"
    opened: list = []
    try:
        encoder = await whip(b, host_token(tenant, "obs"), ColorVideoTrack((200, 40, 40)), opened=opened)
        (live,) = node_of(a).live_rooms.live.values()  # the ingest lives on A
        assert [p.identity for p in live.participants.values()] == ["obs"] and node_of(b).live_rooms.live == {}
        player = await whep(b, live_token(tenant, "viewer"), opened=opened)
        await wait_for(lambda: len(player.frames.get("video", [])) >= 3, within=30)
        # PATCH and DELETE of the session go through B too (the Location is a path).
        resp = await b.delete(player.location, headers=bearer(live_token(tenant, "viewer")))
        assert resp.status == 200
        resp = await b.delete(encoder.location, headers=bearer(host_token(tenant, "obs")))
        assert resp.status == 200
        assert node_of(b).relay.relayed_requests == 4
    finally:
        for item in opened:
            for task in getattr(item, "tasks", []):
                task.cancel()
            await item.pc.close()
