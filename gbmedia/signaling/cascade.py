"""Feeds between nodes for cascading live rooms (gbmedia/rooms/cascade.py), over the cluster listener.

``POST /cluster/cascade/{room_id}`` is WHEP whose caller is a node: an edge posts a
receive-only offer and gets the answer of a playback session that sends the room's
program (``201``, the session's URL in ``Location``, and what the feed carries, as
JSON, in ``X-Gbmedia-Program``); ``DELETE`` on that URL ends it. The node answers
from its own copy of the room: the room's own, or, when it is one of the room's
edges, its edge copy (made on demand: edges feed edges).

Only nodes may call it: the request must carry a valid cluster signature
(relay.py's ``ClusterAuth``, checked by the cluster middleware before any handler
runs), and an unsigned one is refused with 403 ``cluster_only``. A participant can
never obtain such a signature: nodes sign only what they relay, and they relay
only the paths of the handlers that relay (``/rtc``, WHIP/WHEP, the room APIs),
never this one.
"""

from __future__ import annotations

import logging
import uuid

import aiohttp
from aiohttp import web

from gbmedia.errors import ApiError
from gbmedia.rooms.audience import PlaybackSession, new_session_id
from gbmedia.rooms.cascade import Cascade, FeedAnswer, FeedProgram, FeedUnavailable
from gbmedia.rooms.registry import NodeInfo
from gbmedia.sfu.peers import NegotiationError
from gbmedia.sfu.playback import PlaybackPeer
from gbmedia.signaling.relay import RELAYED_FROM, Relay

log = logging.getLogger(__name__)

FEED_PATH = "/cluster/cascade/{room_id}"
PROGRAM_HEADER = "X-Gbmedia-Program"
SDP = "application/sdp"
MAX_SDP_BYTES = 256 * 1024

CASCADE: web.AppKey[Cascade] = web.AppKey("cascade", Cascade)


class HttpFeeder:
    """How this node pulls a room's program from another node (the :class:`~gbmedia.rooms.cascade.Feeder`)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def pull(self, source: NodeInfo, room_id: uuid.UUID, offer_sdp: str) -> FeedAnswer:
        path = FEED_PATH.format(room_id=room_id)
        headers = {**self.relay.auth.headers("POST", path), "Content-Type": SDP}
        try:
            async with self.relay.session.post(
                source.internal_url + path, data=offer_sdp.encode(), headers=headers
            ) as resp:
                body = await resp.text()
                if resp.status != 201:
                    try:
                        code = (await resp.json(content_type=None))["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = "feed_failed"
                    raise FeedUnavailable(code, f"{source.node_id} answered {resp.status}: {body[:200]}")
                return FeedAnswer(body, resp.headers["Location"], FeedProgram.from_json(resp.headers[PROGRAM_HEADER]))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FeedUnavailable("unreachable", f"{source.node_id} cannot be reached: {exc!r}") from None
        except (KeyError, ValueError) as exc:
            raise FeedUnavailable("feed_failed", f"{source.node_id} answered without a usable feed: {exc!r}") from None

    async def stop(self, source: NodeInfo, location: str) -> None:
        async with self.relay.session.delete(
            source.internal_url + location, headers=self.relay.auth.headers("DELETE", location)
        ) as resp:
            await resp.read()


def _caller(request: web.Request) -> str:
    """The calling node; 403 for anyone else."""
    node = request.get(RELAYED_FROM)
    if not node:
        raise ApiError(403, "cluster_only", "only the nodes of this cluster may open feeds")
    return str(node)


def _room_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["room_id"])
    except ValueError:
        raise ApiError(404, "room_not_found", "no such room") from None


def _unavailable(exc: FeedUnavailable) -> ApiError:
    if exc.code == "room_not_live":
        return ApiError(409, "room_not_live", exc.message)
    return ApiError(409, "not_serving", exc.message)


def _negotiation_failed(exc: NegotiationError) -> ApiError:
    if exc.code == "no_usable_codec":
        return ApiError(422, "no_usable_codec", exc.message)
    if exc.code == "media_unavailable":
        return ApiError(503, "media_unavailable", exc.message)
    return ApiError(400, "invalid_sdp", exc.message)


async def feed_offer(request: web.Request) -> web.StreamResponse:
    edge = _caller(request)
    cascade = request.app[CASCADE]
    room = await cascade.rooms.get(None, _room_id(request))
    if request.content_type != SDP:
        raise ApiError(415, "unsupported_media_type", f"send the body as {SDP}")
    body = await request.read()
    if len(body) > MAX_SDP_BYTES:
        raise ApiError(413, "payload_too_large", f"the body exceeds {MAX_SDP_BYTES} bytes")
    try:
        live = await cascade.source(room)
        program = cascade.feed_program(live)
    except FeedUnavailable as exc:
        raise _unavailable(exc) from None
    audience = live.audience
    assert audience is not None
    current = audience.current_program
    assert current.video is not None  # feed_program refused a program without video
    codecs = {"video": current.video.codec}
    if current.audio is not None:
        codecs["audio"] = current.audio.codec
    session_id = new_session_id()
    peer = PlaybackPeer(session_id, address=live.registry.media_address)
    try:
        answer = await peer.answer(body.decode("utf-8", "replace"), codecs)
    except NegotiationError as exc:
        await peer.close()
        raise _negotiation_failed(exc) from None
    session = PlaybackSession(session_id, f"node:{edge}", edge, peer, None, edge=edge)
    await audience.add_playback(session)
    log.info("feeding a live room to an edge", extra={"room_id": str(room.id), "edge": edge, "session_id": session_id})
    return web.Response(
        status=201,
        body=answer.encode(),
        content_type=SDP,
        headers={"Location": f"/cluster/cascade/{room.id}/{session_id}", PROGRAM_HEADER: program.to_json()},
    )


async def feed_delete(request: web.Request) -> web.StreamResponse:
    edge = _caller(request)
    room_id = _room_id(request)
    cascade = request.app[CASCADE]
    live = cascade.live_rooms.live.get(room_id)
    session = live.audience.playback.get(request.match_info["session"]) if live and live.audience else None
    if live is None or live.audience is None or session is None or session.edge != edge:
        raise ApiError(404, "session_not_found", "no such feed")
    await live.audience.end_playback(session, "deleted")
    return web.Response(status=200)


def register(app: web.Application, cascade: Cascade) -> None:
    app[CASCADE] = cascade
    app.router.add_post(FEED_PATH, feed_offer)
    app.router.add_delete(FEED_PATH + "/{session}", feed_delete)
