"""A revoked API key, a suspended instance or customer: the sessions opened before end, on every node.

Real nodes, real sockets and aiortc peers: participants in rooms, chat-only sockets, WHIP
encoders and WHEP players; the revocation goes through the REST API as an operator would
send it, and through the bus (in memory, or Redis between two nodes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.bus import MemoryBus, RedisBus
from gbmedia.node import Node
from gbmedia.signaling.ws import CLOSE_REVOKED
from gbmedia.tenancy.revocation import Credential, Revocations, Revoked
from tests.cluster import cluster_redis_url, create_tenant_over_http, running_cluster
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, wait_for
from tests.signaling.test_whip import host_token, live_token, whep, whip
from tests.test_ratelimit import RedisChild

RED = (220, 30, 30)


async def second_key(client: TestClient, tenant: Tenant) -> Tenant:
    """The same instance under another API key (what an integrator rotates to)."""
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/keys", json={}, headers=OPERATOR)
    assert resp.status == 201, await resp.text()
    credentials = await resp.json()
    return Tenant(tenant.customer_id, tenant.instance_id, credentials["key"], credentials["secret"])


def join_token(tenant: Tenant, identity: str, room: str = "standup") -> str:
    return tenant.token(identity, room=room, room_join=True, can_publish=True, can_subscribe=True)


class ChatSocket:
    """A chat-only socket (``auth``, no room), read frame by frame to see how it closes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, client: TestClient, token: str) -> ChatSocket:
        ws = await client.ws_connect("/rtc")
        await ws.send_json({"type": "auth", "token": token, "id": "a"})
        reply = await ws.receive_json(timeout=10)
        assert reply["type"] == "authenticated", reply
        return cls(ws)

    async def closed_with(self, within: float = 10.0) -> tuple[int, str]:
        """The close code and reason, once the server closes the socket."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    return int(msg.data or 0), str(msg.extra or "")

    async def alive(self) -> bool:
        await self.ws.send_json({"type": "ping", "id": "p"})
        msg = await self.ws.receive(timeout=10)
        return msg.type == WSMsgType.TEXT and msg.json()["type"] == "pong"


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Sockets and peers a test opened, closed after it."""
    items: list[Any] = []
    yield items
    for item in items:
        if isinstance(item, RtcClient):
            await item.close()
        elif isinstance(item, ChatSocket):
            await item.ws.close()
        else:
            for task in getattr(item, "tasks", []):
                task.cancel()
            await item.pc.close()


async def participant(client: TestClient, token: str, opened: list[Any], *, publish: bool = False) -> RtcClient:
    rtc = RtcClient(await client.ws_connect("/rtc"))
    opened.append(rtc)
    assert (await rtc.join(token))["type"] == "joined"
    if publish:
        assert (await rtc.publish(ColorVideoTrack(RED)))["type"] == "publish_answer"
    return rtc


async def still_in_the_room(rtc: RtcClient) -> bool:
    """The socket is open and its participant joined: a media message is not refused with ``not_joined``."""
    reply = await rtc.request({"type": "subscribe", "track_ids": ["no-such-track"], "subscribe": True})
    return not rtc.ws.closed and reply.get("code") != "not_joined"


# --- one node -------------------------------------------------------------------------------


async def test_revoking_a_key_ends_its_participants_and_chat_sockets_and_nothing_else(
    client: TestClient, tenant: Tenant, node: Node, opened: list[Any]
):
    rotated = await second_key(client, tenant)
    other = await create_tenant(client, "globex")
    alice = await participant(client, join_token(rotated, "alice"), opened, publish=True)
    bob = await participant(client, join_token(tenant, "bob"), opened)  # the same room, the other key
    dave = await participant(client, join_token(other, "dave"), opened)  # another customer's room of that name
    carol = await ChatSocket.open(client, rotated.token("carol"))
    opened.append(carol)
    erin = await ChatSocket.open(client, tenant.token("erin"))
    opened.append(erin)

    resp = await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{rotated.key}", headers=OPERATOR)
    assert resp.status == 200, await resp.text()

    removed = await alice.wait_event(lambda e: e["type"] == "removed", within=10)
    assert removed == {"type": "removed", "reason": "api_key_revoked"}
    await wait_for(lambda: alice.ws.closed, within=10)
    assert alice.ws.close_code == CLOSE_REVOKED
    left = await bob.wait_event(lambda e: e["type"] == "participant_left", within=10)
    assert left["reason"] == "api_key_revoked"
    await bob.wait_event(lambda e: e["type"] == "track_unpublished", within=10)
    assert await carol.closed_with() == (CLOSE_REVOKED, "api_key_revoked")
    live = next(r for r in node.live_rooms.live.values() if str(r.room.instance_id) == tenant.instance_id)
    assert [p.identity for p in live.participants.values()] == ["bob"]
    # The same instance's other key, and another customer, go on.
    assert await still_in_the_room(bob) and await still_in_the_room(dave)
    assert await erin.alive()
    # A new session with the revoked key is refused.
    again = RtcClient(await client.ws_connect("/rtc"))
    opened.append(again)
    assert (await again.join(join_token(rotated, "alice")))["code"] == "api_key_revoked"


