"""Chat on the /rtc WebSocket: acks after commit, live delivery, receipts, typing, presence, catch-up,
and delivery across two server processes sharing Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gbmedia.app import create_app
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import Tenant, bearer, create_tenant


class ChatClient:
    """A socket that records every event and matches replies to requests by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
                self._changed.set()

    async def wait(self, predicate, within: float = 15.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        rid = f"q{self._next}"
        await self.ws.send_json({**message, "id": rid})
        return await self.wait(lambda e: e.get("id") == rid)

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return [
            e["message"]
            for e in self.events
            if e["type"] == "chat_message" and e["message"]["conversation_id"] == conversation_id
        ]

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


def token(tenant: Tenant, identity: str, **grants: Any) -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants(**grants))


@pytest.fixture
async def connect(client: TestClient) -> AsyncIterator[Any]:
    opened: list[ChatClient] = []

    async def open_as(
        tenant: Tenant | None = None, identity: str | None = None, test_client: TestClient = client
    ) -> ChatClient:
        chat = ChatClient(await test_client.ws_connect("/rtc"))
        opened.append(chat)
        if tenant is not None and identity is not None:
            reply = await chat.request({"type": "auth", "token": token(tenant, identity)})
            assert reply["type"] == "authenticated", reply
        return chat

    yield open_as
    for chat in opened:
        await chat.close()


async def conversation_of(client: TestClient, tenant: Tenant, owner: str, *members: str) -> str:
    resp = await client.post(
        "/api/v1/conversations", json={"members": list(members)}, headers=bearer(token(tenant, owner))
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_a_send_is_acknowledged_with_its_seq_and_delivered_to_the_other_member(
    client: TestClient, tenant: Tenant, connect
):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    ack = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "hi bob", "idempotency_key": "a-1"}
    )
    assert (ack["type"], ack["seq"], ack["duplicate"]) == ("chat_ack", 1, False)
    event = await bob.wait(lambda e: e["type"] == "chat_message")
    assert (event["message"]["content"], event["message"]["seq"], event["message"]["sender"]) == ("hi bob", 1, "alice")
    await alice.wait(lambda e: e["type"] == "chat_message")  # the sender's other devices see it too
    again = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "hi bob", "idempotency_key": "a-1"}
    )
    assert (again["seq"], again["duplicate"], again["message_id"]) == (1, True, ack["message_id"])
    await asyncio.sleep(0.2)
    assert len(bob.messages(cid)) == 1  # a retry is not delivered twice


async def test_join_then_burst_every_member_receives_every_message(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob", "carol")
    alice = await connect(tenant, "alice")
    bob, carol = await connect(tenant, "bob"), await connect(tenant, "carol")
    acks = await asyncio.gather(
        *(
            alice.request({"type": "chat_send", "conversation_id": cid, "content": f"m{n}", "idempotency_key": f"k{n}"})
            for n in range(15)
        )
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, 16))
    for member in (bob, carol):
        await member.wait(lambda e, m=member: len(m.messages(cid)) >= 15)
        assert sorted(m["seq"] for m in member.messages(cid)) == list(range(1, 16))


async def test_a_client_that_was_away_catches_up_from_its_last_seq(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    await alice.request({"type": "chat_send", "conversation_id": cid, "content": "one", "idempotency_key": "1"})
    await bob.wait(lambda e: e["type"] == "chat_message")
    last_seq = bob.messages(cid)[-1]["seq"]
    await bob.close()
    for n in range(2, 6):
        await alice.request(
            {"type": "chat_send", "conversation_id": cid, "content": f"m{n}", "idempotency_key": str(n)}
        )
    bob = await connect(tenant, "bob")
    page = await bob.request({"type": "chat_history", "conversation_id": cid, "after_seq": last_seq, "limit": 2})
    assert [m["seq"] for m in page["messages"]] == [2, 3] and page["has_more"] is True
    page = await bob.request({"type": "chat_history", "conversation_id": cid, "after_seq": 3})
    assert [m["content"] for m in page["messages"]] == ["m4", "m5"] and page["has_more"] is False


async def test_receipts_reach_the_sender(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    ack = await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "read me", "idempotency_key": "r"}
    )
    await bob.wait(lambda e: e["type"] == "chat_message")
    reply = await bob.request({"type": "chat_receipt", "conversation_id": cid, "delivered_seq": ack["seq"]})
    assert (reply["type"], reply["delivered_seq"], reply["read_seq"]) == ("chat_receipt_ack", 1, 0)
    delivered = await alice.wait(lambda e: e["type"] == "chat_receipt" and e["identity"] == "bob")
    assert (delivered["delivered_seq"], delivered["read_seq"]) == (1, 0)
    await bob.request({"type": "chat_receipt", "conversation_id": cid, "read_seq": 1})
    read = await alice.wait(lambda e: e["type"] == "chat_receipt" and e["read_seq"] == 1)
    assert read["identity"] == "bob"


