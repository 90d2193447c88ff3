"""REST routes of an instance's bot dialogs under ``/api/v1/bots`` (instance administrators only).

``PUT /api/v1/bots/dialogs/{name}`` stores a dialog after checking it (400
``bot_syntax_error`` with its line and column, 413 past the size limit);
``GET /api/v1/bots/dialogs`` lists them, ``GET .../{name}`` gives one with its source,
``DELETE .../{name}`` removes it and its schedule; ``GET /api/v1/bots/runs`` lists the
instance's runs (their dialog, state and last error) and ``DELETE /api/v1/bots/runs/{id}``
stops one. A bot answers in a conversation once it is a member with the role ``bot``:
``POST /api/v1/bots/conversations`` makes it one (a conversation, or a room's chat) and
can start a dialog there for a user, the bot speaking first.
The operator names the instance with ``instance_id``; another instance's dialog is
404 like a missing one.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.bots import shared_api
from gbmedia.bots.dialogs import Dialog
from gbmedia.bots.login import sign_in
from gbmedia.bots.service import Bots
from gbmedia.errors import ApiError, bad_request, not_found
from gbmedia.http.responses import json_response, query_int, query_uuid, read_model
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.gates import require_feature

BOTS: web.AppKey[Bots] = web.AppKey("bots", Bots)


class DialogPut(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = Field(max_length=1024 * 1024)


class BotJoin(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    conversation_id: uuid.UUID | None = Field(default=None, strict=False)
    room_id: uuid.UUID | None = Field(default=None, strict=False)
    bot: str = Field(default="gb", min_length=1, max_length=256)
    dialog: str | None = Field(default=None, min_length=1, max_length=100)
    user: str | None = Field(default=None, min_length=1, max_length=256)


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


async def join_conversation(request: web.Request) -> web.Response:
    """Make a bot a member of a conversation or a room's chat; with ``dialog`` and ``user``, start it for that user."""
    instance_id = await _instance(request)
    body = await read_model(request, BotJoin)
    if (body.conversation_id is None) == (body.room_id is None):
        raise bad_request("bot_target_required", "name exactly one of conversation_id and room_id")
    if (body.dialog is None) != (body.user is None):
        raise bad_request("bot_user_required", "a dialog is started for a user: name both dialog and user")
    if body.user == body.bot:
        raise bad_request("bot_user_required", "the user must be someone other than the bot")
    bots = request.app[BOTS]
    conversations = bots.engine.chat.conversations
    if body.room_id is not None:
        room = await bots.engine.pool.fetchrow(
            "SELECT id, name FROM rooms WHERE id = $1 AND instance_id = $2", body.room_id, instance_id
        )
        if room is None:
            raise not_found("room", body.room_id)
        conversation = await conversations.for_room(instance_id, room["id"], room["name"])
    else:
        assert body.conversation_id is not None
        conversation = await conversations.get(instance_id, body.conversation_id)  # 404 for another instance's
    if body.dialog is not None:
        await bots.dialogs.get(instance_id, body.dialog)  # 404 dialog_not_found before anyone joins
    member = await conversations.add_member(conversation, body.bot, "bot")
    if member.role != "bot":
        raise ApiError(409, "bot_identity_taken", f"{body.bot} is a member of this conversation, not as a bot")
    bots.engine.bot_joined(conversation.id)
    answer: dict[str, Any] = {"conversation_id": conversation.id, "bot": body.bot}
    if body.dialog is not None and body.user is not None:
        await conversations.add_member(conversation, body.user)
        answer["run"] = await bots.engine.start_run(conversation.id, body.user, body.dialog)
    return json_response(answer, status=201)


async def stop_run(request: web.Request) -> web.Response:
    instance_id = await _instance(request)
    try:
        run_id = uuid.UUID(request.match_info["run_id"])
    except ValueError:
        raise not_found("bot_run", request.match_info["run_id"]) from None
    run = await request.app[BOTS].engine.stop_run(instance_id, run_id)
    if run is None:
        raise not_found("bot_run", run_id)
    return json_response({"run": run})


class LoginPost(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    code: str = Field(min_length=4, max_length=32)


async def sign_in_route(request: web.Request) -> web.Response:
    """POST /api/v1/bots/login: the caller (any token of the instance naming a person) signs in with a
    code a bot gave in HEAR ... AS LOGIN; the run waiting there then gets the caller's identity."""
    principal = principal_of(request)
    if principal.is_operator or principal.instance_id is None or not principal.identity:
        raise ApiError(403, "identity_required", "signing in takes an access token of the instance naming a person")
    body = await read_model(request, LoginPost)
    done = await sign_in(request.app[BOTS].engine.pool, principal.instance_id, body.code, principal.identity)
    if done is None:
        raise ApiError(404, "login_code_not_found", "no such sign-in code: unknown, expired or used")
    return json_response({"signed_in": done})


def register(app: web.Application, bots: Bots) -> None:
    app[BOTS] = bots
    r = app.router
    r.add_get("/api/v1/bots/dialogs", list_dialogs)
    r.add_put("/api/v1/bots/dialogs/{name}", put_dialog)
    r.add_get("/api/v1/bots/dialogs/{name}", get_dialog)
    r.add_delete("/api/v1/bots/dialogs/{name}", delete_dialog)
    r.add_get("/api/v1/bots/runs", list_runs)
    r.add_delete("/api/v1/bots/runs/{run_id}", stop_run)
    r.add_post("/api/v1/bots/conversations", join_conversation)
    r.add_post("/api/v1/bots/login", sign_in_route)
    shared_api.register(app, bots)  # SHARE FOLDER's links
