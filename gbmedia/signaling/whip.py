"""WHIP ingest (RFC 9725) and WHEP playback for live rooms, over plain HTTP.

``POST /whip/{room}`` with an SDP offer (``Content-Type: application/sdp``) and
``Authorization: Bearer <access token>`` (``can_publish``, naming the room) starts
an encoder (OBS, GStreamer, a browser) publishing into the live room; the answer is
``201 Created`` with the SDP answer, the session's URL in ``Location`` and an
``ETag``. ``PATCH`` on that URL (``application/trickle-ice-sdpfrag``) adds the
client's trickled candidates; ``DELETE`` ends the session. ``/whep/{room}`` is the
same for a player (``can_subscribe``): its offer receives, and the answer sends
the room's program (the first host's video and audio, see
:mod:`gbmedia.rooms.audience`).

The room in the path must be the token's room; an encoder's token opens the room
as a live room if it is not open yet. A WHIP session is a participant of the room
without a socket (a host like any other); a WHEP session is a viewer, counted in
the room's ``viewer_count``. The server does not trickle: its candidates are in its
answer. ICE restarts are not supported (``422``). Every error is the API's JSON
``{"error": {"code", "message"}}``, with CORS headers so a player on another origin
can read it; ``OPTIONS`` answers CORS preflights without credentials.

In a cluster a player may be served by one of the live room's edge nodes
(gbmedia/rooms/cascade.py); its session's ``Location`` then names that node
(``?node=``), so its ``PATCH`` and ``DELETE`` find the session through any node.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiortc import RTCIceCandidate
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp

from gbmedia.errors import ApiError, ProtocolError, forbidden
from gbmedia.http.abuse import AbuseLimits, rate_limited
from gbmedia.http.responses import error_response
from gbmedia.metrics import Metrics
from gbmedia.ratelimit import RateLimiter
from gbmedia.rooms.audience import IngestSession, PlaybackSession, new_session_id
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.program import NO_PROGRAM
from gbmedia.rooms.store import Room
from gbmedia.sfu.peers import NegotiationError, TrackInfo, parse_sdp
from gbmedia.sfu.playback import PlaybackPeer
from gbmedia.signaling.relay import Relay, Route, relayed
from gbmedia.tenancy.auth import Authenticator, VerifiedToken, bearer_credential
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.revocation import Credential, Revocations, Revoked
from gbmedia.tenancy.usage import require_participant_minutes
from gbmedia.turn.credentials import TurnCredentials

log = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_SDP_BYTES = 256 * 1024
FORWARDED_VIDEO = ("vp8", "h264")
FORWARDED_AUDIO = ("opus", "pcmu", "pcma")
# What a player's audio slot is answered with while the host sends no audio yet.
DEFAULT_AUDIO = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After, X-Request-Id",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class WhipService:
    """What WHIP and WHEP serve: token checks, the live rooms, the REST API's rate limits and error counts."""

    auth: Authenticator
    live_rooms: LiveRooms
    rate_limiter: RateLimiter
    metrics: Metrics
    relay: Relay  # sessions live on the room's node: requests for another node's room go there
    abuse: AbuseLimits  # per source address: failed token checks, and new sessions
    revocations: Revocations  # sessions end when their API key is revoked or their tenant suspended
    turn: TurnCredentials | None = None  # TURN credentials in each 201's Link headers (None: no TURN server)


WHIP: web.AppKey[WhipService] = web.AppKey("whip", WhipService)


def _with_cors(handler: Handler) -> Handler:
    """Errors as the API's JSON, and CORS headers on every answer (players run on other origins)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as error:
            headers = dict(CORS)
            if error.status == 429:
                headers["Retry-After"] = str(max(1, round(error.details.get("retry_after", 1) + 0.5)))
            if error.code == "room_not_live":
                headers["Retry-After"] = "5"
            request.app[WHIP].metrics.http_errors.labels(error.code).inc()
            return error_response(error, headers)
        response.headers.update(CORS)
        return response

    return wrapped


async def _discard(message: dict[str, Any]) -> None:
    """A WHIP participant has no socket: room events have nowhere to go."""


# --- requests ------------------------------------------------------------------------


async def _bearer(request: web.Request) -> VerifiedToken:
    """The request's bearer access token, verified (401/403 otherwise)."""
    service = request.app[WHIP]

    async def attempt() -> VerifiedToken:
        credential = bearer_credential(request.headers.get("Authorization"), "access token")
        return await service.auth.verify_access_token(credential)

    if relayed(request):  # counted by the node that forwarded it
        return await attempt()
    return await service.abuse.authenticate(service.abuse.source(request), attempt)