@pytest.mark.parametrize(
    ("what", "reason"),
    [("instance", "instance_suspended"), ("customer", "customer_suspended")],
)
async def test_suspending_a_tenant_ends_its_sessions_and_leaves_the_others(
    client: TestClient, tenant: Tenant, opened: list[Any], what: str, reason: str
):
    other = await create_tenant(client, "globex")
    alice = await participant(client, join_token(tenant, "alice"), opened, publish=True)
    carol = await ChatSocket.open(client, tenant.token("carol"))
    opened.append(carol)
    dave = await participant(client, join_token(other, "dave"), opened)
    erin = await ChatSocket.open(client, other.token("erin"))
    opened.append(erin)

    path = (
        f"/api/v1/instances/{tenant.instance_id}" if what == "instance" else f"/api/v1/customers/{tenant.customer_id}"
    )
    resp = await client.patch(path, json={"status": "suspended"}, headers=OPERATOR)
    assert resp.status == 200, await resp.text()

    assert await alice.wait_event(lambda e: e["type"] == "removed", within=10) == {"type": "removed", "reason": reason}
    await wait_for(lambda: alice.ws.closed, within=10)
    assert alice.ws.close_code == CLOSE_REVOKED
    assert await carol.closed_with() == (CLOSE_REVOKED, reason)
    assert await still_in_the_room(dave) and await erin.alive()
    again = RtcClient(await client.ws_connect("/rtc"))
    opened.append(again)
    assert (await again.join(join_token(tenant, "alice")))["code"] == reason


async def test_a_participant_waiting_to_resume_is_ended_too(
    client: TestClient, tenant: Tenant, node: Node, opened: list[Any]
):
    rotated = await second_key(client, tenant)
    alice = await participant(client, join_token(rotated, "alice"), opened)
    bob = await participant(client, join_token(tenant, "bob"), opened)
    await alice.ws.close()  # dropped: the session waits GBMEDIA_RESUME_GRACE_SECONDS (20 s) for a resume
    live = next(iter(node.live_rooms.live.values()))
    waiting = next(p for p in live.participants.values() if p.identity == "alice")
    await wait_for(lambda: waiting.send_to_socket is None)
    resp = await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{rotated.key}", headers=OPERATOR)
    assert resp.status == 200
    left = await bob.wait_event(lambda e: e["type"] == "participant_left", within=10)
    assert left["reason"] == "api_key_revoked"


