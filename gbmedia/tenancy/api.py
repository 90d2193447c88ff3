"""REST routes of the tenancy domain under ``/api/v1``.

Who reaches what: the operator reaches everything; an instance administrator (a
token signed with one of its API keys and carrying ``instance_admin``) reaches its
own instance, read-only its own customer, and nothing else. A room's moderator
(``room_admin``) administers nothing here: it moderates its room (rooms/api.py). Another tenant's resources
answer exactly like missing ones (404), so ids cannot be probed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import ApiError, bad_request, forbidden, not_found
from gbmedia.http.responses import json_response, path_uuid, query_int, query_uuid, read_model
from gbmedia.tenancy import audit
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.links import join_link
from gbmedia.tenancy.models import Instance, Principal
from gbmedia.tenancy.service import Tenancy
from gbmedia.tenancy.tokens import Grants

_NAME = Field(min_length=1, max_length=200)
_REGION = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
_LOCALE = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CustomerCreate(_Body):
    name: str = _NAME
    tier: str = "free"
    max_instances: int | None = Field(default=None, ge=0, le=100_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class CustomerUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "suspended", "closed"] | None = None
    subscription_tier: str | None = None
    max_instances: int | None = Field(default=None, ge=0, le=100_000)
    metadata: dict[str, Any] | None = None


class InstanceCreate(_Body):
    name: str = _NAME
    region: str | None = _REGION
    locale: str | None = _LOCALE
    features: dict[str, bool] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


class InstanceUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "suspended"] | None = None
    region: str | None = _REGION
    locale: str | None = _LOCALE
    features: dict[str, bool] | None = None
    config: dict[str, Any] | None = None


# An instance may tune itself; only the operator moves or suspends it.
_OPERATOR_ONLY_INSTANCE_FIELDS = {"status", "region"}


class KeyCreate(_Body):
    description: str = Field(default="", max_length=200)


class TokenCreate(_Body):
    identity: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")  # no control characters
    name: str | None = Field(default=None, max_length=200)
    room: str | None = Field(default=None, min_length=1, max_length=200)
    grants: dict[str, bool] | None = None
    ttl_seconds: int | None = Field(default=None, ge=60, le=30 * 86400)


@dataclass(frozen=True)
class TenancyApi:
    """What the tenancy routes serve: the tenancy service, the pool (audit log), token defaults."""

    tenancy: Tenancy
    pool: asyncpg.Pool
    token_ttl_seconds: int
    link_base: Callable[[int], str]  # the node's base URL for join links, given the port a request came in on


TENANCY_API: web.AppKey[TenancyApi] = web.AppKey("tenancy_api", TenancyApi)


def _tenancy(request: web.Request) -> Tenancy:
    return request.app[TENANCY_API].tenancy


def _changes(body: BaseModel) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    nulls = [k for k, v in changes.items() if v is None]
    if nulls:
        raise bad_request("null_field", f"fields cannot be set to null: {nulls}")
    return changes


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise forbidden("operator_required", "only the operator may do this")


def _require_admin(principal: Principal) -> None:
    principal.require_any("instance_admin")


async def reachable_instance(request: web.Request) -> Instance:
    """The instance in the path, if the caller may reach it (else 404/403)."""
    principal = principal_of(request)
    instance_id = path_uuid(request, "instance_id")
    if not principal.is_operator:
        if principal.instance_id != instance_id:
            raise not_found("instance", instance_id)
        _require_admin(principal)
    return await _tenancy(request).instances.get(instance_id)


def reachable_customer_id(request: web.Request) -> uuid.UUID:
    principal = principal_of(request)
    customer_id = path_uuid(request, "customer_id")
    if not principal.is_operator:
        if principal.customer_id != customer_id:
            raise not_found("customer", customer_id)
        _require_admin(principal)
    return customer_id


# --- handlers ---------------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return json_response(
        {
            "kind": principal.kind,
            "actor": principal.actor.name,
            "customer_id": principal.customer_id,
            "instance_id": principal.instance_id,
            "identity": principal.identity,
            "grants": principal.grants.to_claim(),
        }
    )


async def list_plans(request: web.Request) -> web.Response:
    return json_response({"plans": await _tenancy(request).customers.plans()})


async def list_customers(request: web.Request) -> web.Response:
    require_operator(principal_of(request))
    limit = query_int(request, "limit", 100, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    return json_response({"customers": await _tenancy(request).customers.list(limit=limit, offset=offset)})


async def create_customer(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_operator(principal)
    body = await read_model(request, CustomerCreate)
    customer = await _tenancy(request).customers.create(
        principal.actor, body.name, body.tier, metadata=body.metadata, max_instances=body.max_instances
    )
    return json_response(customer, status=201)


async def get_customer(request: web.Request) -> web.Response:
    customer_id = reachable_customer_id(request)
    customers = _tenancy(request).customers
    customer = await customers.get(customer_id)
    return json_response(
        {
            "customer": customer,
            "quotas": await customers.quotas(customer),
            "usage": await customers.usage(customer_id),
        }
    )


async def update_customer(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_operator(principal)
    customer_id = path_uuid(request, "customer_id")
    changes = _changes(await read_model(request, CustomerUpdate))
    customer = await _tenancy(request).customers.update(principal.actor, customer_id, changes)
    return json_response(customer)


async def list_instances(request: web.Request) -> web.Response:
    customer_id = reachable_customer_id(request)
    principal = principal_of(request)
    await _tenancy(request).customers.get(customer_id)
    instances = await _tenancy(request).instances.list(customer_id)
    if not principal.is_operator:
        instances = [i for i in instances if i.id == principal.instance_id]
    return json_response({"instances": instances})


async def create_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_operator(principal)
    customer_id = path_uuid(request, "customer_id")
    body = await read_model(request, InstanceCreate)
    instance, credentials = await _tenancy(request).instances.create(
        principal.actor,
        customer_id,
        body.name,
        region=body.region,
        locale=body.locale or "en",
        features=body.features,
        config=body.config,
    )
    return json_response({"instance": instance, "credentials": credentials}, status=201)


async def get_instance(request: web.Request) -> web.Response:
    return json_response(await reachable_instance(request))


async def update_instance(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    principal = principal_of(request)
    changes = _changes(await read_model(request, InstanceUpdate))
    if not principal.is_operator and _OPERATOR_ONLY_INSTANCE_FIELDS & changes.keys():
        raise forbidden("operator_required", "only the operator may change an instance's status or region")
    if instance.status == "deleted":
        raise ApiError(409, "instance_deleted", "a deleted instance cannot be changed")
    updated = await _tenancy(request).instances.update(principal.actor, instance.id, changes)
    return json_response(updated)


async def delete_instance(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_operator(principal)
    instance_id = path_uuid(request, "instance_id")
    return json_response(await _tenancy(request).instances.delete(principal.actor, instance_id))


async def list_keys(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    return json_response({"keys": await _tenancy(request).instances.keys(instance.id)})


async def create_key(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    body = await read_model(request, KeyCreate)
    credentials = await _tenancy(request).instances.create_key(
        principal_of(request).actor, instance.id, body.description
    )
    return json_response(credentials, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    key = request.match_info["key"]
    revoked = await _tenancy(request).instances.revoke_key(principal_of(request).actor, instance.id, key)
    return json_response(revoked)


def grants_from_request(body: TokenCreate) -> Grants:
    if body.grants is None:
        return Grants.participant(body.room) if body.room else Grants()
    unknown = set(body.grants) - set(Grants.names())
    if unknown:
        raise bad_request("unknown_grant", f"unknown grants {sorted(unknown)}", grants=Grants.names())
    return Grants(room=body.room, **body.grants)


async def create_token(request: web.Request) -> web.Response:
    instance = await reachable_instance(request)
    body = await read_model(request, TokenCreate)
    grants = grants_from_request(body)
    api = request.app[TENANCY_API]
    ttl = body.ttl_seconds or api.token_ttl_seconds
    token = await _tenancy(request).instances.mint(instance.id, body.identity, grants, name=body.name, ttl_seconds=ttl)
    linkable = grants.room and grants.room_join and grants.link_refusal() is None
    url = join_link(api.link_base(_local_port(request)), token) if linkable else None
    return json_response(
        {
            "token": token,
            "identity": body.identity,
            "grants": grants.to_claim(),
            "expires_at": int(time.time()) + ttl,
            "url": url,
        },
        status=201,
    )


def _local_port(request: web.Request) -> int:
    """The port this request reached the node on (the node's, whatever ``Host`` the client sent)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if isinstance(sockname, tuple) else 0


async def list_audit(request: web.Request) -> web.Response:
    principal = principal_of(request)
    limit = query_int(request, "limit", 100, low=1, high=1000)
    before = request.query.get("before")
    before_id = query_int(request, "before", 0, low=1, high=2**62) if before is not None else None
    if principal.is_operator:
        customer_id = query_uuid(request, "customer_id")
        instance_id = query_uuid(request, "instance_id")
    else:
        _require_admin(principal)
        customer_id, instance_id = principal.customer_id, principal.instance_id
    entries = await audit.list_entries(
        request.app[TENANCY_API].pool,
        customer_id=customer_id,
        instance_id=instance_id,
        before_id=before_id,
        limit=limit,
    )
    return json_response({"entries": entries})


def register(app: web.Application, api: TenancyApi) -> None:
    app[TENANCY_API] = api
    r = app.router
    r.add_get("/api/v1/whoami", whoami)
    r.add_get("/api/v1/plans", list_plans)
    r.add_get("/api/v1/customers", list_customers)
    r.add_post("/api/v1/customers", create_customer)
    r.add_get("/api/v1/customers/{customer_id}", get_customer)
    r.add_patch("/api/v1/customers/{customer_id}", update_customer)
    r.add_get("/api/v1/customers/{customer_id}/instances", list_instances)
    r.add_post("/api/v1/customers/{customer_id}/instances", create_instance)
    r.add_get("/api/v1/instances/{instance_id}", get_instance)
    r.add_patch("/api/v1/instances/{instance_id}", update_instance)
    r.add_delete("/api/v1/instances/{instance_id}", delete_instance)
    r.add_get("/api/v1/instances/{instance_id}/keys", list_keys)
    r.add_post("/api/v1/instances/{instance_id}/keys", create_key)
    r.add_delete("/api/v1/instances/{instance_id}/keys/{key}", revoke_key)
    r.add_post("/api/v1/instances/{instance_id}/tokens", create_token)
    r.add_get("/api/v1/audit", list_audit)
