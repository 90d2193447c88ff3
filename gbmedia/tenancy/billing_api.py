"""REST routes of usage and billing: usage reports, invoices, subscription standing, the payment hook.

Who reaches what: the operator everything; an instance administrator its own
customer's usage, invoices and subscription, read-only (another customer's answer 404,
like missing ones). Generating an invoice is the operator's. The payment provider's
hook (``POST /billing/payment-events``) carries no bearer token: its proof is an
HMAC-SHA256 signature with ``GBMEDIA_BILLING_WEBHOOK_SECRET`` over ``timestamp.body``,
within a replay window, and each event id is applied once.
"""

from __future__ import annotations

import datetime as dt
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, cast

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import ApiError, bad_request, not_found, unauthorized
from gbmedia.http.responses import (
    json_response,
    parse_json_body,
    path_uuid,
    query_int,
    query_uuid,
    read_model,
    validate_body,
)
from gbmedia.tenancy import usage
from gbmedia.tenancy.api import reachable_customer_id, require_operator
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.billing import Billing, Invoice, invoice_html
from gbmedia.tenancy.webhook_events import signature

TIMESTAMP_HEADER = "X-Gbmedia-Billing-Timestamp"
SIGNATURE_HEADER = "X-Gbmedia-Billing-Signature"
REPLAY_WINDOW_SECONDS = 300
# The most buckets one usage query may ask for, per granularity.
MAX_SPAN = {"hour": dt.timedelta(days=31), "day": dt.timedelta(days=366), "period": dt.timedelta(days=3660)}


@dataclass(frozen=True)
class BillingApi:
    billing: Billing
    webhook_secret: str  # empty: the payment hook is turned off (503 billing_hook_disabled)


BILLING_API: web.AppKey[BillingApi] = web.AppKey("billing_api", BillingApi)


class InvoiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")


class PaymentEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1, max_length=200)
    type: Literal["subscription.updated", "invoice.paid"]
    customer_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    subscription: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["pending", "active", "past_due", "cancelled"] | None = None
    invoice_id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F-]{36}$")


def _billing(request: web.Request) -> Billing:
    return request.app[BILLING_API].billing


def _when(request: web.Request, name: str, default: dt.datetime) -> dt.datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request("invalid_query", f"{name} must be an ISO 8601 date or timestamp", param=name) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


async def _existing_customer(request: web.Request) -> uuid.UUID:
    customer_id = reachable_customer_id(request)
    if await _billing(request).pool.fetchval("SELECT 1 FROM customers WHERE id = $1", customer_id) is None:
        raise not_found("customer", customer_id)
    return customer_id


def _hour(value: dt.datetime, up: bool = False) -> dt.datetime:
    floor = value.replace(minute=0, second=0, microsecond=0)
    return floor + dt.timedelta(hours=1) if up and floor != value else floor


async def get_usage(request: web.Request) -> web.Response:
    customer_id = await _existing_customer(request)
    principal = principal_of(request)
    granularity = request.query.get("granularity", "day")
    if granularity not in ("hour", "day", "period"):
        raise bad_request("invalid_query", "granularity must be hour, day or period", param="granularity")
    now = dt.datetime.now(dt.UTC)
    start = _hour(_when(request, "from", usage.period_bounds(now)[0]))
    end = _hour(_when(request, "to", now), up=True)
    if end <= start:
        raise bad_request("invalid_query", "to must be after from", param="to")
    if end - start > MAX_SPAN[granularity]:
        raise bad_request(
            "invalid_query", f"at most {MAX_SPAN[granularity].days} days at {granularity} granularity", param="to"
        )
    instance_id = query_uuid(request, "instance_id")
    if not principal.is_operator:
        instance_id = principal.instance_id  # an instance admin sees its own instance's usage
    buckets = await usage.report(
        _billing(request).pool,
        customer_id,
        start,
        end,
        cast(usage.Granularity, granularity),
        instance_id,
    )
    return json_response(
        {
            "customer_id": customer_id,
            "instance_id": instance_id,
            "from": start,
            "to": end,
            "granularity": granularity,
            "buckets": [usage.bucket_json(b) for b in buckets],
        }
    )