async def test_typing_reaches_the_others_only(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    outsider = await connect(tenant, "mallory")
    assert (await alice.request({"type": "typing", "conversation_id": cid}))["type"] == "ack"
    event = await bob.wait(lambda e: e["type"] == "typing")
    assert (event["identity"], event["active"], event["conversation_id"]) == ("alice", True, cid)
    await asyncio.sleep(0.2)
    assert not any(e["type"] == "typing" for e in alice.events + outsider.events)
    error = await outsider.request({"type": "typing", "conversation_id": cid})
    assert error["code"] == "not_a_member"


async def test_presence_follows_the_socket(client: TestClient, tenant: Tenant, connect):
    alice = await connect(tenant, "alice")
    bob = await connect(tenant, "bob")
    reply = await alice.request({"type": "presence_get", "identities": ["bob", "carol"]})
    assert reply["statuses"] == {"bob": "online", "carol": "offline"}
    await bob.request({"type": "presence", "status": "away"})
    assert (await alice.request({"type": "presence_get", "identities": ["bob"]}))["statuses"] == {"bob": "away"}
    await bob.close()
    for _ in range(200):  # the server notices the closed socket shortly
        statuses = (await alice.request({"type": "presence_get", "identities": ["bob"]}))["statuses"]
        if statuses["bob"] == "offline":
            break
        await asyncio.sleep(0.05)
    assert statuses == {"bob": "offline"}


async def test_chat_needs_auth_and_bad_input_gets_errors(client: TestClient, tenant: Tenant, connect):
    cid = await conversation_of(client, tenant, "alice", "bob")
    anonymous = await connect()
    error = await anonymous.request(
        {"type": "chat_send", "conversation_id": cid, "content": "x", "idempotency_key": "k"}
    )
    assert error["code"] == "not_authenticated"
    assert (await anonymous.request({"type": "auth", "token": "nope"}))["code"] == "token_malformed"
    alice = await connect(tenant, "alice")
    deep: dict[str, Any] = {}
    for _ in range(600):
        deep = {"a": deep}
    cases = [
        (
            {"type": "chat_send", "conversation_id": cid, "content": "x", "idempotency_key": "bad key"},
            "invalid_idempotency_key",
        ),
        (
            {"type": "chat_send", "conversation_id": cid, "content": "x" * 20_000, "idempotency_key": "big"},
            "message_too_large",
        ),
        (
            {"type": "chat_send", "conversation_id": str(uuid.uuid4()), "content": "x", "idempotency_key": "k"},
            "conversation_not_found",
        ),
        ({"type": "chat_send", "conversation_id": "x" * 36, "content": "x", "idempotency_key": "k"}, "invalid_id"),
        ({"type": "chat_send", "conversation_id": cid}, "invalid_message"),
        ({"type": "chat_history", "conversation_id": cid, "after_seq": 1, "before_seq": 3}, "invalid_message"),
        ({"type": "auth", "token": token(tenant, "alice")}, "already_authenticated"),
        (  # parsed, then json.dumps recursed on it: internal_error before (issue 21, part 2)
            {"type": "chat_send", "conversation_id": cid, "content": "x", "idempotency_key": "deep", "metadata": deep},
            "json_too_deep",
        ),
    ]
    for message, code in cases:
        error = await alice.request(message)
        assert (error["type"], error["code"]) == ("error", code), (message, error)
    assert (await alice.request({"type": "ping"}))["type"] == "pong"  # the socket stays open
    history = await alice.request({"type": "chat_history", "conversation_id": cid})
    assert history["messages"] == []  # nothing was stored


async def test_participants_of_a_room_chat_in_its_conversation(client: TestClient, tenant: Tenant, connect):
    alice, bob = await connect(), await connect()
    joined_a = await alice.request({"type": "join", "token": token(tenant, "alice", **_participant("standup"))})
    joined_b = await bob.request({"type": "join", "token": token(tenant, "bob", **_participant("standup"))})
    cid = joined_a["chat"]["conversation_id"]
    assert joined_b["chat"]["conversation_id"] == cid
    await alice.request(
        {"type": "chat_send", "conversation_id": cid, "content": "can you hear me?", "idempotency_key": "room-1"}
    )
    event = await bob.wait(lambda e: e["type"] == "chat_message")
    assert event["message"]["content"] == "can you hear me?"
    resp = await client.get(f"/api/v1/conversations/{cid}", headers=bearer(token(tenant, "ops", instance_admin=True)))
    conversation = await resp.json()
    assert (conversation["kind"], conversation["title"]) == ("room", "standup")
    assert {m["identity"] for m in conversation["members"]} == {"alice", "bob"}


def _participant(room: str) -> dict[str, Any]:
    grants = Grants.participant(room)
    return {k: v for k, v in vars(grants).items() if v}


@pytest.mark.redis
async def test_two_nodes_sharing_redis_deliver_to_members_on_either(tmp_path: Path, database_url: str, redis_url: str):
    from cryptography.fernet import Fernet

    nodes, clients, sockets = [], [], []
    secret_key = Fernet.generate_key().decode()  # a cluster shares its secret key
    try:
        for n in range(2):
            settings = make_settings(
                tmp_path / f"node{n}", database_url, redis_url=redis_url, node_id=f"n{n}", secret_key=secret_key
            )
            node = await Node.start(settings)
            nodes.append(node)
            test_client = TestClient(TestServer(create_app(node)))
            await test_client.start_server()
            clients.append(test_client)
        tenant = await create_tenant(clients[0], f"t-{uuid.uuid4().hex[:6]}")
        cid = await conversation_of(clients[0], tenant, "alice", "bob")
        alice = ChatClient(await clients[0].ws_connect("/rtc"))
        bob = ChatClient(await clients[1].ws_connect("/rtc"))
        sockets += [alice, bob]
        for chat, who in ((alice, "alice"), (bob, "bob")):
            assert (await chat.request({"type": "auth", "token": token(tenant, who)}))["type"] == "authenticated"
        await alice.request(
            {"type": "chat_send", "conversation_id": cid, "content": "across nodes", "idempotency_key": "x-1"}
        )
        event = await bob.wait(lambda e: e["type"] == "chat_message")
        assert event["message"]["content"] == "across nodes"
        # Bob's node measured the delivery it got through the bus, from the message's commit time.
        text = await (await clients[1].get("/metrics")).text()
        (delivery,) = [f for f in text_string_to_metric_families(text) if f.name == "gbmedia_chat_delivery_seconds"]
        assert next(s.value for s in delivery.samples if s.name.endswith("_count")) == 1
        await bob.request(
            {"type": "chat_send", "conversation_id": cid, "content": "and back", "idempotency_key": "x-2"}
        )
        back = await alice.wait(lambda e: e["type"] == "chat_message" and e["message"]["sender"] == "bob")
        assert back["message"]["seq"] == 2
        presence = await alice.request({"type": "presence_get", "identities": ["bob"]})
        assert presence["statuses"] == {"bob": "online"}  # presence is shared too
    finally:
        for chat in sockets:
            await chat.close()
        for test_client in clients:
            await test_client.close()
        for node in nodes:
            await node.stop()


async def test_a_resumed_socket_chats_again_and_learns_its_cursors(client: TestClient, tenant: Tenant, connect):
    alice = await connect()
    joined = await alice.request({"type": "join", "token": token(tenant, "alice", **_participant("standup"))})
    cid = joined["chat"]["conversation_id"]
    await alice.request({"type": "chat_send", "conversation_id": cid, "content": "before", "idempotency_key": "b"})
    await alice.request({"type": "chat_receipt", "conversation_id": cid, "read_seq": 1})
    await alice.ws.close()
    again = await connect()
    resumed = await again.request(
        {"type": "join", "token": token(tenant, "alice", **_participant("standup")), "resume": joined["resume_token"]}
    )
    assert resumed["resumed"] is True
    assert resumed["chat"] == {"conversation_id": cid, "last_seq": 1, "delivered_seq": 1, "read_seq": 1}
    ack = await again.request({"type": "chat_send", "conversation_id": cid, "content": "after", "idempotency_key": "a"})
    assert (ack["type"], ack["seq"]) == ("chat_ack", 2)
