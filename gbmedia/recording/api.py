"""REST routes of recordings: start and list under a room, read, stop, download.

Who reaches what: starting and stopping need the ``room_record``, ``room_admin`` or
``instance_admin`` grant; reading and downloading need one of those or
``room_create``. A token whose grants name a room (``grants.room``) reaches only
that room's recordings, unless it administers the instance (``room_admin`` always
names its room: a meeting's moderator records its meeting, no other). Another
instance's room or recording answers 404 exactly like a missing one. The operator
reaches all. Starting and stopping write the audit log (in
:mod:`gbmedia.recording.service`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import ApiError, outage_error
from gbmedia.http.responses import json_response, path_uuid, query_int, read_model
from gbmedia.recording.service import Recording, Recordings
from gbmedia.recording.storage import LocalStorage, StorageError
from gbmedia.rooms.placement import RoomRouter
from gbmedia.rooms.store import Room, Rooms
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.models import Principal

_WRITE = ("room_record", "room_admin", "instance_admin")
_READ = ("room_record", "room_admin", "instance_admin", "room_create")


class RecordingStart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kinds: list[Literal["tracks", "composite"]] = Field(default_factory=lambda: ["tracks"], min_length=1, max_length=2)


@dataclass(frozen=True)
class RecordingsApi:
    recordings: Recordings
    rooms: Rooms
    router: RoomRouter  # recorders run on the room's node: starting and stopping happen there


RECORDINGS_API: web.AppKey[RecordingsApi] = web.AppKey("recordings_api", RecordingsApi)


def _recordings(request: web.Request) -> Recordings:
    return request.app[RECORDINGS_API].recordings


def _check_room_grant(principal: Principal, room: Room) -> None:
    """A token limited to one room (``grants.room``) reaches no other room's recordings."""
    if not principal.is_instance_admin and principal.grants.room is not None and principal.grants.room != room.name:
        raise ApiError(
            403, "room_not_granted", "the token's grants are for another room", {"room": principal.grants.room}
        )


async def _room(request: web.Request, principal: Principal) -> Room:
    room = await request.app[RECORDINGS_API].rooms.get(
        None if principal.is_operator else principal.instance_id, path_uuid(request, "room_id")
    )
    _check_room_grant(principal, room)
    return room


async def _recording(request: web.Request, principal: Principal) -> Recording:
    recording = await _recordings(request).get(
        None if principal.is_operator else principal.instance_id, path_uuid(request, "recording_id")
    )
    if not principal.is_operator and principal.grants.room is not None:
        room = await request.app[RECORDINGS_API].rooms.get(recording.instance_id, recording.room_id)
        _check_room_grant(principal, room)
    return recording


async def _on_owner(request: web.Request, room: Room) -> web.StreamResponse | None:
    if room.status != "open":
        return None
    return await request.app[RECORDINGS_API].router.forward(request, room)


async def start_recording(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    principal.require_any(*_WRITE)
    room = await _room(request, principal)
    if (relayed := await _on_owner(request, room)) is not None:
        return relayed
    body = await read_model(request, RecordingStart)
    kinds = [k for k in ("tracks", "composite") if k in body.kinds]
    recording = await _recordings(request).start(principal.actor, room, kinds)
    return json_response(recording, status=201)


async def list_recordings(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_any(*_READ)
    room = await _room(request, principal)
    limit = query_int(request, "limit", 100, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    return json_response({"recordings": await _recordings(request).list_for_room(room.id, limit=limit, offset=offset)})


async def get_recording(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_any(*_READ)
    return json_response(await _recording(request, principal))


async def stop_recording(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    principal.require_any(*_WRITE)
    try:
        recording = await _recording(request, principal)
    except Exception as exc:
        if outage_error(exc) is None:
            raise
        return await _stop_without_database(request, principal, exc)
    room = await request.app[RECORDINGS_API].rooms.get(recording.instance_id, recording.room_id)
    if (relayed := await _on_owner(request, room)) is not None:
        return relayed
    stopped = await _recordings(request).stop(principal.actor, recording.id, instance_id=recording.instance_id)
    return json_response(stopped)


async def _stop_without_database(request: web.Request, principal: Principal, outage: Exception) -> web.Response:
    """The database is away, but a recording this node runs can still be stopped: from what the
    node knows of it (its room and instance), with the same checks. Its media stops at once and
    the answer is 503 ``database_unavailable`` saying so (Recordings.stop); its rows are finished
    when the database is back. Anything else (another node's recording, an unknown id) is the 503
    of the outage itself. Only a caller authenticated without the database reaches here: the
    operator (an access token's key is looked up in it)."""
    recordings = _recordings(request)
    recording_id = path_uuid(request, "recording_id")
    room = recordings.running_room(recording_id)
    if room is None or (not principal.is_operator and room.instance_id != principal.instance_id):
        raise outage
    _check_room_grant(principal, room)
    return json_response(await recordings.stop(principal.actor, recording_id, instance_id=room.instance_id))


async def download_file(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    principal.require_any(*_READ)
    recording = await _recording(request, principal)
    service = _recordings(request)
    found, key = await service.file(recording, request.match_info["file"])
    headers = {"Content-Disposition": f'attachment; filename="{found.name}"', "Cache-Control": "private, no-store"}
    storage = service.storage
    if isinstance(storage, LocalStorage):
        path = storage.path(key)
        if not path.is_file():
            raise ApiError(404, "recording_file_missing", f"{found.name} is no longer in storage")
        return web.FileResponse(path, headers={**headers, "Content-Type": found.content_type})
    try:
        size = await storage.size(key)
        chunks = storage.read(key)
        first = await anext(chunks, b"")
    except StorageError as exc:
        raise ApiError(502, "storage_unavailable", f"the recording store failed: {exc}") from None
    response = web.StreamResponse(headers={**headers, "Content-Type": found.content_type, "Content-Length": str(size)})
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_recording(request: web.Request) -> web.Response:
    """A finished recording, files and all; the answer is what it was."""
    principal = principal_of(request)
    principal.require_any(*_WRITE)
    recording = await _recording(request, principal)
    return json_response(await _recordings(request).delete(principal.actor, recording))


def register(app: web.Application, api: RecordingsApi) -> None:
    app[RECORDINGS_API] = api
    r = app.router
    r.add_post("/api/v1/rooms/{room_id}/recordings", start_recording)
    r.add_get("/api/v1/rooms/{room_id}/recordings", list_recordings)
    r.add_get("/api/v1/recordings/{recording_id}", get_recording)
    r.add_delete("/api/v1/recordings/{recording_id}", delete_recording)
    r.add_post("/api/v1/recordings/{recording_id}/stop", stop_recording)
    r.add_get("/api/v1/recordings/{recording_id}/files/{file}", download_file)
