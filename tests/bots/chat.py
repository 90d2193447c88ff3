"""Talking to a bot as a person does: dialogs uploaded over REST, messages sent and read over REST."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant, bearer

BOT = "gb"


def as_user(tenant: Tenant, identity: str) -> dict[str, str]:
    return bearer(mint_token(tenant.key, tenant.secret, identity, Grants()))


async def upload(client: TestClient, tenant: Tenant, name: str, source: str) -> dict[str, Any]:
    resp = await client.put(f"/api/v1/bots/dialogs/{name}", json={"source": source}, headers=tenant.admin)
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def bot_conversation(client: TestClient, tenant: Tenant, user: str = "alice") -> str:
    """A ``bot`` conversation of ``user`` with the bot (the bot is a member with the role ``bot``)."""
    resp = await client.post(
        "/api/v1/conversations", json={"kind": "bot", "members": [BOT]}, headers=as_user(tenant, user)
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


class Person:
    """Someone in a conversation with a bot: says a message, gets the bot's replies to it."""

    def __init__(self, client: TestClient, node: Node, tenant: Tenant, identity: str, conversation_id: str) -> None:
        self.client = client
        self.node = node
        self.tenant = tenant
        self.identity = identity
        self.conversation_id = conversation_id

    async def messages(self) -> list[dict[str, Any]]:
        resp = await self.client.get(
            f"/api/v1/conversations/{self.conversation_id}/messages",
            params={"after_seq": "0", "limit": "200"},
            headers=as_user(self.tenant, self.identity),
        )
        assert resp.status == 200, await resp.text()
        return (await resp.json())["messages"]

    async def say(self, text: str) -> list[str]:
        """Send ``text``; once the bot has handled it, what the bot said after it."""
        resp = await self.client.post(
            f"/api/v1/conversations/{self.conversation_id}/messages",
            json={"content": text, "idempotency_key": uuid.uuid4().hex},
            headers=as_user(self.tenant, self.identity),
        )
        assert resp.status == 201, await resp.text()
        mine = (await resp.json())["seq"]
        await self.node.bots.engine.settled()
        return [m["content"] for m in await self.messages() if m["seq"] > mine and m["sender"] == BOT]
