"""The chat event stream end to end: a node configured with Kafka (tansu) relays every message and
receipt through the outbox; a consumer sees each event once after dedupe, in per-conversation order."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import bearer, create_tenant
from tests.test_outbox import deduped, read_topics


@pytest.fixture
def settings(tmp_path: Path, database_url: str, kafka_bootstrap: str) -> Settings:
    return make_settings(tmp_path, database_url, kafka_bootstrap_servers=kafka_bootstrap)


async def test_messages_and_receipts_reach_kafka_once_in_conversation_order(
    client: TestClient, node: Node, kafka_bootstrap: str
):
    tenant = await create_tenant(client)
    alice = bearer(mint_token(tenant.key, tenant.secret, "alice", Grants()))
    bob = bearer(mint_token(tenant.key, tenant.secret, "bob", Grants()))
    conversations = []
    for title in ("one", "two"):
        resp = await client.post("/api/v1/conversations", json={"members": ["bob"], "title": title}, headers=alice)
        conversations.append((await resp.json())["id"])
    for n in range(12):
        cid = conversations[n % 2]
        resp = await client.post(
            f"/api/v1/conversations/{cid}/messages",
            json={"content": f"m{n}", "idempotency_key": f"k{n}"},
            headers=alice,
        )
        assert resp.status == 201
    # A retried send is stored once, so it is streamed once.
    await client.post(
        f"/api/v1/conversations/{conversations[0]}/messages",
        json={"content": "m0", "idempotency_key": "k0"},
        headers=alice,
    )
    await client.post(f"/api/v1/conversations/{conversations[0]}/receipts", json={"read_seq": 6}, headers=bob)

    for _ in range(600):
        if await node.db.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0:
            break
        await asyncio.sleep(0.05)
    assert await node.db.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0

    records = deduped(await read_topics(kafka_bootstrap, ["chat.messages", "chat.receipts", "chat.conversations"]))
    by_topic: dict[str, list[dict]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(json.loads(record.value))
    created = by_topic["gbmedia.chat.conversations"]
    assert sorted(e["conversation_id"] for e in created) == sorted(conversations)
    for cid in conversations:
        seqs = [
            e["message"]["seq"] for e in by_topic["gbmedia.chat.messages"] if e["message"]["conversation_id"] == cid
        ]
        assert seqs == [1, 2, 3, 4, 5, 6]  # every message once, in the conversation's order
    (receipt,) = by_topic["gbmedia.chat.receipts"]
    assert (receipt["identity"], receipt["read_seq"]) == ("bob", 6)
    keys = {r.key.decode() for r in records if r.topic == "gbmedia.chat.messages"}
    assert keys == set(conversations)  # keyed by conversation: one partition each, order kept
    assert all(uuid.UUID(json.loads(r.value)["event_id"]) for r in records)
