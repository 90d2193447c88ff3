"""HTTP routes of LL-HLS: ``/hls/{room_id}/live.m3u8`` and its init, segments and parts.

Public like a CDN origin: the room's UUID is what a viewer needs to know. The
playlist is never cached as is (``no-cache``); a blocking reload (``_HLS_msn`` /
``_HLS_part``) names a state that never changes, so its answer may be cached
briefly; media names include the rendition id and never change meaning, so they
are immutable. Errors are JSON like the rest of the API.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web

from gbmedia.errors import ApiError, bad_request
from gbmedia.rooms.placement import RoomRouter
from gbmedia.rooms.store import Rooms
from gbmedia.streaming.playlist import PLAYLIST_NAME, Rendition
from gbmedia.streaming.service import HlsService

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age=31536000, immutable"
_CORS = {"Access-Control-Allow-Origin": "*"}


# None when LL-HLS is off on this node (GBMEDIA_HLS_ENABLED=false): its routes then answer 404.
HLS: web.AppKey[HlsService | None] = web.AppKey("hls")


def _service(request: web.Request) -> HlsService:
    service = request.app[HLS]
    if service is None:
        raise ApiError(404, "hls_not_found", "LL-HLS is disabled on this node")
    return service


def _rendition(request: web.Request) -> Rendition:
    raw = request.match_info["room_id"]
    try:
        room_id = uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "hls_not_found", f"no live stream for room {raw!r}") from None
    rendition = _service(request).rendition(room_id)
    if rendition is None or rendition.ended:
        raise ApiError(404, "hls_not_found", f"room {room_id} has no live stream on this node")
    return rendition


def _hls_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise bad_request("invalid_hls_query", f"{name} must be a non-negative integer, got {raw[:20]!r}")
    return int(raw)


async def _on_owner(request: web.Request) -> web.StreamResponse | None:
    """A live room packaged on another node: its answer, fetched from there (None: here, or no such room)."""
    room_id = _as_uuid(request.match_info["room_id"])
    if room_id is None:
        return None
    service = request.app[HLS]
    if service is not None and (here := service.rendition(room_id)) is not None and not here.ended:
        return None
    origin = request.app[HLS_ORIGIN]
    try:
        room = await origin.rooms.get(None, room_id)
    except ApiError:
        return None
    if room.status != "open" or room.kind != "live":
        return None
    return await origin.router.forward(request, room)


def _as_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def playlist(request: web.Request) -> web.StreamResponse:
    if (relayed := await _on_owner(request)) is not None:
        return relayed
    rendition = _rendition(request)
    msn = _hls_int(request, "_HLS_msn")
    part = _hls_int(request, "_HLS_part")
    if part is not None and msn is None:
        raise bad_request("invalid_hls_query", "_HLS_part needs _HLS_msn")
    timeout = rendition.config.blocking_timeout
    if msn is not None:
        limit = rendition.last_complete_msn + 2
        if msn > limit:  # RFC 8216bis 6.2.5.2: too far ahead is a client error
            raise bad_request(
                "invalid_hls_query", f"_HLS_msn {msn} is beyond the live edge (at most {limit})", limit=limit
            )
        reached = await rendition.wait_until(lambda: rendition.reached(msn, part), timeout)
        if not reached:
            raise ApiError(503, "hls_timeout", f"segment {msn} part {part} did not appear in time")
        cache = f"public, max-age={rendition.config.target_duration}"
    else:
        if not await rendition.wait_until(lambda: rendition.ready, timeout):
            raise ApiError(503, "hls_not_ready", "the live stream has not produced media yet; retry")
        cache = "no-cache"
    if rendition.ended:
        raise ApiError(404, "hls_not_found", "the live stream ended")
    body = rendition.playlist().encode()
    _service(request).bytes_served += len(body)
    return web.Response(body=body, headers={"Content-Type": PLAYLIST_TYPE, "Cache-Control": cache, **_CORS})


async def media(request: web.Request) -> web.StreamResponse:
    if (relayed := await _on_owner(request)) is not None:
        return relayed
    rendition = _rendition(request)
    name = request.match_info["name"]
    found = rendition.file(name)
    if found is None and rendition.is_upcoming(name):  # a preload hint: hold until it exists
        await rendition.wait_until(lambda: rendition.file(name) is not None, rendition.config.blocking_timeout)
        found = rendition.file(name)
    if found is None:
        raise ApiError(404, "hls_file_not_found", f"no file {name[:80]!r} in this live stream")
    service = _service(request)
    service.bytes_served += len(found.body)
    service.served(uuid.UUID(request.match_info["room_id"]), rendition.media_seconds(name))
    return web.Response(
        body=found.body, headers={"Content-Type": found.content_type, "Cache-Control": IMMUTABLE, **_CORS}
    )


async def _error_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Errors under /hls/ are never cached (a CDN caching a 404 would delay a stream that starts a moment
    later) and readable cross-origin (players see why)."""
    if request.path.startswith("/hls/") and response.status >= 400:
        response.headers["Cache-Control"] = "no-cache"
        response.headers.update(_CORS)


@dataclass(frozen=True)
class HlsOrigin:
    """Where a live room's rendition is made: on the room's node, reached through the router."""

    rooms: Rooms
    router: RoomRouter


HLS_ORIGIN: web.AppKey[HlsOrigin] = web.AppKey("hls_origin", HlsOrigin)


def register(app: web.Application, hls: HlsService | None, origin: HlsOrigin) -> None:
    app[HLS] = hls
    app[HLS_ORIGIN] = origin
    app.router.add_get("/hls/{room_id}/" + PLAYLIST_NAME, playlist)
    app.router.add_get("/hls/{room_id}/{name}", media)
    app.on_response_prepare.append(_error_headers)
