"""REST routes of an instance's providers (``/api/v1/bots/providers``): the outside services its keywords use.

``PUT /api/v1/bots/providers/{service}`` sets the provider of a service (its kind, plain
settings, and a secret stored encrypted and never shown again), ``GET
/api/v1/bots/providers`` lists them (without secrets) and the services there are,
``DELETE .../{service}`` removes one. Instance administrators only; the operator names
the ``instance_id``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.bots.api import _instance
from gbmedia.bots.providers import KINDS, SERVICES
from gbmedia.errors import ApiError, bad_request, not_found
from gbmedia.http.responses import json_response, read_model
from gbmedia.tenancy.secrets import SecretBox

_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,255}$")


class ProviderPut(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["smtp", "webhook", "tesseract"]
    settings: dict[str, Any] = Field(default_factory=dict)
    secret: str | None = Field(default=None, min_length=1, max_length=4096)


def check_settings(service: str, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a kind needs, checked; 400 ``provider_settings_invalid`` naming the setting at fault."""

    def invalid(name: str, why: str) -> ApiError:
        return bad_request("provider_settings_invalid", f"settings.{name} {why}", setting=name)

    if kind == "smtp":
        allowed = {"host", "port", "sender", "starttls", "username"}
        host, sender = settings.get("host"), settings.get("sender")
        if not isinstance(host, str) or not _HOST.match(host):
            raise invalid("host", "must be the SMTP server's host name or address")
        port = settings.get("port", 587)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise invalid("port", "must be a port number")
        if not isinstance(sender, str) or not _EMAIL.match(sender):
            raise invalid("sender", "must be the e-mail address mails are sent from")
        if not isinstance(settings.get("starttls", False), bool):
            raise invalid("starttls", "must be true or false")
        if not isinstance(settings.get("username", ""), str):
            raise invalid("username", "must be text")
    elif kind == "webhook":
        allowed = {"url"}
        url = settings.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^\s]{1,2040}$", url):
            raise invalid("url", "must be an http(s) URL")
    else:
        allowed = set()
    for name in settings:
        if name not in allowed:
            raise invalid(name, f"is not a setting of a {kind} provider")
    return settings


class ProvidersApi:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox) -> None:
        self.pool = pool
        self.box = box

    async def put(self, request: web.Request) -> web.Response:
        instance_id = await _instance(request)
        service = request.match_info["service"]
        if service not in SERVICES:
            raise not_found("provider_service", service)
        body = await read_model(request, ProviderPut)
        if service not in KINDS[body.kind]:
            raise bad_request("provider_kind_invalid", f"a {body.kind} provider cannot serve {service}", kind=body.kind)
        settings = check_settings(service, body.kind, body.settings)
        secret = self.box.encrypt(body.secret) if body.secret is not None else None
        row = await self.pool.fetchrow(
            """INSERT INTO bot_providers (instance_id, service, kind, settings, secret_encrypted)
               VALUES ($1, $2, $3, $4::jsonb, $5)
               ON CONFLICT (instance_id, service) DO UPDATE SET kind = EXCLUDED.kind, settings = EXCLUDED.settings,
                      secret_encrypted = EXCLUDED.secret_encrypted, updated_at = now()
               RETURNING service, kind, settings, secret_encrypted IS NOT NULL AS has_secret, updated_at,
                         (xmax = 0) AS created""",
            instance_id,
            service,
            body.kind,
            settings,
            secret,
        )
        answer = {k: row[k] for k in ("service", "kind", "settings", "has_secret", "updated_at")}
        return json_response(answer, status=201 if row["created"] else 200)

    async def list(self, request: web.Request) -> web.Response:
        instance_id = await _instance(request)
        rows = await self.pool.fetch(
            """SELECT service, kind, settings, secret_encrypted IS NOT NULL AS has_secret, updated_at
                 FROM bot_providers WHERE instance_id = $1 ORDER BY service""",
            instance_id,
        )
        return json_response({"providers": [dict(r) for r in rows], "services": SERVICES})

    async def delete(self, request: web.Request) -> web.Response:
        instance_id = await _instance(request)
        service = request.match_info["service"]
        done = await self.pool.execute(
            "DELETE FROM bot_providers WHERE instance_id = $1 AND service = $2", instance_id, service
        )
        if done.endswith(" 0"):
            raise not_found("provider", service)
        return web.Response(status=204)


PROVIDERS: web.AppKey[ProvidersApi] = web.AppKey("bot_providers", ProvidersApi)


def register(app: web.Application, api: ProvidersApi) -> None:
    app[PROVIDERS] = api
    app.router.add_get("/api/v1/bots/providers", api.list)
    app.router.add_put("/api/v1/bots/providers/{service}", api.put)
    app.router.add_delete("/api/v1/bots/providers/{service}", api.delete)