async def _within_rate(request: web.Request, verified: VerifiedToken) -> None:
    """429 once the token's identity has spent its request budget (the same buckets as the REST API's).

    A request another node forwarded here took its token there: it is not counted twice."""
    if relayed(request):
        return
    token = verified.token
    decision = await request.app[WHIP].rate_limiter.take(f"{token.api_key}:{token.identity}")
    if not decision.allowed:
        raise rate_limited(decision, "api")


async def _verify(request: web.Request, grant: str) -> VerifiedToken:
    """The bearer access token, with ``grant``, for the room in the path (a new session: counted per address)."""
    if not relayed(request):
        service = request.app[WHIP]
        await service.abuse.join(service.abuse.source(request))
    verified = await _bearer(request)
    grants = verified.token.grants
    if not grants.has(grant):
        raise forbidden("grant_missing", f"the token lacks the {grant} grant", grant=grant)
    room = request.match_info["room"]
    if grants.room != room:
        raise forbidden("room_mismatch", f"the token is not for room {room!r}", token_room=grants.room)
    await _within_rate(request, verified)
    return verified


async def _read_body(request: web.Request, content_type: str) -> str:
    if request.content_type != content_type:
        raise ApiError(
            415, "unsupported_media_type", f"send the body as {content_type}", {"content_type": request.content_type}
        )
    body = await request.read()
    if len(body) > MAX_SDP_BYTES:
        raise ApiError(413, "payload_too_large", f"the body exceeds {MAX_SDP_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_sdp", "the body is not UTF-8 text") from None


def _offer(sdp: str, direction: str) -> SessionDescription:
    """The offer, refused with a clear reason unless it can be used in ``direction``.

    ``publish``: an m-line must send, and every m-line that sends must offer a codec
    the server forwards; ``play``: an m-line must receive.
    """
    try:
        description = parse_sdp(sdp, "offer")
    except NegotiationError as exc:
        raise ApiError(400, "invalid_sdp", exc.message) from None
    media = [m for m in description.media if m.kind in ("audio", "video") and m.port != 0]
    wanted = ("sendonly", "sendrecv") if direction == "publish" else ("recvonly", "sendrecv")
    if not any(m.direction in wanted for m in media):
        raise ApiError(
            400,
            "invalid_sdp",
            "the offer has no audio or video m-line that " + ("sends" if direction == "publish" else "receives"),
        )
    for m in media:
        if direction == "publish" and m.direction not in wanted:
            continue
        offered = sorted({c.mimeType.split("/")[-1].lower() for c in m.rtp.codecs})
        usable = FORWARDED_VIDEO if m.kind == "video" else FORWARDED_AUDIO
        if not set(offered) & set(usable):
            raise ApiError(
                422,
                "no_usable_codec",
                f"the {m.kind} m-line (mid {m.rtp.muxId}) offers {offered}; "
                f"the server forwards {m.kind} as {', '.join(usable)}",
                {"mid": m.rtp.muxId, "kind": m.kind, "offered": offered, "supported": list(usable)},
            )
    return description


def _ufrag(description: SessionDescription) -> str | None:
    for m in description.media:
        if m.ice is not None and m.ice.usernameFragment:
            return m.ice.usernameFragment
    return None


def _negotiation_failed(exc: NegotiationError) -> ApiError:
    if exc.code == "no_usable_codec":
        return ApiError(422, "no_usable_codec", exc.message)
    if exc.code == "media_unavailable":
        return ApiError(503, "media_unavailable", exc.message)
    return ApiError(400, "invalid_sdp", exc.message)


def _find_live(request: web.Request, verified: VerifiedToken) -> LiveRoom | None:
    name = request.match_info["room"]
    return next(
        (
            live
            for live in request.app[WHIP].live_rooms.live.values()
            if not live.closed and live.room.instance_id == verified.instance.id and live.room.name == name
        ),
        None,
    )


