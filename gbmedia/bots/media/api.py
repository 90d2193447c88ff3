"""REST routes of media bots under a room: start, list, stop.

``POST /api/v1/rooms/{room_id}/media_bots`` starts a bot that shows a clock, a slide
or a chart, or publishes a participant's video through a filter;
``GET`` lists the room's bots; ``DELETE .../media_bots/{bot}`` makes one leave.

Who reaches what: the room's moderators, as for removing a participant:
``instance_admin`` (or the operator), or ``room_admin`` for that room (a meeting's
host) and no other. Another instance's room answers 404 ``room_not_found`` like a
missing one. Bots run on the room's node: the request goes there first. Starting
and stopping write the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.bots.media.bot import MediaBot
from gbmedia.bots.media.service import BotSpec, MediaBots
from gbmedia.errors import ApiError
from gbmedia.http.responses import json_response, path_uuid, read_model
from gbmedia.rooms.placement import RoomRouter
from gbmedia.rooms.store import Room, Rooms
from gbmedia.tenancy import audit
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.models import Principal


class MediaBotStart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="Bot", min_length=1, max_length=64)
    show: Literal["clock", "slide", "chart"] = "clock"
    title: str = Field(default="", max_length=200)
    lines: list[str] = Field(default_factory=list, max_length=12)
    values: list[float] = Field(default_factory=list, max_length=50)
    participant: str | None = Field(default=None, min_length=1, max_length=200)
    filter: Literal["blur", "sharpen", "edges", "face_blur"] = "blur"
    audio: bool = True


@dataclass(frozen=True)
class MediaBotsApi:
    bots: MediaBots
    rooms: Rooms
    pool: asyncpg.Pool  # the audit log
    router: RoomRouter  # bots run on the room's node


MEDIA_BOTS_API: web.AppKey[MediaBotsApi] = web.AppKey("media_bots_api", MediaBotsApi)


async def _room(request: web.Request) -> tuple[Principal, Room, web.StreamResponse | None]:
    """The room in the path, its moderator, and the owner's answer when the room lives on another node."""
    api = request.app[MEDIA_BOTS_API]
    principal = principal_of(request)
    room = await api.rooms.get(None if principal.is_operator else principal.instance_id, path_uuid(request, "room_id"))
    principal.require_moderator(room.name)
    if room.status != "open":
        raise ApiError(409, "room_closed", "the room is closed")
    return principal, room, await api.router.forward(request, room)


async def _audit(request: web.Request, principal: Principal, room: Room, action: str, bot: MediaBot) -> None:
    details: dict[str, Any] = {"room_id": str(room.id), "participant_id": bot.participant.id}
    async with request.app[MEDIA_BOTS_API].pool.acquire() as conn:
        await audit.record(
            conn,
            principal.actor,
            action,
            "media_bot",
            bot.id,
            customer_id=room.customer_id,
            instance_id=room.instance_id,
            details=details,
        )


async def start_media_bot(request: web.Request) -> web.StreamResponse:
    principal, room, relayed = await _room(request)
    if relayed is not None:
        return relayed
    await require_feature(request.app[MEDIA_BOTS_API].pool, room.instance_id, "bots")
    body = await read_model(request, MediaBotStart)
    spec = BotSpec(
        name=body.name,
        show=body.show,
        title=body.title,
        lines=tuple(body.lines),
        values=tuple(body.values),
        participant=body.participant,
        filter=body.filter,
        audio=body.audio,
    )
    bot = await request.app[MEDIA_BOTS_API].bots.start(room, spec)
    await _audit(request, principal, room, "media_bot.start", bot)
    return json_response({"media_bot": bot.to_json()}, status=201)


async def list_media_bots(request: web.Request) -> web.StreamResponse:
    _, room, relayed = await _room(request)
    if relayed is not None:
        return relayed
    bots = request.app[MEDIA_BOTS_API].bots.in_room(room.id)
    return json_response({"media_bots": [b.to_json() for b in bots]})


async def stop_media_bot(request: web.Request) -> web.StreamResponse:
    principal, room, relayed = await _room(request)
    if relayed is not None:
        return relayed
    bot = await request.app[MEDIA_BOTS_API].bots.stop(room.id, request.match_info["bot"])
    await _audit(request, principal, room, "media_bot.stop", bot)
    return json_response({"media_bot": bot.to_json()})


def register(app: web.Application, api: MediaBotsApi) -> None:
    app[MEDIA_BOTS_API] = api
    app.router.add_post("/api/v1/rooms/{room_id}/media_bots", start_media_bot)
    app.router.add_get("/api/v1/rooms/{room_id}/media_bots", list_media_bots)
    app.router.add_delete("/api/v1/rooms/{room_id}/media_bots/{bot}", stop_media_bot)
