"""Abuse limits per source address (gbmedia/http/abuse.py), and the REST budget per identity.

Every test runs a real node (PostgreSQL, aiohttp) and talks to it over HTTP and WebSockets;
the source address is 127.0.0.1, or what X-Forwarded-For says when the node trusts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.http.abuse import TrustedProxies, source_address
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.rtc import RtcClient

SDP = {"Content-Type": "application/sdp"}


async def started(tmp_path: Path, database_url: str, **overrides: Any) -> tuple[Node, TestClient]:
    node = await Node.start(make_settings(tmp_path, database_url, **overrides))
    client = TestClient(TestServer(create_app(node)))
    await client.start_server()
    return node, client


@pytest.fixture
async def stopped() -> AsyncIterator[list[tuple[Node, TestClient]]]:
    """Nodes a test started, stopped after it."""
    running: list[tuple[Node, TestClient]] = []
    yield running
    for node, client in running:
        await client.close()
        await node.stop()


async def error_of(resp: Any) -> tuple[int, str, dict[str, Any]]:
    body = await resp.json()
    return resp.status, body["error"]["code"], body["error"].get("details", {})


# --- the source address -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        ("", ["198.51.100.7"], "127.0.0.1"),  # an untrusted peer's header is never believed
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.0/8", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # the client's own entry is left of the proxy's
        ("127.0.0.1, 10.0.0.0/8", ["198.51.100.7, 10.1.2.3"], "198.51.100.7"),  # two proxies in a row
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),  # two headers: one list
        ("127.0.0.1", ["not-an-address"], "127.0.0.1"),
        ("127.0.0.1, 10.0.0.0/8", ["10.1.2.3"], "127.0.0.1"),  # only proxies: the peer
    ],
)
async def test_the_source_address_believes_x_forwarded_for_only_from_a_trusted_proxy(
    trusted: str, forwarded: list[str], expected: str
):
    proxies = TrustedProxies.parse(trusted)

    async def who(request: web.Request) -> web.Response:
        return web.Response(text=source_address(request, proxies))

    app = web.Application()
    app.router.add_get("/", who)
    async with TestClient(TestServer(app)) as client:
        headers = [("X-Forwarded-For", value) for value in forwarded]
        resp = await client.get("/", headers=headers)
        assert await resp.text() == expected


def test_trusted_proxies_parse_addresses_and_networks():
    proxies = TrustedProxies.parse(" 10.0.0.0/8 ,192.168.1.7,, ::1 ")
    assert proxies.trusts("10.200.0.1") and proxies.trusts("192.168.1.7") and proxies.trusts("::1")
    assert not proxies.trusts("192.168.1.8") and not proxies.trusts("garbage")
    with pytest.raises(ValueError):
        TrustedProxies.parse("10.0.0.0/8, nonsense")


# --- failed authentications ---------------------------------------------------------------


async def test_an_address_that_keeps_failing_authentication_is_refused_before_its_credentials_are_looked_at(
    tmp_path: Path, database_url: str, stopped: list[tuple[Node, TestClient]]
):
    node, client = await started(
        tmp_path, database_url, auth_failure_rate=0.001, auth_failure_burst=3, trusted_proxies="127.0.0.1"
    )
    stopped.append((node, client))
    tenant = await create_tenant(client)  # the operator's token: no failure
    attacker = {"X-Forwarded-For": "203.0.113.5"}
    forged = mint_token(tenant.key, "not-the-secret-" * 3, "admin", Grants(room_admin=True))
    for _ in range(3):  # each of these costs the node a key lookup and a decrypt
        resp = await client.get("/api/v1/whoami", headers={**bearer(forged), **attacker})
        assert (await error_of(resp))[:2] == (401, "token_signature_invalid")
    resp = await client.get("/api/v1/whoami", headers={**bearer(forged), **attacker})
    status, code, details = await error_of(resp)
    assert (status, code, details["limit"]) == (429, "rate_limited", "auth_failures")
    assert int(resp.headers["Retry-After"]) >= 1
    # Refused before any credential check: even a valid token from that address is not looked at.
    resp = await client.get("/api/v1/whoami", headers={**tenant.admin, **attacker})
    assert (await error_of(resp))[:2] == (429, "rate_limited")
    # Another address is served as before, valid or not.
    other = {"X-Forwarded-For": "203.0.113.6"}
    assert (await client.get("/api/v1/whoami", headers={**tenant.admin, **other})).status == 200
    resp = await client.get("/api/v1/whoami", headers={**bearer(forged), **other})
    assert (await error_of(resp))[:2] == (401, "token_signature_invalid")
    # A client that authenticates never spends the failure budget.
    for _ in range(5):
        assert (await client.get("/api/v1/whoami", headers={**tenant.admin, **other})).status == 200


async def test_without_a_trusted_proxy_a_forged_x_forwarded_for_does_not_escape_the_limit(
    tmp_path: Path, database_url: str, stopped: list[tuple[Node, TestClient]]
):
    node, client = await started(tmp_path, database_url, auth_failure_rate=0.001, auth_failure_burst=2)
    stopped.append((node, client))
    statuses = []
    for n in range(4):
        resp = await client.get("/api/v1/whoami", headers={**bearer("garbage"), "X-Forwarded-For": f"198.51.100.{n}"})
        statuses.append(resp.status)
    assert statuses == [401, 401, 429, 429]


async def test_failed_token_checks_on_the_socket_and_on_whip_count_against_the_address(
    tmp_path: Path, database_url: str, stopped: list[tuple[Node, TestClient]]
):
    node, client = await started(tmp_path, database_url, auth_failure_rate=0.001, auth_failure_burst=3)
    stopped.append((node, client))
    tenant = await create_tenant(client)
    rtc = RtcClient(await client.ws_connect("/rtc"))
    try:
        assert (await rtc.join("garbage"))["code"] == "token_malformed"
        assert (await rtc.request({"type": "auth", "token": "garbage"}))["code"] == "token_malformed"
        resp = await client.post("/whep/show", data="v=0", headers={**bearer("garbage"), **SDP})
        assert (await error_of(resp))[:2] == (401, "token_malformed")
        refused = await rtc.join(tenant.token("alice", room="r", room_join=True))  # valid, but not looked at
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        assert refused["details"]["limit"] == "auth_failures" and refused["details"]["retry_after"] > 0
        resp = await client.post("/whip/show", data="v=0", headers={**bearer("garbage"), **SDP})
        status, code, _ = await error_of(resp)
        assert (status, code) == (429, "rate_limited") and int(resp.headers["Retry-After"]) >= 1
        resp = await client.get("/api/v1/whoami", headers=tenant.admin)
        assert (await error_of(resp))[:2] == (429, "rate_limited")
    finally:
        await rtc.close()


# --- joins and new sessions ---------------------------------------------------------------


async def test_joins_and_new_media_sessions_are_limited_per_address(
    tmp_path: Path, database_url: str, stopped: list[tuple[Node, TestClient]]
):
    node, client = await started(tmp_path, database_url, join_rate_limit=0.001, join_rate_burst=2)
    stopped.append((node, client))
    tenant = await create_tenant(client)
    sockets = [RtcClient(await client.ws_connect("/rtc")) for _ in range(3)]
    try:
        token = tenant.token("alice", room="r", room_join=True, can_subscribe=True)
        assert (await sockets[0].join(token))["type"] == "joined"
        assert (await sockets[0].request({"type": "leave"}))["type"] == "left"
        assert (await sockets[0].join(token))["type"] == "joined"  # join/leave churn counts each join
        refused = await sockets[1].join(tenant.token("bob", room="r", room_join=True))
        assert (refused["code"], refused["details"]["limit"]) == ("rate_limited", "joins")
        refused = await sockets[2].request({"type": "auth", "token": tenant.token("carol")})
        assert refused["code"] == "rate_limited"
        viewer = tenant.token("viewer", room="show", can_subscribe=True, room_join=True)
        resp = await client.post("/whep/show", data="v=0", headers={**bearer(viewer), **SDP})
        status, code, details = await error_of(resp)
        assert (status, code, details["limit"]) == (429, "rate_limited", "joins")
        assert int(resp.headers["Retry-After"]) >= 1
        # REST work is not a join: the address is still served.
        assert (await client.get("/api/v1/whoami", headers=tenant.admin)).status == 200
    finally:
        for rtc in sockets:
            await rtc.close()


# --- the REST budget is per identity --------------------------------------------------------


async def test_one_identity_spending_its_rest_budget_leaves_the_tenants_backend_its_own(
    tmp_path: Path, database_url: str, stopped: list[tuple[Node, TestClient]]
):
    node, client = await started(tmp_path, database_url, api_rate_limit=0.001, api_rate_burst=3)
    stopped.append((node, client))
    resp = await client.post("/api/v1/customers", json={"name": "acme", "tier": "starter"}, headers=OPERATOR)
    customer = await resp.json()
    resp = await client.post(f"/api/v1/customers/{customer['id']}/instances", json={"name": "m"}, headers=OPERATOR)
    body = await resp.json()
    tenant = Tenant(customer["id"], body["instance"]["id"], body["credentials"]["key"], body["credentials"]["secret"])
    guest = bearer(tenant.token("guest", room="show", can_subscribe=True))
    statuses = [(await client.get("/api/v1/whoami", headers=guest)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # The backend's identity, under the same API key, has a budget of its own.
    assert (await client.get("/api/v1/whoami", headers=tenant.admin)).status == 200