def _created(request: web.Request, answer: str, location: str, etag: str, session_id: str) -> web.Response:
    """The 201 of a new session; with a TURN server, its ICE servers as RFC 9725 ``Link`` headers
    (``rel="ice-server"``, one per URL, with a credential for this session)."""
    response = web.Response(
        status=201,
        body=answer.encode(),
        content_type=SDP,
        headers={"Location": location, "ETag": etag, "Accept-Patch": SDPFRAG},
    )
    turn = request.app[WHIP].turn
    if turn is not None:
        for link in turn.issue(session_id).link_headers():
            response.headers.add("Link", link)
    return response


def _credential(verified: VerifiedToken) -> Credential:
    return Credential(verified.token.api_key, verified.instance.id, verified.instance.customer_id)


async def _end_ingest(live: LiveRoom, session: IngestSession, revoked: Revoked) -> None:
    """A WHIP session whose credential went ends as a DELETE would end it (nothing, if it ended already)."""
    audience = live.audience
    if audience is None or audience.ingest.get(session.id) is not session:
        return
    audience.ingest.pop(session.id, None)
    await live.leave(session.participant, revoked.reason)


async def _end_playback(live: LiveRoom, session: PlaybackSession, revoked: Revoked) -> None:
    """A WHEP session whose credential went ends (nothing, if it ended already)."""
    audience = live.audience
    if audience is not None and audience.playback.get(session.id) is session:
        await audience.end_playback(session, revoked.reason)


# --- WHIP ------------------------------------------------------------------------------


async def _on_owner(request: web.Request, verified: VerifiedToken, *, create: bool) -> web.StreamResponse | None:
    """The owner's answer when the room in the path lives on another node (None: here, or no open room).

    A session's own URL may name the node that holds it (``?node=``, a player an edge serves): it goes there.
    """
    service = request.app[WHIP]
    holder = request.query.get("node")
    if holder and not create:
        return await service.relay.forward_to(request, holder)
    room = await _open_room(request, verified, create=create)
    if room is None:
        return None
    return await service.relay.forward(request, room, verified.instance.region)


async def _open_room(request: web.Request, verified: VerifiedToken, *, create: bool = False) -> Room | None:
    """The open room in the path (``create``: opened as a live room if it is not), or None."""
    rooms = request.app[WHIP].live_rooms.rooms
    name = request.match_info["room"]
    if create:  # WHIP ingest opens the live room, as a first join does
        return await rooms.open(Actor(verified.token.api_key, "api_key"), verified.instance.id, name, "live")
    try:
        room = await rooms.get(verified.instance.id, name)
    except ApiError:
        return None
    return room if room.status == "open" else None


async def whip_publish(request: web.Request) -> web.StreamResponse:
    verified = await _verify(request, "can_publish")
    if (relayed := await _on_owner(request, verified, create=True)) is not None:
        return relayed
    sdp = await _read_body(request, SDP)
    description = _offer(sdp, "publish")
    token = verified.token
    live = await request.app[WHIP].live_rooms.room_for(
        verified.instance, request.match_info["room"], Actor(token.api_key, "api_key"), kind="live"
    )
    if live.audience is None:
        raise ApiError(
            409,
            "not_a_live_room",
            f"room {live.room.name!r} is a {live.room.kind} room; WHIP publishes into live rooms",
        )
    try:
        participant = await live.join(token.identity, token.name, token.grants, auto_subscribe=False, send=_discard)
    except ProtocolError as exc:
        if exc.code == "room_full":
            raise ApiError(409, "room_full", exc.message, exc.details) from None
        raise ApiError(409, "room_closed", exc.message) from None
    infos = {
        m.rtp.muxId: TrackInfo("camera" if m.kind == "video" else "microphone", "whip")
        for m in description.media
        if m.rtp.muxId
    }
    try:
        answer, _added = await live.publish(participant, sdp, infos)
    except NegotiationError as exc:
        await live.leave(participant, "left")
        raise _negotiation_failed(exc) from None
    except ProtocolError as exc:
        await live.leave(participant, "left")
        if exc.code != "too_many_tracks":
            raise
        raise ApiError(422, "too_many_tracks", exc.message, exc.details) from None
    session = IngestSession(new_session_id(), participant, _ufrag(description))
    live.audience.add_ingest(session)
    request.app[WHIP].revocations.hold(session, _credential(verified), functools.partial(_end_ingest, live))
    log.info(
        "whip session started",
        extra={"room_id": str(live.room.id), "session_id": session.id, "participant_id": participant.id},
    )
    return _created(request, answer, f"/whip/{live.room.name}/{session.id}", session.etag, session.id)


