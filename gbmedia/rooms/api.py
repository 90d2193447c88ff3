"""REST routes of the Room API under ``/api/v1/rooms``: create, list, get, close,
and the participants of a live room: list, remove, mute a track, media quality stats.

Who reaches what: an instance caller reaches only its own instance's rooms, and
another instance's room answers 404 ``room_not_found`` exactly like a missing one.
Creating and listing need the ``room_create`` or ``instance_admin`` grant. Reading a
room and its participants needs those or being its moderator; closing, removing
participants and muting their tracks need moderating the room: ``instance_admin``, or
``room_admin`` for that room (``grants.room``), which is what a meeting's host
carries in a join link and reaches no other room.
Participants live on the node that holds the room; this node answers for its own.
The operator reaches every room and names the instance a new room belongs to
(``instance_id`` in the body); an instance caller may leave ``instance_id`` out, and if it sends one it must be its own.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, cast

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import ApiError, bad_request
from gbmedia.http.responses import json_response, path_uuid, query_int, query_uuid, read_model
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.placement import RoomRouter
from gbmedia.rooms.quality import QualityMonitor
from gbmedia.rooms.store import (
    DEFAULT_EMPTY_TIMEOUT,
    MAX_EMPTY_TIMEOUT,
    MIN_EMPTY_TIMEOUT,
    ROOM_NAME_MAX_LENGTH,
    ROOM_NAME_PATTERN,
    Room,
    Rooms,
    StatusFilter,
)
from gbmedia.tenancy import audit
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Principal

_STATUS_FILTERS = ("open", "closed", "all")


class RoomCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=ROOM_NAME_MAX_LENGTH, pattern=ROOM_NAME_PATTERN)
    kind: Literal["meeting", "live"] = "meeting"
    max_participants: int | None = Field(default=None, ge=1)
    empty_timeout: int = Field(default=DEFAULT_EMPTY_TIMEOUT, ge=MIN_EMPTY_TIMEOUT, le=MAX_EMPTY_TIMEOUT)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # A UUID string; strict mode would accept only uuid.UUID objects.
    instance_id: uuid.UUID | None = Field(default=None, strict=False)


class TrackMute(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    muted: bool


@dataclass(frozen=True)
class RoomsApi:
    """What the Room API serves: the rooms, their live state on this node, media quality."""

    rooms: Rooms
    live_rooms: LiveRooms
    instances: Instances
    quality: QualityMonitor
    pool: asyncpg.Pool  # the audit log
    router: RoomRouter  # a room's live state is on its node: requests for it go there


ROOMS_API: web.AppKey[RoomsApi] = web.AppKey("rooms_api", RoomsApi)


def _rooms(request: web.Request) -> Rooms:
    return request.app[ROOMS_API].rooms


def _require_reader(principal: Principal, room: Room) -> None:
    """Reading a room: whoever may list rooms, or the room's moderator."""
    if not principal.moderates(room.name):
        principal.require_any("room_create", "instance_admin")


def _scope(principal: Principal, requested: uuid.UUID | None) -> uuid.UUID | None:
    """The instance whose rooms the caller acts on: its own, or the operator's choice.

    An instance caller naming another instance gets 404, like a missing instance
    (without echoing the id).
    """
    if principal.is_operator:
        return requested
    if requested is not None and requested != principal.instance_id:
        raise ApiError(404, "instance_not_found", "no such instance")
    return principal.instance_id


# --- handlers ---------------------------------------------------------------------