async def list_invoices(request: web.Request) -> web.Response:
    customer_id = await _existing_customer(request)
    limit = query_int(request, "limit", 24, low=1, high=120)
    invoices = await _billing(request).list(customer_id, limit)
    return json_response({"invoices": [i.to_json() for i in invoices]})


async def create_invoice(request: web.Request) -> web.Response:
    require_operator(principal_of(request))
    customer_id = path_uuid(request, "customer_id")
    body = await read_model(request, InvoiceCreate)
    year, month = (int(x) for x in body.period.split("-"))
    invoice = await _billing(request).generate(customer_id, dt.datetime(year, month, 1, tzinfo=dt.UTC))
    return json_response(invoice.to_json(), status=201)


async def _reachable_invoice(request: web.Request) -> Invoice:
    principal = principal_of(request)
    invoice_id = path_uuid(request, "invoice_id")
    invoice = await _billing(request).get(invoice_id)
    if not principal.is_operator:
        if principal.customer_id != invoice.customer_id:
            raise not_found("invoice", invoice_id)
        principal.require_any("instance_admin")
    return invoice


async def get_invoice(request: web.Request) -> web.Response:
    return json_response((await _reachable_invoice(request)).to_json())


async def print_invoice(request: web.Request) -> web.Response:
    """The invoice as a printable HTML page (the dashboard opens it; a browser prints it)."""
    invoice = await _reachable_invoice(request)
    name = await _billing(request).pool.fetchval("SELECT name FROM customers WHERE id = $1", invoice.customer_id)
    return web.Response(text=invoice_html(invoice, name or ""), content_type="text/html", charset="utf-8")


async def get_subscription(request: web.Request) -> web.Response:
    customer_id = await _existing_customer(request)
    return json_response(await _billing(request).subscription(customer_id))


def verify_payment_signature(secret: str, headers: Any, body: bytes, now: float) -> None:
    """Refuse (401) a payment event whose signature is missing, wrong, or outside the replay window."""
    stamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not stamp or not given:
        raise unauthorized("signature_missing", f"send {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}")
    try:
        at = int(stamp)
    except ValueError:
        raise unauthorized("signature_invalid", f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    if abs(now - at) > REPLAY_WINDOW_SECONDS:
        raise unauthorized("signature_expired", f"the timestamp is more than {REPLAY_WINDOW_SECONDS} s from now")
    if not hmac.compare_digest(signature(secret, at, body), given):
        raise unauthorized("signature_invalid", "the signature does not match the body and timestamp")


async def payment_event(request: web.Request) -> web.Response:
    api = request.app[BILLING_API]
    if not api.webhook_secret:
        raise ApiError(503, "billing_hook_disabled", "set GBMEDIA_BILLING_WEBHOOK_SECRET to accept payment events")
    body = await request.read()
    verify_payment_signature(api.webhook_secret, request.headers, body, time.time())
    event = _validated(parse_json_body(body))
    result = await api.billing.apply_payment_event(event.id, event.model_dump(exclude_none=True))
    return json_response({"event_id": event.id, **result})


def _validated(data: dict[str, Any]) -> PaymentEvent:
    event = validate_body(data, PaymentEvent)
    for name in ("customer_id", "invoice_id"):
        value = getattr(event, name)
        try:
            _ = value is None or uuid.UUID(value)
        except ValueError:
            raise bad_request("validation_failed", f"{name} must be a UUID", problems=[{"field": name}]) from None
    if event.type == "subscription.updated" and (event.status is None or event.subscription is None):
        raise bad_request("payment_event_incomplete", "subscription.updated needs subscription and status")
    if event.type == "invoice.paid" and event.invoice_id is None:
        raise bad_request("payment_event_incomplete", "invoice.paid needs invoice_id")
    return event


def register(app: web.Application, api: BillingApi) -> None:
    app[BILLING_API] = api
    r = app.router
    r.add_get("/api/v1/customers/{customer_id}/usage", get_usage)
    r.add_get("/api/v1/customers/{customer_id}/invoices", list_invoices)
    r.add_post("/api/v1/customers/{customer_id}/invoices", create_invoice)
    r.add_get("/api/v1/customers/{customer_id}/subscription", get_subscription)
    r.add_get("/api/v1/invoices/{invoice_id}", get_invoice)
    r.add_get("/api/v1/invoices/{invoice_id}/print", print_invoice)
    r.add_post("/billing/payment-events", payment_event)