@dataclass
class _Found:
    live: LiveRoom
    ingest: IngestSession | None = None
    playback: PlaybackSession | None = None

    @property
    def etag(self) -> str:
        session = self.ingest or self.playback
        return session.etag  # type: ignore[union-attr]

    @property
    def ice_ufrag(self) -> str | None:
        session = self.ingest or self.playback
        return session.ice_ufrag  # type: ignore[union-attr]


async def _session(request: web.Request, which: str) -> _Found:
    """The session in the path, for a token of its instance and identity (or its room's moderator)."""
    grant = "can_publish" if which == "whip" else "can_subscribe"
    verified = await _bearer(request)
    token = verified.token
    await _within_rate(request, verified)
    live = _find_live(request, verified)
    session_id = request.match_info["session"]
    missing = ApiError(404, "session_not_found", f"no {which.upper()} session {session_id} in this room")
    if live is None or live.audience is None or token.grants.room != live.room.name:
        raise missing
    found = _Found(live)
    if which == "whip":
        found.ingest = live.audience.ingest.get(session_id)
        if found.ingest is None or live.participants.get(found.ingest.participant.id) is not found.ingest.participant:
            raise missing
        identity = found.ingest.identity
    else:
        found.playback = live.audience.playback.get(session_id)
        if found.playback is None or found.playback.edge is not None:  # an edge node's feed is not a player's
            raise missing
        identity = found.playback.identity
    if not (token.grants.moderates(live.room.name) or (token.identity == identity and token.grants.has(grant))):
        raise missing
    return found


async def _delete(request: web.Request, which: str) -> web.StreamResponse:
    if (relayed := await _on_owner(request, await _bearer(request), create=False)) is not None:
        return relayed
    found = await _session(request, which)
    audience = found.live.audience
    assert audience is not None
    if found.ingest is not None:
        audience.ingest.pop(found.ingest.id, None)
        await found.live.leave(found.ingest.participant, "left")
    elif found.playback is not None:
        await audience.end_playback(found.playback, "deleted")
    return web.Response(status=200)


async def _patch(request: web.Request, which: str) -> web.StreamResponse:
    if (relayed := await _on_owner(request, await _bearer(request), create=False)) is not None:
        return relayed
    found = await _session(request, which)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match != "*" and if_match != found.etag:
        raise ApiError(412, "etag_mismatch", "If-Match does not name this session's current ETag", {"etag": found.etag})
    fragment = await _read_body(request, SDPFRAG)
    ufrag, candidates = parse_sdpfrag(fragment)
    if ufrag is not None and found.ice_ufrag is not None and ufrag != found.ice_ufrag:
        raise ApiError(
            422,
            "ice_restart_unsupported",
            "this server does not support ICE restarts; DELETE the session and POST a new offer",
        )
    if found.ingest is not None:
        peer: Any = found.ingest.participant.publisher
    else:
        peer = found.playback.peer  # type: ignore[union-attr]
    for mid, line in candidates:
        try:
            candidate: RTCIceCandidate = candidate_from_sdp(line.split(":", 1)[1])
        except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts on a short line
            raise ApiError(400, "invalid_candidate", f"the ICE candidate {line!r} does not parse: {exc}") from None
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = 0 if mid is None else None
        await peer.add_ice_candidate(candidate)
    return web.Response(status=204)


def parse_sdpfrag(fragment: str) -> tuple[str | None, list[tuple[str | None, str]]]:
    """(ice-ufrag, [(mid, "candidate:...")]) of an RFC 8840 SDP fragment."""
    ufrag: str | None = None
    mid: str | None = None
    candidates: list[tuple[str | None, str]] = []
    for raw in fragment.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1]
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            candidates.append((mid, line[2:]))
        elif line and not line.startswith(("a=", "m=", "c=")):
            raise ApiError(400, "invalid_sdpfrag", f"not an SDP fragment line: {line[:80]!r}")
    return ufrag, candidates


# --- WHEP ------------------------------------------------------------------------------


