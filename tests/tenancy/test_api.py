"""Tenancy over REST: customers, instances, quotas, keys, tokens, audit."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gbmedia.app import NODE
from gbmedia.tenancy.tokens import Grants, mint_token, verify_token
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant


async def error_of(resp) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    body = await resp.json()
    assert set(body["error"]) >= {"code", "message"}, body
    return resp.status, body["error"]["code"]


# --- customers and quotas ---------------------------------------------------------


async def test_customer_is_created_with_its_tier_quota_and_subscription(client: TestClient, pool: asyncpg.Pool):
    resp = await client.post(
        "/api/v1/customers", json={"name": "Acme", "tier": "pro", "metadata": {"crm": "42"}}, headers=OPERATOR
    )
    assert resp.status == 201
    customer = await resp.json()
    assert customer["subscription_tier"] == "pro"
    assert customer["max_instances"] == 10
    assert customer["metadata"] == {"crm": "42"}
    assert customer["status"] == "active"

    resp = await client.get(f"/api/v1/customers/{customer['id']}", headers=OPERATOR)
    body = await resp.json()
    assert body["quotas"] == {
        "max_instances": 10,
        "max_concurrent_rooms": 100,
        "max_participants_per_room": 300,
        "recording_minutes_per_month": 6000,
        "storage_bytes": 107374182400,
        "participant_minutes_per_month": None,
    }
    assert body["usage"] == {"instances": 0, "open_rooms": 0}


async def test_the_instance_beyond_the_quota_is_refused_with_the_quota_code(client: TestClient):
    resp = await client.post("/api/v1/customers", json={"name": "Small", "tier": "starter"}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    for n in range(3):  # starter allows 3
        resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": f"i{n}"}, headers=OPERATOR)
        assert resp.status == 201
    resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": "i3"}, headers=OPERATOR)
    assert await error_of(resp) == (403, "quota_max_instances_exceeded")
    details = (await resp.json())["error"]["details"]
    assert details == {"quota": "max_instances", "limit": 3, "used": 3}
    resp = await client.get(f"/api/v1/customers/{customer_id}/instances", headers=OPERATOR)
    assert len((await resp.json())["instances"]) == 3


async def test_deleting_an_instance_frees_its_quota_slot(client: TestClient):
    resp = await client.post("/api/v1/customers", json={"name": "Free"}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": "a"}, headers=OPERATOR)
    first = (await resp.json())["instance"]["id"]
    resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": "b"}, headers=OPERATOR)
    assert await error_of(resp) == (403, "quota_max_instances_exceeded")
    resp = await client.delete(f"/api/v1/instances/{first}", headers=OPERATOR)
    assert (await resp.json())["status"] == "deleted"
    resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": "b"}, headers=OPERATOR)
    assert resp.status == 201


async def test_concurrent_creations_cannot_both_take_the_last_slot(client: TestClient):
    import asyncio

    resp = await client.post("/api/v1/customers", json={"name": "Race", "max_instances": 1}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    results = await asyncio.gather(
        *[
            client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": f"r{n}"}, headers=OPERATOR)
            for n in range(5)
        ]
    )
    assert sorted(r.status for r in results) == [201, 403, 403, 403, 403]


async def test_changing_tier_moves_the_instance_quota_and_the_subscription(client: TestClient, pool: asyncpg.Pool):
    resp = await client.post("/api/v1/customers", json={"name": "Grow"}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    resp = await client.patch(f"/api/v1/customers/{customer_id}", json={"subscription_tier": "pro"}, headers=OPERATOR)
    assert resp.status == 200
    assert (await resp.json())["max_instances"] == 10
    subs = await pool.fetch(
        "SELECT plan_id, status FROM subscriptions WHERE customer_id = $1 ORDER BY created_at", uuid.UUID(customer_id)
    )
    assert [(s["plan_id"], s["status"]) for s in subs] == [("free", "cancelled"), ("pro", "active")]
    # An explicit limit in the same call wins over the tier's.
    resp = await client.patch(
        f"/api/v1/customers/{customer_id}", json={"subscription_tier": "starter", "max_instances": 7}, headers=OPERATOR
    )
    assert (await resp.json())["max_instances"] == 7


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": ""}, "validation_failed"),
        ({"name": "x", "tier": "platinum"}, "unknown_tier"),
        ({"name": "x", "surprise": 1}, "validation_failed"),
        ({"name": "x", "max_instances": -1}, "validation_failed"),
        ({"name": 5}, "validation_failed"),
    ],
)
async def test_bad_customer_bodies_are_refused_and_nothing_is_stored(client, pool, body, code):
    resp = await client.post("/api/v1/customers", json=body, headers=OPERATOR)
    assert await error_of(resp) == (400, code)
    assert await pool.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"status": "bogus"}, "validation_failed"),
        ({"name": None}, "null_field"),
        ({"subscription_tier": "nope"}, "unknown_tier"),
    ],
)
async def test_bad_customer_updates_are_refused(client: TestClient, body, code):
    resp = await client.post("/api/v1/customers", json={"name": "U"}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    resp = await client.patch(f"/api/v1/customers/{customer_id}", json=body, headers=OPERATOR)
    assert await error_of(resp) == (400, code)


async def test_missing_ids_answer_404_and_malformed_ids_400(client: TestClient):
    missing = uuid.uuid4()
    resp = await client.get(f"/api/v1/customers/{missing}", headers=OPERATOR)
    assert await error_of(resp) == (404, "customer_not_found")
    resp = await client.get(f"/api/v1/instances/{missing}", headers=OPERATOR)
    assert await error_of(resp) == (404, "instance_not_found")
    resp = await client.post(f"/api/v1/customers/{missing}/instances", json={"name": "x"}, headers=OPERATOR)
    assert await error_of(resp) == (404, "customer_not_found")
    resp = await client.get("/api/v1/instances/not-a-uuid", headers=OPERATOR)
    assert await error_of(resp) == (400, "invalid_id")


# --- instances ----------------------------------------------------------------------


async def test_instance_gets_a_deterministic_shard_and_the_node_region(client: TestClient, node):
    tenant = await create_tenant(client)
    resp = await client.get(f"/api/v1/instances/{tenant.instance_id}", headers=OPERATOR)
    instance = await resp.json()
    from gbmedia.tenancy.sharding import shard_id_for

    assert instance["shard_id"] == shard_id_for(uuid.UUID(tenant.customer_id), node.settings.shard_count)
    assert instance["region"] == node.settings.region
    resp = await client.post(
        f"/api/v1/customers/{tenant.customer_id}/instances",
        json={"name": "second", "region": "eu-west"},
        headers=OPERATOR,
    )
    second = (await resp.json())["instance"]
    assert second["shard_id"] == instance["shard_id"]  # same customer, same shard
    assert second["region"] == "eu-west"


async def test_instance_names_are_unique_per_customer(client: TestClient):
    tenant = await create_tenant(client)
    resp = await client.post(
        f"/api/v1/customers/{tenant.customer_id}/instances", json={"name": "acme-main"}, headers=OPERATOR
    )
    assert await error_of(resp) == (409, "instance_name_taken")


async def test_instance_admin_tunes_its_instance_but_not_status_or_region(client: TestClient):
    tenant = await create_tenant(client)
    url = f"/api/v1/instances/{tenant.instance_id}"
    resp = await client.patch(
        url,
        json={"locale": "pt-BR", "features": {"recording": True}, "config": {"theme": "dark"}},
        headers=tenant.admin,
    )
    assert resp.status == 200
    body = await resp.json()
    assert (body["locale"], body["features"], body["config"]) == ("pt-BR", {"recording": True}, {"theme": "dark"})
    resp = await client.patch(url, json={"status": "suspended"}, headers=tenant.admin)
    assert await error_of(resp) == (403, "operator_required")
    resp = await client.patch(url, json={"features": {"teleport": True}}, headers=tenant.admin)
    assert await error_of(resp) == (400, "unknown_feature")
    resp = await client.patch(url, json={"features": {"recording": "yes"}}, headers=tenant.admin)
    assert await error_of(resp) == (400, "validation_failed")


async def test_suspending_an_instance_or_customer_shuts_out_its_tokens(client: TestClient):
    tenant = await create_tenant(client)
    assert (await client.get("/api/v1/whoami", headers=tenant.admin)).status == 200
    await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"status": "suspended"}, headers=OPERATOR)
    resp = await client.get("/api/v1/whoami", headers=tenant.admin)
    assert await error_of(resp) == (403, "instance_suspended")
    await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"status": "active"}, headers=OPERATOR)
    await client.patch(f"/api/v1/customers/{tenant.customer_id}", json={"status": "suspended"}, headers=OPERATOR)
    resp = await client.get("/api/v1/whoami", headers=tenant.admin)
    assert await error_of(resp) == (403, "customer_suspended")


async def test_a_deleted_instance_cannot_be_changed_and_its_keys_stop_working(client: TestClient):
    tenant = await create_tenant(client)
    token = tenant.token()
    await client.delete(f"/api/v1/instances/{tenant.instance_id}", headers=OPERATOR)
    resp = await client.get("/api/v1/whoami", headers=bearer(token))
    assert await error_of(resp) == (401, "api_key_revoked")
    resp = await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"name": "z"}, headers=OPERATOR)
    assert await error_of(resp) == (409, "instance_deleted")
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/keys", json={}, headers=OPERATOR)
    assert await error_of(resp) == (409, "instance_deleted")
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens", json={"identity": "x", "room": "r"}, headers=OPERATOR
    )
    assert resp.status == 409


# --- keys and tokens ----------------------------------------------------------------


async def test_secrets_are_shown_once_and_stored_encrypted(client: TestClient, pool: asyncpg.Pool):
    tenant = await create_tenant(client)
    resp = await client.get(f"/api/v1/instances/{tenant.instance_id}/keys", headers=tenant.admin)
    keys = (await resp.json())["keys"]
    assert [k["key"] for k in keys] == [tenant.key]
    assert all("secret" not in k for k in keys)
    stored = await pool.fetchval("SELECT secret_ciphertext FROM api_keys WHERE key = $1", tenant.key)
    assert tenant.secret.encode() not in bytes(stored)


async def test_key_rotation_new_key_works_revoked_key_fails(client: TestClient):
    tenant = await create_tenant(client)
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/keys", json={"description": "ci"}, headers=tenant.admin
    )
    assert resp.status == 201
    new = await resp.json()
    rotated = Tenant(tenant.customer_id, tenant.instance_id, new["key"], new["secret"])
    assert (await client.get("/api/v1/whoami", headers=rotated.admin)).status == 200
    resp = await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{tenant.key}", headers=rotated.admin)
    assert (await resp.json())["revoked_at"] is not None
    resp = await client.get("/api/v1/whoami", headers=tenant.admin)
    assert await error_of(resp) == (401, "api_key_revoked")
    resp = await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/APInope", headers=rotated.admin)
    assert await error_of(resp) == (404, "api_key_not_found")


async def test_minted_token_carries_identity_room_grants_and_expiry(client: TestClient):
    tenant = await create_tenant(client)
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "alice", "name": "Alice", "room": "standup", "ttl_seconds": 600},
        headers=tenant.admin,
    )
    assert resp.status == 201
    body = await resp.json()
    token = verify_token(body["token"], tenant.secret)
    assert (token.identity, token.name, token.api_key) == ("alice", "Alice", tenant.key)
    assert token.grants == Grants.participant("standup")
    assert abs(token.expires_at - (time.time() + 600)) < 30
    # A join link on the node's own address (not the request's Host header): the room page with this token.
    base = client.app[NODE].settings.base_url(client.port)
    assert body["url"] == f"{base}/web/room/?token={body['token']}"
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "bob", "room": "standup"},
        headers={**tenant.admin, "Host": "phish.example"},
    )
    url = (await resp.json())["url"]
    assert url.startswith(f"{base}/web/room/?token=") and "phish" not in url
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "rec", "room": "standup", "grants": {"room_record": True, "hidden": True}},
        headers=OPERATOR,
    )
    body = await resp.json()
    token = verify_token(body["token"], tenant.secret)
    assert token.grants == Grants(room="standup", room_record=True, hidden=True)
    assert body["url"] is None  # it cannot join, so no link
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "ops", "room": "standup", "grants": {"room_join": True, "instance_admin": True}},
        headers=tenant.admin,
    )
    body = await resp.json()
    assert verify_token(body["token"], tenant.secret).grants.instance_admin
    assert body["url"] is None  # an instance administrator's token never travels in a link
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "host", "grants": {"room_admin": True}},
        headers=tenant.admin,
    )
    assert await error_of(resp) == (400, "room_required")  # a moderator moderates a room: which one?
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens", json={"identity": "eve\u0000", "room": "r"}, headers=OPERATOR
    )
    assert await error_of(resp) == (400, "validation_failed")
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens",
        json={"identity": "x", "grants": {"fly": True}},
        headers=OPERATOR,
    )
    assert await error_of(resp) == (400, "unknown_grant")
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/tokens", json={"identity": "x", "ttl_seconds": 5}, headers=OPERATOR
    )
    assert await error_of(resp) == (400, "validation_failed")


# --- token validation at the door ---------------------------------------------------


async def test_token_validation_codes(client: TestClient):
    a = await create_tenant(client, "a")
    b = await create_tenant(client, "b")
    cases = {
        "valid": (bearer(a.token()), 200, None),
        "no header": ({}, 401, "auth_required"),
        "basic scheme": ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, "auth_scheme_unsupported"),
        "garbage": (bearer("not.a.jwt"), 401, "token_malformed"),
        "expired": (
            bearer(mint_token(a.key, a.secret, "u", Grants(room_admin=True), ttl_seconds=60, now=time.time() - 3600)),
            401,
            "token_expired",
        ),
        "not yet valid": (
            bearer(mint_token(a.key, a.secret, "u", Grants(room_admin=True), now=time.time() + 3600)),
            401,
            "token_not_yet_valid",
        ),
        "wrong signature": (
            bearer(mint_token(a.key, "guessed-secret", "u", Grants(room_admin=True))),
            401,
            "token_signature_invalid",
        ),
        "other instance's secret": (
            bearer(mint_token(a.key, b.secret, "u", Grants(room_admin=True))),
            401,
            "token_signature_invalid",
        ),
        "unknown key": (bearer(mint_token("APIunknown", a.secret, "u", Grants())), 401, "unknown_api_key"),
        "wrong operator token": (bearer("test-operator-token-wrong!!"), 401, "token_malformed"),
    }
    for label, (headers, status, code) in cases.items():
        resp = await client.get("/api/v1/whoami", headers=headers)
        assert resp.status == status, label
        if code:
            assert (await resp.json())["error"]["code"] == code, label


async def test_missing_grant_is_403_with_the_grant_named(client: TestClient):
    tenant = await create_tenant(client)
    participant = bearer(tenant.token("bob", room="r", room_join=True, can_publish=True))
    resp = await client.get("/api/v1/whoami", headers=participant)
    assert (await resp.json())["grants"] == {"room": "r", "room_join": True, "can_publish": True}
    resp = await client.get(f"/api/v1/instances/{tenant.instance_id}", headers=participant)
    assert await error_of(resp) == (403, "grant_missing")
    assert (await resp.json())["error"]["details"] == {"grant": "instance_admin"}
    host = bearer(tenant.token("host", room="r", room_join=True, room_admin=True))  # a meeting host's link token
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/keys", json={}, headers=host)
    assert await error_of(resp) == (403, "grant_missing")


async def test_instance_callers_cannot_do_operator_work(client: TestClient):
    tenant = await create_tenant(client)
    for method, path, body in [
        ("GET", "/api/v1/customers", None),
        ("POST", "/api/v1/customers", {"name": "evil"}),
        ("PATCH", f"/api/v1/customers/{tenant.customer_id}", {"max_instances": 1000}),
        ("POST", f"/api/v1/customers/{tenant.customer_id}/instances", {"name": "extra"}),
        ("DELETE", f"/api/v1/instances/{tenant.instance_id}", None),
    ]:
        resp = await client.request(method, path, json=body, headers=tenant.admin)
        assert await error_of(resp) == (403, "operator_required"), (method, path)


async def test_instance_caller_reads_its_own_customer_and_only_its_instance(client: TestClient):
    tenant = await create_tenant(client)
    await client.post(f"/api/v1/customers/{tenant.customer_id}/instances", json={"name": "sibling"}, headers=OPERATOR)
    resp = await client.get(f"/api/v1/customers/{tenant.customer_id}", headers=tenant.admin)
    assert (await resp.json())["customer"]["id"] == tenant.customer_id
    resp = await client.get(f"/api/v1/customers/{tenant.customer_id}/instances", headers=tenant.admin)
    assert [i["id"] for i in (await resp.json())["instances"]] == [tenant.instance_id]


# --- audit --------------------------------------------------------------------------


async def test_every_mutation_writes_an_audit_row(client: TestClient, pool: asyncpg.Pool):
    tenant = await create_tenant(client)
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/keys", json={}, headers={**tenant.admin, "X-Request-Id": "req-123"}
    )
    new_key = (await resp.json())["key"]
    await client.delete(f"/api/v1/instances/{tenant.instance_id}/keys/{new_key}", headers=tenant.admin)
    await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"locale": "fr"}, headers=tenant.admin)
    await client.patch(f"/api/v1/customers/{tenant.customer_id}", json={"name": "Acme 2"}, headers=OPERATOR)
    rows = await pool.fetch(
        "SELECT actor, actor_kind, action, target_type, target_id, request_id FROM audit_log ORDER BY id"
    )
    assert [(r["actor_kind"], r["action"], r["target_type"]) for r in rows] == [
        ("operator", "customer.create", "customer"),
        ("operator", "instance.create", "instance"),
        ("operator", "api_key.create", "api_key"),
        ("api_key", "api_key.create", "api_key"),
        ("api_key", "api_key.revoke", "api_key"),
        ("api_key", "instance.update", "instance"),
        ("operator", "customer.update", "customer"),
    ]
    assert rows[3]["actor"] == tenant.key and rows[3]["request_id"] == "req-123"
    assert rows[4]["target_id"] == new_key


async def test_failed_mutations_leave_no_audit_row(client: TestClient, pool: asyncpg.Pool):
    resp = await client.post("/api/v1/customers", json={"name": "Q", "max_instances": 0}, headers=OPERATOR)
    customer_id = (await resp.json())["id"]
    before = await pool.fetchval("SELECT count(*) FROM audit_log")
    resp = await client.post(f"/api/v1/customers/{customer_id}/instances", json={"name": "x"}, headers=OPERATOR)
    assert resp.status == 403
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == before


async def test_audit_listing_is_scoped_and_pages(client: TestClient):
    a = await create_tenant(client, "a")
    b = await create_tenant(client, "b")
    resp = await client.get("/api/v1/audit", headers=a.admin)
    entries = (await resp.json())["entries"]
    assert entries and all(e["instance_id"] == a.instance_id for e in entries)
    resp = await client.get(f"/api/v1/audit?customer_id={b.customer_id}", headers=OPERATOR)
    entries = (await resp.json())["entries"]
    assert {e["customer_id"] for e in entries} == {b.customer_id}
    resp = await client.get("/api/v1/audit?limit=2", headers=OPERATOR)
    page1 = (await resp.json())["entries"]
    resp = await client.get(f"/api/v1/audit?limit=2&before={page1[-1]['id']}", headers=OPERATOR)
    page2 = (await resp.json())["entries"]
    assert len(page1) == 2 and page2 and page2[0]["id"] < page1[-1]["id"]
    for bad in ("limit=0", "limit=x", "customer_id=nope", "before=-1"):
        resp = await client.get(f"/api/v1/audit?{bad}", headers=OPERATOR)
        assert await error_of(resp) == (400, "invalid_query"), bad


async def test_plans_are_listed_for_any_caller(client: TestClient):
    tenant = await create_tenant(client)
    resp = await client.get("/api/v1/plans", headers=bearer(tenant.token("p", room_join=True)))
    assert [p["id"] for p in (await resp.json())["plans"]] == ["free", "starter", "pro", "enterprise"]
