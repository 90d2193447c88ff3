"""REST routes of an instance's bot dialogs under ``/api/v1/bots`` (instance administrators only).

``PUT /api/v1/bots/dialogs/{name}`` stores a dialog after checking it (400
``bot_syntax_error`` with its line and column, 413 past the size limit);
``GET /api/v1/bots/dialogs`` lists them, ``GET .../{name}`` gives one with its source,
``DELETE .../{name}`` removes it and its schedule; ``GET /api/v1/bots/runs`` lists the
instance's runs (their dialog, state and last error). A bot answers in a conversation
once it is a member with the role ``bot`` (``POST /api/v1/conversations/{id}/members``).
The operator names the instance with ``instance_id``; another instance's dialog is
404 like a missing one.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.bots.dialogs import Dialog
from gbmedia.bots.service import Bots
from gbmedia.errors import ApiError, bad_request
from gbmedia.http.responses import json_response, query_int, query_uuid, read_model
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.gates import require_feature

BOTS: web.AppKey[Bots] = web.AppKey("bots", Bots)


class DialogPut(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = Field(max_length=1024 * 1024)


async def _instance(request: web.Request) -> uuid.UUID:
    """The instance the caller administers: its own, or the one the operator names."""
    principal = principal_of(request)
    principal.require_any("instance_admin")
    requested = query_uuid(request, "instance_id")
    if principal.is_operator:
        if requested is None:
            raise bad_request("instance_id_required", "the operator must name the instance_id")
        return (await request.app[BOTS].engine.runner.instances.get(requested)).id  # 404 for none
    if requested is not None and requested != principal.instance_id:
        raise ApiError(404, "instance_not_found", "no such instance")
    assert principal.instance_id is not None
    return principal.instance_id


def dialog_json(dialog: Dialog, source: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"name": dialog.name, "updated_at": dialog.updated_at, "schedule": dialog.schedule}
    if source:
        body["source"] = dialog.source
    return body


async def put_dialog(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    await require_feature(request.app[BOTS].dialogs.pool, instance_id, "bots")
    body = await read_model(request, DialogPut)
    dialog, created = await request.app[BOTS].dialogs.save(instance_id, request.match_info["name"], body.source)
    return json_response(dialog_json(dialog), status=201 if created else 200)


async def list_dialogs(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    return json_response({"dialogs": [dialog_json(d) for d in await request.app[BOTS].dialogs.list(instance_id)]})


async def get_dialog(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    dialog = await request.app[BOTS].dialogs.get(instance_id, request.match_info["name"])
    return json_response(dialog_json(dialog, source=True))


async def delete_dialog(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    await request.app[BOTS].dialogs.delete(instance_id, request.match_info["name"])
    return web.Response(status=204)


async def list_runs(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    limit = query_int(request, "limit", 100, low=1, high=1000)
    return json_response({"runs": await request.app[BOTS].engine.runs(instance_id, limit)})


def register(app: web.Application, bots: Bots) -> None:
    app[BOTS] = bots
    r = app.router
    r.add_get("/api/v1/bots/dialogs", list_dialogs)
    r.add_put("/api/v1/bots/dialogs/{name}", put_dialog)
    r.add_get("/api/v1/bots/dialogs/{name}", get_dialog)
    r.add_delete("/api/v1/bots/dialogs/{name}", delete_dialog)
    r.add_get("/api/v1/bots/runs", list_runs)
