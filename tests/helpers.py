"""Helpers shared by tests: credentials and a ready-made tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.tenancy.tokens import Grants, mint_token

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
