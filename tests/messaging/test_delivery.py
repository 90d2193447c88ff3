"""The chat fan-out (gbmedia/messaging/delivery.py) on each kind of bus.

A single node (``MemoryBus``: the bus spans one process) hands its sessions every
event and publishes nothing: a publish would only come back, as JSON, to the hub
that sent it, to be dropped as its own. A cluster (``RedisBus``) publishes each
batch of events once; the other nodes deliver it, the publisher skips its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gbmedia.bus import Bus, MemoryBus, RedisBus
from gbmedia.messaging.delivery import CHANNEL, ChatHub
from gbmedia.messaging.models import Conversation
from gbmedia.node import Node
from tests.helpers import Tenant
from tests.messaging.test_chat_socket import connect, conversation_of
from tests.test_bus import wait_until

__all__ = ["connect"]  # the socket fixture

INSTANCE = uuid.uuid4()


class Session:
    """A connected member as the hub sees it; records the frames it is pushed."""

    def __init__(self, identity: str) -> None:
        self.instance_id = str(INSTANCE)
        self.identity = identity
        self.frames: list[bytes] = []

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(frame[2:]) for frame in self.frames]  # short frames: a 2-byte header


class Publishes:
    """Counts what a bus is asked to publish on the chat channel."""

    def __init__(self, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[dict[str, Any]] = []
        publish = bus.publish

        async def counting(channel: str, message: dict[str, Any]) -> None:
            if channel == CHANNEL:
                self.messages.append(message)
            await publish(channel, message)

        monkeypatch.setattr(bus, "publish", counting)


def conversation() -> Conversation:
    return Conversation(uuid.uuid4(), uuid.uuid4(), INSTANCE, "group", None, None, None, {}, 0, dt.datetime.now(dt.UTC))


def message(conversation: Conversation, seq: int) -> dict[str, Any]:
    return {"conversation_id": str(conversation.id), "seq": seq, "content": f"m{seq}"}


async def commit_batch(hub: ChatHub, conversation: Conversation, seqs: range, members: list[str]) -> None:
    """What ``Messages._committed`` does after a batch's commit: each new message to the hub, in one turn."""
    for seq in seqs:
        await hub.on_change("message", message(conversation, seq), conversation, members)


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus()
    yield bus
    await bus.close()


async def test_on_one_node_a_batch_is_delivered_and_nothing_is_published(
    memory_bus: MemoryBus, monkeypatch: pytest.MonkeyPatch
):
    publishes = Publishes(memory_bus, monkeypatch)
    hub = ChatHub(memory_bus, conversations=None)  # type: ignore[arg-type]  # members come with the change
    await hub.start()
    try:
        alice, bob, carol = Session("alice"), Session("bob"), Session("carol")
        for session in (alice, bob, carol):
            hub.attach(session)
        chat = conversation()
        await commit_batch(hub, chat, range(1, 4), ["alice", "bob"])
        await asyncio.sleep(0.05)  # a publish would have come back by now
        expected = [{"type": "chat_message", "message": message(chat, seq)} for seq in range(1, 4)]
        assert alice.events() == expected and bob.events() == expected
        assert carol.frames == []  # not a member
        assert publishes.messages == [] and hub.published == 0
        assert hub.delivered == 6
    finally:
        await hub.stop()


@pytest.mark.redis
async def test_in_a_cluster_a_batch_is_published_once_and_other_nodes_deliver_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    prefix = f"gbmedia-test:chat:{uuid.uuid4().hex}:"
    clients = [aioredis.from_url(redis_url) for _ in range(2)]
    buses = [RedisBus(client, prefix=prefix) for client in clients]
    publishes = Publishes(buses[0], monkeypatch)
    hubs = [ChatHub(bus, conversations=None) for bus in buses]  # type: ignore[arg-type]
    try:
        for hub in hubs:
            await hub.start()
        here, there = Session("alice"), Session("bob")
        hubs[0].attach(here)
        hubs[1].attach(there)
        chat = conversation()
        await commit_batch(hubs[0], chat, range(1, 4), ["alice", "bob"])
        expected = [{"type": "chat_message", "message": message(chat, seq)} for seq in range(1, 4)]
        assert here.events() == expected  # at once, on the committing node
        await wait_until(lambda: len(there.frames) == 3)
        assert there.events() == expected  # through Redis, in commit order
        assert len(publishes.messages) == 1 and len(publishes.messages[0]["events"]) == 3  # one message per batch
        await asyncio.sleep(0.05)  # the publisher's own message came back to it too, and was skipped
        assert here.events() == expected and hubs[0].published == 1
    finally:
        for hub in hubs:
            await hub.stop()
        for bus in buses:
            await bus.close()
        for client in clients:
            await client.aclose()


async def test_a_single_node_publishes_nothing_when_its_sockets_chat(
    client: TestClient, node: Node, tenant: Tenant, connect, monkeypatch: pytest.MonkeyPatch
):
    assert isinstance(node.bus, MemoryBus) and not node.bus.spans_nodes
    publishes = Publishes(node.bus, monkeypatch)
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice, bob = await connect(tenant, "alice"), await connect(tenant, "bob")
    acks = await asyncio.gather(
        *(
            alice.request({"type": "chat_send", "conversation_id": cid, "content": f"n{n}", "idempotency_key": f"n{n}"})
            for n in range(5)
        )
    )
    assert sorted(a["seq"] for a in acks) == [1, 2, 3, 4, 5]
    await bob.wait(lambda e: len(bob.messages(cid)) == 5)
    await alice.request({"type": "typing", "conversation_id": cid})
    await bob.wait(lambda e: e["type"] == "typing")
    assert publishes.messages == []