async def test_revoking_a_key_ends_its_whip_and_whep_sessions(
    client: TestClient, tenant: Tenant, node: Node, opened: list[Any]
):
    rotated = await second_key(client, tenant)
    await whip(client, host_token(rotated), ColorVideoTrack(RED), opened=opened)
    live = next(iter(node.live_rooms.live.values()))
    assert live.audience is not None
    await wait_for(lambda: live.audience.current_program.video is not None, within=30)
    player = await whep(client, live_token(rotated, "player"), opened=opened)
    kept = await whep(client, live_token(tenant, "kept"), opened=opened)
    assert len(live.audience.ingest) == 1 and len(live.audience.playback) == 2

    resp = await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{rotated.key}", headers=OPERATOR)
    assert resp.status == 200

    await wait_for(lambda: not live.audience.ingest and not live.participants, within=10)
    await wait_for(lambda: [s.identity for s in live.audience.playback.values()] == ["kept"], within=10)
    await wait_for(lambda: player.pc.connectionState in ("closed", "failed"), within=30)
    assert kept.pc.connectionState not in ("closed", "failed")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE api_keys SET revoked_at = now() WHERE key = $1", "api_key_revoked"),
        ("UPDATE instances SET status = 'suspended' WHERE id = (SELECT instance_id FROM api_keys WHERE key = $1)",
         "instance_suspended"),
        ("""UPDATE customers SET status = 'suspended' WHERE id =
            (SELECT customer_id FROM instances i JOIN api_keys k ON k.instance_id = i.id WHERE k.key = $1)""",
         "customer_suspended"),
    ],
)  # fmt: skip
async def test_a_revocation_the_bus_never_carried_ends_the_sessions_at_the_next_check(
    tmp_path: Path, database_url: str, opened: list[Any], sql: str, reason: str
):
    """Changed behind the node's back (another node announcing while Redis was down): the periodic
    re-check of the held credentials finds it."""
    node = await Node.start(make_settings(tmp_path, database_url, revocation_check_seconds=0.2))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            tenant = await create_tenant(client)
            other = await create_tenant(client, "globex")
            alice = await participant(client, join_token(tenant, "alice"), opened)
            carol = await ChatSocket.open(client, tenant.token("carol"))
            dave = await participant(client, join_token(other, "dave"), opened)
            opened.append(carol)
            async with node.db.pool.acquire() as conn:
                await conn.execute(sql, tenant.key)
            removed = await alice.wait_event(lambda e: e["type"] == "removed", within=10)
            assert removed == {"type": "removed", "reason": reason}
            assert await carol.closed_with() == (CLOSE_REVOKED, reason)
            assert await still_in_the_room(dave)
            for item in opened:
                await item.ws.close()
            opened.clear()
    finally:
        await node.stop()


# --- the registry ---------------------------------------------------------------------------


async def test_sessions_are_held_weakly_and_ended_once():
    revocations = Revocations()
    ended: list[tuple[str, str]] = []

    class Session:
        def __init__(self, name: str) -> None:
            self.name = name

    async def end(session: Session, revoked: Revoked) -> None:
        ended.append((session.name, revoked.reason))

    instance, customer = uuid.uuid4(), uuid.uuid4()
    a, b, gone = Session("a"), Session("b"), Session("gone")
    revocations.hold(a, Credential("key1", instance, customer), end)
    revocations.hold(a, Credential("key2", instance, customer), end)  # chat under one key, the room another
    revocations.hold(b, Credential("key1", uuid.uuid4(), uuid.uuid4()), end)
    revocations.hold(gone, Credential("key2", instance, customer), end)
    del gone  # ended by itself and dropped: forgotten without a release
    assert revocations.held == 3
    assert await revocations.end(Revoked("instance_suspended", instance_id=instance)) == 1
    assert ended == [("a", "instance_suspended")]  # once, though held under two keys
    assert await revocations.end(Revoked("api_key_revoked", api_key="key2")) == 0
    revocations.release(b)
    assert revocations.held == 0


async def test_one_session_failing_to_end_leaves_the_others_ended_and_a_malformed_message_is_ignored(
    caplog: pytest.LogCaptureFixture,
):
    bus = MemoryBus()
    revocations = Revocations()
    await revocations.start(bus)
    ended: list[str] = []

    class Session:
        def __init__(self, name: str) -> None:
            self.name = name

    async def end(session: Session, _revoked: Revoked) -> None:
        if session.name == "broken":
            raise RuntimeError("its socket is in a bad state")
        ended.append(session.name)

    credential = Credential("key", uuid.uuid4(), uuid.uuid4())
    sessions = [Session("broken"), Session("fine")]
    for session in sessions:
        revocations.hold(session, credential, end)
    try:
        await bus.publish("tenancy.revoked", {"reason": "api_key_revoked", "instance_id": "not-a-uuid"})
        await bus.publish("tenancy.revoked", Revoked("api_key_revoked", api_key="key").to_message())
        await wait_for(lambda: ended == ["fine"], within=5)
        assert revocations.held == 0 and revocations.ended == 2
        assert any("malformed revocation" in r.getMessage() for r in caplog.records)
        assert any("ending a revoked session failed" in r.getMessage() for r in caplog.records)
    finally:
        await revocations.stop()
        await bus.close()


async def test_when_the_bus_cannot_announce_this_nodes_sessions_end_all_the_same(tmp_path: Path):
    redis = RedisChild(tmp_path)
    await redis.start()
    client = aioredis.from_url(redis.url)
    bus = RedisBus(client)
    revocations = Revocations()
    ended: list[str] = []

    class Session:
        pass

    async def end(_session: Session, revoked: Revoked) -> None:
        ended.append(revoked.reason)

    session = Session()
    revocations.hold(session, Credential("key", uuid.uuid4(), uuid.uuid4()), end)
    try:
        await revocations.start(bus)
        await redis.stop()  # the cluster cannot be told: this node still ends its own sessions
        await revocations.announce(Revoked("api_key_revoked", api_key="key"))
        assert ended == ["api_key_revoked"]
    finally:
        await revocations.stop()
        await bus.close()
        await client.aclose()
        await redis.stop()


