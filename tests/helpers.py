"""Helpers shared by tests: credentials and a ready-made tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient

from gbmedia.tenancy.tokens import Grants, mint_token

T = TypeVar("T")

OPERATOR_TOKEN = "test-operator-token-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    customer_id: str
    instance_id: str
    key: str
    secret: str

    def token(self, identity: str = "admin", **grants: Any) -> str:
        chosen = Grants(**grants) if grants else Grants(instance_admin=True)
        return mint_token(self.key, self.secret, identity, chosen)

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.token())


async def create_tenant(client: TestClient, name: str = "acme", tier: str = "starter") -> Tenant:
    resp = await client.post("/api/v1/customers", json={"name": name, "tier": tier}, headers=OPERATOR)
    assert resp.status == 201, await resp.text()
    customer = await resp.json()
    resp = await client.post(
        f"/api/v1/customers/{customer['id']}/instances", json={"name": f"{name}-main"}, headers=OPERATOR
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return Tenant(customer["id"], body["instance"]["id"], body["credentials"]["key"], body["credentials"]["secret"])


def run_apart(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end in an event loop of its own, from a test that is not async.

    Not ``asyncio.run``: that leaves the thread with no current loop afterwards, and a later
    test that makes aiortc objects outside a loop (tests/fuzz) then fails to find one.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