async def create_room(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_any("room_create", "instance_admin")
    body = await read_model(request, RoomCreate)
    instance_id = _scope(principal, body.instance_id)
    if instance_id is None:
        raise bad_request("instance_id_required", "the operator must name the room's instance_id")
    room = await _rooms(request).create(
        principal.actor,
        instance_id,
        body.name,
        kind=body.kind,
        max_participants=body.max_participants,
        empty_timeout=body.empty_timeout,
        metadata=body.metadata,
    )
    instance = await request.app[ROOMS_API].instances.get(instance_id)
    node_id = await request.app[ROOMS_API].router.place(room, instance.region)
    return json_response(replace(room, node_id=node_id), status=201)


async def list_rooms(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_any("room_create", "instance_admin")
    status = request.query.get("status", "open")
    if status not in _STATUS_FILTERS:
        raise bad_request("invalid_query", f"status must be one of {', '.join(_STATUS_FILTERS)}")
    limit = query_int(request, "limit", 100, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    instance_id = _scope(principal, query_uuid(request, "instance_id"))
    if principal.is_operator and instance_id is not None:
        await request.app[ROOMS_API].instances.get(instance_id)  # 404 for an unknown one
    rooms = await _rooms(request).list(instance_id, cast(StatusFilter, status), limit=limit, offset=offset)
    return json_response({"rooms": rooms})


def _participants(request: web.Request, room: Room) -> list[dict[str, Any]]:
    live = request.app[ROOMS_API].live_rooms.live.get(room.id)
    return [p.to_admin_json() for p in live.participants.values()] if live else []


async def get_room(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    room_id = path_uuid(request, "room_id")
    room = await _rooms(request).get(_scope(principal, None), room_id)
    _require_reader(principal, room)
    if (relayed := await _on_owner(request, room)) is not None:
        return relayed
    participants = _participants(request, room)
    return json_response({**asdict(room), "num_participants": len(participants), "participants": participants})


async def list_participants(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    room = await _rooms(request).get(_scope(principal, None), path_uuid(request, "room_id"))
    _require_reader(principal, room)
    if (relayed := await _on_owner(request, room)) is not None:
        return relayed
    return json_response({"participants": _participants(request, room)})


async def _on_owner(request: web.Request, room: Room) -> web.StreamResponse | None:
    """The owner's answer when an open room lives on another node; None when it is here (or closed)."""
    if room.status != "open":
        return None
    return await request.app[ROOMS_API].router.forward(request, room)


class _Relayed(Exception):
    """The request was answered by the room's node: its response is the answer."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


async def _live_room(request: web.Request) -> tuple[Principal, Room, LiveRoom]:
    """The open room in the path with its live state; 404 ``participant_not_found`` when nobody is in it."""
    principal = principal_of(request)
    room = await _rooms(request).get(_scope(principal, None), path_uuid(request, "room_id"))
    principal.require_moderator(room.name)
    if (relayed := await _on_owner(request, room)) is not None:
        raise _Relayed(relayed)
    live = request.app[ROOMS_API].live_rooms.live.get(room.id)
    if live is None or room.status != "open":
        raise ApiError(404, "participant_not_found", f"no participant {request.match_info['participant']} in the room")
    return principal, room, live


async def _audit(
    request: web.Request, principal: Principal, room: Room, action: str, target: str, details: dict[str, Any]
) -> None:
    async with request.app[ROOMS_API].pool.acquire() as conn:
        await audit.record(
            conn,
            principal.actor,
            action,
            "participant",
            target,
            customer_id=room.customer_id,
            instance_id=room.instance_id,
            details={"room_id": str(room.id), **details},
        )


async def remove_participant(request: web.Request) -> web.StreamResponse:
    try:
        principal, room, live = await _live_room(request)
    except _Relayed as relayed:
        return relayed.response
    removed = await live.remove(request.match_info["participant"])
    await _audit(request, principal, room, "participant.remove", removed.id, {"identity": removed.identity})
    return json_response({"removed": removed.to_json()})


async def mute_track(request: web.Request) -> web.StreamResponse:
    try:
        principal, room, live = await _live_room(request)
    except _Relayed as relayed:
        return relayed.response
    body = await read_model(request, TrackMute)
    track_id = request.match_info["track"]
    participant = live.find(request.match_info["participant"])
    track = await live.admin_mute(participant.id, track_id, body.muted)
    await _audit(
        request, principal, room, "participant.mute_track", participant.id, {"track_id": track.id, "muted": body.muted}
    )
    return json_response(
        {
            "participant_id": participant.id,
            "track": {
                "id": track.id,
                "kind": track.kind,
                "source": track.source,
                "name": track.name,
                "muted": track.muted,
            },
        }
    )


async def participant_stats(request: web.Request) -> web.StreamResponse:
    """Media quality of one participant: its published tracks as the SFU receives them, and
    each track it subscribes to as the SFU sends it (see :mod:`gbmedia.rooms.quality`)."""
    principal = principal_of(request)
    room = await _rooms(request).get(_scope(principal, None), path_uuid(request, "room_id"))
    _require_reader(principal, room)
    if (relayed := await _on_owner(request, room)) is not None:
        return relayed
    api = request.app[ROOMS_API]
    live = api.live_rooms.live.get(room.id)
    if live is None or room.status != "open":
        raise ApiError(404, "participant_not_found", f"no participant {request.match_info['participant']} in the room")
    participant = live.find(request.match_info["participant"])
    stats = await api.quality.stats_for(live, participant)
    return json_response(
        {**stats.to_json(), "interval_seconds": api.quality.interval, "connections": participant.connections_json()}
    )


async def close_room(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    room_id = path_uuid(request, "room_id")
    rooms = _rooms(request)
    room = await rooms.get(_scope(principal, None), room_id)
    principal.require_moderator(room.name)
    if (relayed := await _on_owner(request, room)) is not None:  # the owner closes it and ends its live state
        return relayed
    return json_response(await rooms.close(principal.actor, room))


def register(app: web.Application, api: RoomsApi) -> None:
    app[ROOMS_API] = api
    r = app.router
    r.add_post("/api/v1/rooms", create_room)
    r.add_get("/api/v1/rooms", list_rooms)
    r.add_get("/api/v1/rooms/{room_id}", get_room)
    r.add_delete("/api/v1/rooms/{room_id}", close_room)
    r.add_get("/api/v1/rooms/{room_id}/participants", list_participants)
    r.add_delete("/api/v1/rooms/{room_id}/participants/{participant}", remove_participant)
    r.add_post("/api/v1/rooms/{room_id}/participants/{participant}/tracks/{track}/mute", mute_track)
    r.add_get("/api/v1/rooms/{room_id}/participants/{participant}/stats", participant_stats)
