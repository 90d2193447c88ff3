"""The per-sender chat rate limit, on a node with a slow refill so the burst is what counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.node import Node
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.messaging.test_chat_api import error_of, group, send
from tests.messaging.test_chat_socket import connect, conversation_of  # noqa: F401 - fixture


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, chat_rate_limit=0.05, chat_rate_burst=5)


async def test_the_send_rate_limit_answers_429_with_retry_after(client: TestClient, tenant: Tenant, node):
    conversation = await group(client, tenant, "alice", "bob")
    burst = node.settings.chat_rate_burst
    statuses = [(await send(client, tenant, "alice", conversation["id"], f"m{n}")).status for n in range(burst + 3)]
    assert statuses[:burst] == [201] * burst and 429 in statuses[burst:]
    limited = await send(client, tenant, "alice", conversation["id"], "again")
    assert await error_of(limited) == (429, "chat_rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await send(client, tenant, "bob", conversation["id"], "bob has his own bucket")).status == 201


async def test_a_flood_is_refused_with_retry_after(client: TestClient, tenant: Tenant, connect, node: Node):  # noqa: F811
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = await connect(tenant, "alice")
    replies = [
        await alice.request(
            {"type": "chat_send", "conversation_id": cid, "content": f"{n}", "idempotency_key": f"f{n}"}
        )
        for n in range(node.settings.chat_rate_burst + 2)
    ]
    limited = [r for r in replies if r["type"] == "error"]
    assert limited and limited[0]["code"] == "chat_rate_limited" and limited[0]["details"]["retry_after"] > 0
    history = await alice.request({"type": "chat_history", "conversation_id": cid, "limit": 500})
    acked = [r["seq"] for r in replies if r["type"] == "chat_ack"]
    assert [m["seq"] for m in history["messages"]] == acked  # what was refused was not stored
