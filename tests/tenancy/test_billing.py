"""Billing: invoice lines and totals from known usage, one invoice per customer and period
whichever node makes it, the printable view, subscription standing gating service, and
the payment provider's signed hook (forged, expired, replayed and valid events)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.tenancy import usage
from gbmedia.tenancy.billing import Billing, InvoiceCloser, Price, money, price_lines
from gbmedia.tenancy.billing_api import SIGNATURE_HEADER, TIMESTAMP_HEADER
from gbmedia.tenancy.usage import UsageEvent
from gbmedia.tenancy.webhook_events import signature
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.rtc import RtcClient

SECRET = "billing-test-secret-0123456789"
NOV = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_lines_and_totals_from_known_usage():
    prices = [
        Price("bytes_out", "GB", Decimal(10**9), Decimal(100), Decimal("5")),
        Price("publish_minutes", "minute", Decimal(1), Decimal(10_000), Decimal("0.4")),
        Price("messages", "message", Decimal(1), Decimal(100_000), Decimal("0.01")),
    ]
    totals = {
        "publish_minutes": Decimal("10250.5"),  # 250.5 beyond: 100.2 cents -> 100
        "bytes_out": Decimal(150 * 10**9 + 5 * 10**8),  # 150.5 GB: 50.5 beyond at 5 cents: 252.5 -> 253
        "messages": Decimal(99_000),  # within what is included
    }
    lines = price_lines("Starter", 2900, prices, totals)
    assert [(line.kind, line.quantity, line.billable, line.amount_cents) for line in lines] == [
        ("subscription", 1, 1, 2900),
        ("publish_minutes", Decimal("10250.5"), Decimal("250.5"), 100),
        ("messages", 99_000, 0, 0),
        ("bytes_out", Decimal("150.5"), Decimal("50.5"), 253),
    ]
    assert sum(line.amount_cents for line in lines) == 3253
    assert money(3253, "USD") == "32.53 USD" and money(123456789, "USD") == "1,234,567.89 USD"


async def _starter(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    cid = await pool.fetchval(
        """INSERT INTO customers (name, subscription_tier, max_instances, created_at)
           VALUES ('Acme <b>&', 'starter', 3, $1) RETURNING id""",
        NOV - dt.timedelta(days=30),
    )
    iid = await pool.fetchval(
        "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, 'i', 0, 'r') RETURNING id", cid
    )
    return cid, iid


async def test_invoices_are_drafts_while_the_period_runs_then_issued_once(pool: asyncpg.Pool):
    cid, iid = await _starter(pool)
    at = NOV + dt.timedelta(days=3)
    await usage.record(
        pool,
        [
            UsageEvent(cid, iid, "publish_minutes", Decimal(10_100), "a", at),
            UsageEvent(cid, iid, "recording_minutes", Decimal("600.25"), "b", at),
            UsageEvent(cid, iid, "messages", Decimal(5), "c", at),
        ],
    )
    billing = Billing(pool)
    draft = await billing.generate(cid, at, now=NOV + dt.timedelta(days=10))
    assert (draft.status, draft.issued_at, draft.number) == ("draft", None, f"INV-202611-{cid.hex[:10].upper()}")
    by_kind = {line.kind: line for line in draft.lines}
    assert by_kind["publish_minutes"].billable == 100 and by_kind["publish_minutes"].amount_cents == 40
    assert by_kind["recording_minutes"].billable == Decimal("0.25") and by_kind["recording_minutes"].amount_cents == 0
    assert draft.total_cents == 2900 + 40
    # more usage, regenerated on demand: the same draft, new lines
    await usage.record(pool, [UsageEvent(cid, iid, "publish_minutes", Decimal(1000), "d", at)])
    again = await billing.generate(cid, at, now=NOV + dt.timedelta(days=11))
    assert again.id == draft.id and again.total_cents == 2900 + 440
    # two nodes close the period at once: one invoice, issued once
    after = NOV + dt.timedelta(days=31)
    closers = [InvoiceCloser(Billing(pool), 3600), InvoiceCloser(Billing(pool), 3600)]
    await asyncio.gather(*(c.run_once(after) for c in closers))
    rows = await pool.fetch("SELECT id, status, total_cents FROM invoices WHERE customer_id = $1", cid)
    assert [(r["id"], r["status"], r["total_cents"]) for r in rows] == [(draft.id, "open", 3340)]
    await usage.record(pool, [UsageEvent(cid, iid, "publish_minutes", Decimal(1000), "late", at)])
    frozen = await billing.generate(cid, at, now=after)
    assert frozen.total_cents == 3340 and frozen.status == "open" and frozen.issued_at is not None
    assert await closers[0].run_once(after) == 0
    assert [i.id for i in await billing.list(cid, 10)] == [draft.id]


async def _signed(client: TestClient, body: dict[str, Any], *, secret: str = SECRET, at: int | None = None) -> Any:
    raw = json.dumps(body).encode()
    stamp = int(time.time()) if at is None else at
    headers = {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: signature(secret, stamp, raw)}
    return await client.post("/billing/payment-events", data=raw, headers=headers)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, billing_webhook_secret=SECRET)


async def _error(resp: Any, status: int) -> str:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]["code"]


async def test_usage_invoices_and_standing_over_rest(client: TestClient):
    tenant = await create_tenant(client, "billed", "starter")
    other = await create_tenant(client, "other", "starter")
    cid = tenant.customer_id
    url = f"/api/v1/customers/{cid}"
    participant = bearer(tenant.token("pat", room_join=True, room="r1"))

    # usage: the operator and the customer's own admin; bad parameters name themselves
    resp = await client.get(f"{url}/usage", headers=tenant.admin, params={"granularity": "hour"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["granularity"] == "hour" and body["buckets"] == [] and body["instance_id"] == tenant.instance_id
    for params, param in (
        ({"granularity": "week"}, "granularity"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "to"),
        ({"from": "2026-01-01", "to": "2026-12-01", "granularity": "hour"}, "to"),
        ({"instance_id": "nope"}, None),
    ):
        resp = await client.get(f"{url}/usage", headers=OPERATOR, params=params)
        assert await _error(resp, 400) == "invalid_query"
        if param:
            assert (await resp.json())["error"]["details"]["param"] == param
    assert await _error(await client.get(f"{url}/usage", headers=other.admin), 404) == "customer_not_found"
    missing = f"/api/v1/customers/{uuid.uuid4()}"
    assert await _error(await client.get(f"{missing}/usage", headers=OPERATOR), 404) == "customer_not_found"
    assert await _error(await client.get(f"{url}/usage", headers=participant), 403) == "grant_missing"

    # invoices: generated on demand by the operator, read by the customer's admin
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    resp = await client.post(f"{url}/invoices", headers=OPERATOR, json={"period": period})
    assert resp.status == 201, await resp.text()
    invoice = await resp.json()
    assert (
        invoice["status"] == "draft" and invoice["total_cents"] == 2900 and invoice["lines"][0]["amount_cents"] == 2900
    )
    assert [line["kind"] for line in invoice["lines"]][1:] == list(usage.KINDS)
    for bad in ({"period": "2026-13"}, {}, {"period": "2026-11", "x": 1}):
        assert await _error(await client.post(f"{url}/invoices", headers=OPERATOR, json=bad), 400) in (
            "validation_failed",
            "unknown_field",
        )
    resp = await client.post(f"{url}/invoices", headers=OPERATOR, json={"period": "2999-01"})
    assert await _error(resp, 400) == "period_in_future"
    resp = await client.post(f"{url}/invoices", headers=tenant.admin, json={"period": period})
    assert await _error(resp, 403) == "operator_required"
    resp = await client.post(f"{missing}/invoices", headers=OPERATOR, json={"period": period})
    assert await _error(resp, 404) == "customer_not_found"
    listed = await (await client.get(f"{url}/invoices", headers=tenant.admin)).json()
    assert [i["id"] for i in listed["invoices"]] == [invoice["id"]]
    resp = await client.get(f"/api/v1/invoices/{invoice['id']}", headers=tenant.admin)
    assert (await resp.json())["number"] == invoice["number"]
    resp = await client.get(f"/api/v1/invoices/{invoice['id']}/print", headers=tenant.admin)
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert invoice["number"] in page and "29.00 USD" in page and "<script" not in page
    for headers in (other.admin, OPERATOR):
        resp = await client.get(
            f"/api/v1/invoices/{uuid.uuid4() if headers is OPERATOR else invoice['id']}", headers=headers
        )
        assert await _error(resp, 404) == "invoice_not_found"
    resp = await client.get(f"/api/v1/invoices/{invoice['id']}/print", headers=other.admin)
    assert await _error(resp, 404) == "invoice_not_found"
    assert await _error(await client.get("/api/v1/invoices/nope", headers=OPERATOR), 400) == "invalid_id"

    # standing: the provider's events move the subscription they name
    sub = await (await client.get(f"{url}/subscription", headers=tenant.admin)).json()
    assert (sub["subscription"]["status"], sub["in_good_standing"]) == ("active", True)  # made with the customer
    event = {
        "id": "evt_1",
        "type": "subscription.updated",
        "customer_id": cid,
        "subscription": "sub_9",
        "status": "past_due",
    }
    assert await _error(await client.post("/billing/payment-events", json=event), 401) == "signature_missing"
    assert await _error(await _signed(client, event, secret="forged-secret-0123456789"), 401) == "signature_invalid"
    assert await _error(await _signed(client, event, at=int(time.time()) - 600), 401) == "signature_expired"
    raw = json.dumps(event).encode()
    bad_stamp = {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "v1=00"}
    resp = await client.post("/billing/payment-events", data=raw, headers=bad_stamp)
    assert await _error(resp, 401) == "signature_invalid"
    resp = await _signed(client, event)
    assert resp.status == 200 and (await resp.json())["applied"] is True
    replay = await _signed(client, event)
    assert (await replay.json()) == {"event_id": "evt_1", "applied": False, "duplicate": True}
    sub = await (await client.get(f"{url}/subscription", headers=OPERATOR)).json()
    assert sub["subscription"]["status"] == "past_due" and sub["in_good_standing"] is False

    # past due: participant tokens and new rooms are refused; the admin still reads its invoices
    assert await _error(await client.get("/api/v1/whoami", headers=participant), 403) == "subscription_past_due"
    socket = RtcClient(await client.ws_connect("/rtc"))
    try:
        reply = await socket.join(participant["Authorization"].removeprefix("Bearer "))
    finally:
        await socket.close()
    assert (reply["type"], reply["code"]) == ("error", "subscription_past_due")
    resp = await client.post("/api/v1/rooms", headers=tenant.admin, json={"name": "r2"})
    assert await _error(resp, 403) == "subscription_past_due"
    assert (await client.get(f"{url}/invoices", headers=tenant.admin)).status == 200

    # paid again: active (a participant joins); then cancelled, which is final and ends its session
    assert (await _signed(client, {**event, "id": "evt_2", "status": "active"})).status == 200
    socket = RtcClient(await client.ws_connect("/rtc"))
    try:
        assert (await socket.join(participant["Authorization"].removeprefix("Bearer ")))["type"] == "joined"
        assert (await _signed(client, {**event, "id": "evt_3", "status": "cancelled"})).status == 200
        removed = await socket.wait_event(lambda e: e["type"] == "removed")
        assert removed["reason"] == "subscription_cancelled"
    finally:
        await socket.close()
    assert await _error(await client.get("/api/v1/whoami", headers=participant), 403) == "subscription_cancelled"
    resp = await _signed(client, {**event, "id": "evt_4", "status": "active"})
    assert await _error(resp, 409) == "subscription_transition_invalid"
    resp = await _signed(client, {**event, "id": "evt_5", "subscription": "sub_10", "status": "pending"})
    assert resp.status == 200
    assert await _error(await client.get("/api/v1/whoami", headers=participant), 403) == "subscription_pending"
    resp = await _signed(client, {**event, "id": "evt_6", "subscription": "sub_10", "status": "active"})
    assert (await client.get("/api/v1/whoami", headers=participant)).status == 200

    # invoice.paid: only an open invoice; bad events
    paid = {"id": "evt_7", "type": "invoice.paid", "customer_id": cid, "invoice_id": invoice["id"]}
    assert await _error(await _signed(client, paid), 409) == "invoice_not_payable"  # still a draft
    assert await _error(await _signed(client, {**paid, "id": "evt_8", "invoice_id": None}), 400) == (
        "payment_event_incomplete"
    )
    incomplete = {"id": "evt_9", "type": "subscription.updated", "customer_id": cid}
    assert await _error(await _signed(client, incomplete), 400) == "payment_event_incomplete"
    assert await _error(await _signed(client, {**paid, "type": "refund"}), 400) == "validation_failed"
    not_uuid = {**event, "id": "evt_11", "customer_id": "-" * 36}
    assert await _error(await _signed(client, not_uuid), 400) == "validation_failed"
    unknown = {**event, "id": "evt_10", "customer_id": str(uuid.uuid4())}
    assert await _error(await _signed(client, unknown), 404) == "customer_not_found"


async def test_an_issued_invoice_is_paid_by_the_provider(client: TestClient, node: Any):
    tenant: Tenant = await create_tenant(client, "payer", "pro")
    last_month = (dt.datetime.now(dt.UTC).replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    resp = await client.post(
        f"/api/v1/customers/{tenant.customer_id}/invoices", headers=OPERATOR, json={"period": last_month}
    )
    invoice = await resp.json()
    assert invoice["status"] == "open" and invoice["total_cents"] == 19900
    paid = {"id": "evt_p", "type": "invoice.paid", "customer_id": tenant.customer_id, "invoice_id": invoice["id"]}
    resp = await _signed(client, paid)
    assert (await resp.json())["status"] == "paid"
    got = await (await client.get(f"/api/v1/invoices/{invoice['id']}", headers=OPERATOR)).json()
    assert got["status"] == "paid" and got["paid_at"]


async def test_the_hook_is_off_without_a_secret(tmp_path: Path, database_url: str):
    from aiohttp.test_utils import TestServer

    from gbmedia.app import create_app
    from gbmedia.node import Node

    started = await Node.start(make_settings(tmp_path, database_url))
    try:
        async with TestClient(TestServer(create_app(started))) as plain:
            resp = await plain.post("/billing/payment-events", json={})
            assert await _error(resp, 503) == "billing_hook_disabled"
    finally:
        await started.stop()


async def test_participant_minutes_are_refused_once_the_tier_quota_is_used(client: TestClient, node: Any):
    """Joins, WHIP and WHEP are refused with the quota's code once the month's participant minutes
    (receiving and viewing) reach the tier's quota; below it they go on."""
    from aiortc import RTCPeerConnection

    from gbmedia.tenancy.tokens import Grants, mint_token
    from tests.rtc import RtcClient, offer_from

    tenant = await create_tenant(client, "minutes", "starter")
    await node.db.pool.execute("UPDATE plans SET participant_minutes_per_month = 5 WHERE id = 'starter'")
    resp = await client.get(f"/api/v1/customers/{tenant.customer_id}", headers=OPERATOR)
    assert (await resp.json())["quotas"]["participant_minutes_per_month"] == 5
    host = mint_token(tenant.key, tenant.secret, "host", Grants.participant("show"))
    cid, iid = uuid.UUID(tenant.customer_id), uuid.UUID(tenant.instance_id)
    now = dt.datetime.now(dt.UTC)
    await usage.record(node.db.pool, [UsageEvent(cid, iid, "subscribe_minutes", Decimal("4.5"), "q1", now)])
    socket = RtcClient(await client.ws_connect("/rtc"))
    try:
        assert (await socket.join(host, kind="live"))["type"] == "joined"  # 4.5 of 5 used
    finally:
        await socket.close()
    await usage.record(node.db.pool, [UsageEvent(cid, iid, "viewer_minutes", Decimal("0.5"), "q2", now)])
    socket = RtcClient(await client.ws_connect("/rtc"))
    try:
        reply = await socket.join(host, kind="live")
    finally:
        await socket.close()
    code = "quota_participant_minutes_per_month_exceeded"
    assert (reply["type"], reply["code"], reply["details"]) == (
        "error",
        code,
        {"quota": "participant_minutes_per_month", "limit": 5, "used": 5},
    )
    player = RTCPeerConnection()
    try:
        player.addTransceiver("video", direction="recvonly")
        offer = (await offer_from(player)).encode()
        headers = {**bearer(host), "Content-Type": "application/sdp"}
        for path in ("/whip/show", "/whep/show"):
            assert await _error(await client.post(path, data=offer, headers=headers), 403) == code
    finally:
        await player.close()