# --- a cluster --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_revocation_on_one_node_ends_the_sessions_another_node_holds(
    tmp_path: Path, database_url: str, redis_url: str, opened: list[Any]
):
    base = make_settings(tmp_path, database_url, redis_url=cluster_redis_url(redis_url))
    nodes = [await Node.start(base.model_copy(update={"node_id": f"revoke-{n}"})) for n in ("a", "b")]
    clients = [TestClient(TestServer(create_app(node))) for node in nodes]
    try:
        for client in clients:
            await client.start_server()
        a, b = clients
        tenant = await create_tenant(a)
        rotated = await second_key(a, tenant)
        other = await create_tenant(a, "globex")
        on_b = await ChatSocket.open(b, rotated.token("carol"))
        kept_on_b = await ChatSocket.open(b, tenant.token("erin"))
        others_on_b = await ChatSocket.open(b, other.token("dave"))
        opened.extend([on_b, kept_on_b, others_on_b])

        resp = await a.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{rotated.key}", headers=OPERATOR)
        assert resp.status == 200

        assert await on_b.closed_with() == (CLOSE_REVOKED, "api_key_revoked")
        assert await kept_on_b.alive() and await others_on_b.alive()

        resp = await a.patch(f"/api/v1/customers/{tenant.customer_id}", json={"status": "suspended"}, headers=OPERATOR)
        assert resp.status == 200
        assert await kept_on_b.closed_with() == (CLOSE_REVOKED, "customer_suspended")
        assert await others_on_b.alive()
    finally:
        for item in opened:
            await item.ws.close()
        opened.clear()
        for client in clients:
            await client.close()
        for node in nodes:
            await node.stop()


@pytest.mark.redis
async def test_a_participant_whose_socket_another_node_relays_is_ended_on_both(
    tmp_path: Path, database_url: str, redis_url: str
):
    async with running_cluster(tmp_path, database_url, redis_url) as cluster:
        a, b = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"))
        async with aiohttp.ClientSession() as http:
            await cluster.wait_registered(http, {"node-a", "node-b"})
            tenant = await create_tenant_over_http(http, a.url)
            async with http.post(
                a.url + f"/api/v1/instances/{tenant.instance_id}/keys", json={}, headers=OPERATOR
            ) as resp:
                credentials = await resp.json()
            rotated = Tenant(tenant.customer_id, tenant.instance_id, credentials["key"], credentials["secret"])
            async with http.post(a.url + "/api/v1/rooms", json={"name": "standup"}, headers=tenant.admin) as resp:
                owner = (await resp.json())["node_id"]
            here, there = (a, b) if owner == "node-a" else (b, a)
            clients: list[RtcClient] = []
            try:
                alice = RtcClient(await http.ws_connect(there.url.replace("http", "ws", 1) + "/rtc"))
                bob = RtcClient(await http.ws_connect(here.url.replace("http", "ws", 1) + "/rtc"))
                clients += [alice, bob]
                assert (await alice.join(join_token(rotated, "alice")))["type"] == "joined"  # piped to the owner
                assert (await alice.publish(ColorVideoTrack(RED)))["type"] == "publish_answer"
                assert (await bob.join(join_token(tenant, "bob")))["type"] == "joined"

                async with http.delete(
                    there.url + f"/api/v1/instances/{tenant.instance_id}/keys/{rotated.key}", headers=OPERATOR
                ) as resp:
                    assert resp.status == 200

                removed = await alice.wait_event(lambda e: e["type"] == "removed", within=10)
                assert removed["reason"] == "api_key_revoked"
                await wait_for(lambda: alice.ws.closed, within=10)
                assert alice.ws.close_code == CLOSE_REVOKED
                left = await bob.wait_event(lambda e: e["type"] == "participant_left", within=10)
                assert left["reason"] == "api_key_revoked"
                assert await still_in_the_room(bob)
                for node in (here, there):
                    again = RtcClient(await http.ws_connect(node.url.replace("http", "ws", 1) + "/rtc"))
                    clients.append(again)
                    assert (await again.join(join_token(rotated, "alice")))["code"] == "api_key_revoked"
            finally:
                for client in clients:
                    await client.close()