async def whep_play(request: web.Request) -> web.StreamResponse:
    verified = await _verify(request, "can_subscribe")
    service = request.app[WHIP]
    await require_feature(service.auth.customers.pool, verified.instance.id, "live")  # 403 before any relay
    await require_participant_minutes(service.auth.customers.pool, verified.instance.id)
    route: Route | None = None
    room = await _open_room(request, verified)
    if room is not None:  # a player is a viewer: served by the room's node, or an edge when that is full
        served = await service.relay.forward_viewer(request, room, verified.instance.region)
        if not isinstance(served, Route):
            return served
        route = served
    sdp = await _read_body(request, SDP)
    description = _offer(sdp, "play")
    cascade = service.relay.cascade
    if route is not None and route.edge and cascade is not None:
        live: LiveRoom | None = await cascade.edge_room(route.room)
    else:
        live = _find_live(request, verified)
    if live is not None and live.audience is None:
        raise ApiError(
            409, "not_a_live_room", f"room {live.room.name!r} is a {live.room.kind} room; WHEP plays live rooms"
        )
    program = live.audience.current_program if live is not None and live.audience is not None else NO_PROGRAM
    if live is None or live.audience is None or program.video is None:
        raise ApiError(409, "room_not_live", "nobody is live in this room yet; retry later")
    if live.audience.occupancy() >= live.room.max_participants:
        raise ApiError(
            409,
            "room_full",
            f"the room allows {live.room.max_participants} participants and players",
            {"max_participants": live.room.max_participants},
        )
    token = verified.token
    limit = live.session_limits.per_identity
    if live.audience.sessions_of(token.identity) >= limit:
        raise ApiError(
            429,
            "too_many_sessions",
            f"{token.identity!r} already plays this room in {limit} sessions; end one (DELETE) first",
            {"limit": limit, "retry_after": live.session_limits.connect_timeout},
        )
    codecs = {"video": program.video.codec, "audio": program.audio.codec if program.audio else DEFAULT_AUDIO}
    session_id = new_session_id()
    peer = PlaybackPeer(session_id, address=live.registry.media_address)
    try:
        answer = await peer.answer(sdp, codecs)
    except NegotiationError as exc:
        await peer.close()
        raise _negotiation_failed(exc) from None
    session = PlaybackSession(session_id, token.identity, token.name, peer, _ufrag(description))
    await live.audience.add_playback(session)
    service.revocations.hold(session, _credential(verified), functools.partial(_end_playback, live))
    location = f"/whep/{live.room.name}/{session.id}"
    if route is not None and cascade is not None:
        if route.seat is not None:
            await cascade.seated(live.room.id, route.seat)
        if route.edge:  # the session's later requests must find this node, not the room's
            location += "?" + urlencode({"node": service.relay.placement.node_id})
    log.info(
        "whep session started",
        extra={"room_id": str(live.room.id), "session_id": session.id, "identity": token.identity},
    )
    return _created(request, answer, location, session.etag, session.id)


# --- routes --------------------------------------------------------------------------


def _preflight(methods: str, accept: dict[str, str]) -> Handler:
    async def options(request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                **CORS,
                **accept,
                "Access-Control-Allow-Methods": methods,
                "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
                "Access-Control-Max-Age": "600",
            },
        )

    return options


async def whip_delete(request: web.Request) -> web.StreamResponse:
    return await _delete(request, "whip")


async def whip_patch(request: web.Request) -> web.StreamResponse:
    return await _patch(request, "whip")


async def whep_delete(request: web.Request) -> web.StreamResponse:
    return await _delete(request, "whep")


async def whep_patch(request: web.Request) -> web.StreamResponse:
    return await _patch(request, "whep")


def register(app: web.Application, service: WhipService) -> None:
    app[WHIP] = service
    r = app.router
    for which, post in (("whip", whip_publish), ("whep", whep_play)):
        r.add_route("OPTIONS", f"/{which}/{{room}}", _with_cors(_preflight("POST, OPTIONS", {"Accept-Post": SDP})))
        r.add_post(f"/{which}/{{room}}", _with_cors(post))
        resource = f"/{which}/{{room}}/{{session}}"
        r.add_route("OPTIONS", resource, _with_cors(_preflight("PATCH, DELETE, OPTIONS", {"Accept-Patch": SDPFRAG})))
        r.add_patch(resource, _with_cors(whip_patch if which == "whip" else whep_patch))
        r.add_delete(resource, _with_cors(whip_delete if which == "whip" else whep_delete))
