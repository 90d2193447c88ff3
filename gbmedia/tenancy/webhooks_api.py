"""REST routes of an instance's webhooks: endpoints, a test event, deliveries and redelivery.

Who reaches them: the operator, and an instance administrator (``instance_admin``) of
that instance, as for its keys (:func:`gbmedia.tenancy.api.reachable_instance`); another
instance's endpoint answers 404 exactly like a missing one. docs/api.md, "Webhooks".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from pydantic import Field

from gbmedia.errors import bad_request
from gbmedia.http.responses import json_response, path_uuid, query_int, read_model
from gbmedia.tenancy.api import _Body, _changes, reachable_instance
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.webhook_events import EVENT_TYPES
from gbmedia.tenancy.webhooks import Webhooks

EventName = Literal[EVENT_TYPES]  # type: ignore[valid-type]  # the one list, in webhook_events
_URL = Field(min_length=1, max_length=2048)
_EVENTS = Field(min_length=1, max_length=11)


class WebhookCreate(_Body):
    url: str = _URL
    events: list[EventName] = _EVENTS
    description: str = Field(default="", max_length=200)
    enabled: bool = True


class WebhookUpdate(_Body):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventName] | None = Field(default=None, min_length=1, max_length=11)
    description: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None


@dataclass(frozen=True)
class WebhooksApi:
    webhooks: Webhooks
    wake: Callable[[], None]  # the node's dispatcher looks for due deliveries at once


WEBHOOKS_API: web.AppKey[WebhooksApi] = web.AppKey("webhooks_api", WebhooksApi)


def _api(request: web.Request) -> WebhooksApi:
    return request.app[WEBHOOKS_API]


def _delivery_id(request: web.Request) -> int:
    raw = request.match_info["delivery"]
    if not raw.isdigit() or len(raw) > 18:
        raise bad_request("invalid_id", f"delivery must be a positive integer, got {raw!r}")
    return int(raw)


async def list_webhooks(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    return json_response({"webhooks": await _api(request).webhooks.list(instance.id)})


async def create_webhook(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    body = await read_model(request, WebhookCreate)
    endpoint, secret = await _api(request).webhooks.create(
        principal_of(request).actor,
        instance.customer_id,
        instance.id,
        body.url,
        list(body.events),
        description=body.description,
        enabled=body.enabled,
    )
    return json_response({"webhook": endpoint, "secret": secret}, status=201)


async def get_webhook(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    return json_response(await _api(request).webhooks.get(instance.id, path_uuid(request, "webhook_id")))


async def update_webhook(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    webhook_id = path_uuid(request, "webhook_id")
    changes = _changes(await read_model(request, WebhookUpdate))
    updated = await _api(request).webhooks.update(
        principal_of(request).actor, instance.customer_id, instance.id, webhook_id, changes
    )
    _api(request).wake()  # enabled again: its pending deliveries go now
    return json_response(updated)


async def delete_webhook(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    webhook_id = path_uuid(request, "webhook_id")
    deleted = await _api(request).webhooks.delete(
        principal_of(request).actor, instance.customer_id, instance.id, webhook_id
    )
    return json_response(deleted)


async def send_test_event(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    webhook_id = path_uuid(request, "webhook_id")
    delivery = await _api(request).webhooks.send_test(
        principal_of(request).actor, instance.customer_id, instance.id, webhook_id
    )
    _api(request).wake()
    return json_response(delivery, status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    webhook_id = path_uuid(request, "webhook_id")
    limit = query_int(request, "limit", 50, low=1, high=500)
    before = request.query.get("before")
    before_id = query_int(request, "before", 0, low=1, high=2**62) if before is not None else None
    deliveries = await _api(request).webhooks.deliveries(
        instance.id, webhook_id, status=request.query.get("status"), before_id=before_id, limit=limit
    )
    return json_response({"deliveries": deliveries})


async def redeliver(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    webhook_id = path_uuid(request, "webhook_id")
    delivery = await _api(request).webhooks.redeliver(
        principal_of(request).actor, instance.customer_id, instance.id, webhook_id, _delivery_id(request)
    )
    _api(request).wake()
    return json_response(delivery, status=202)


def register(app: web.Application, api: WebhooksApi) -> None:
    app[WEBHOOKS_API] = api
    r = app.router
    base = "/api/v1/instances/{instance_id}/webhooks"
    r.add_get(base, list_webhooks)
    r.add_post(base, create_webhook)
    r.add_get(base + "/{webhook_id}", get_webhook)
    r.add_patch(base + "/{webhook_id}", update_webhook)
    r.add_delete(base + "/{webhook_id}", delete_webhook)
    r.add_post(base + "/{webhook_id}/test", send_test_event)
    r.add_get(base + "/{webhook_id}/deliveries", list_deliveries)
    r.add_post(base + "/{webhook_id}/deliveries/{delivery}/redeliver", redeliver)
