"""``GET /rtc``: one WebSocket per participant, speaking :mod:`gbmedia.signaling.protocol`.

Authentication is the ``join`` message's token, not a header, so browsers can use
the plain WebSocket API and tokens stay out of URLs and access logs. Whatever a
client sends, the reply is a message: errors never close the socket, and one
participant's bad input never reaches the others.

Nothing waits for a client to read: replies and room events are written through the
socket's :class:`~gbmedia.http.ws_output.SocketOutput` (shared with chat), so a
broadcast to a room never waits on one participant's socket. A client that lets more
than ``GBMEDIA_SOCKET_MAX_BUFFERED_BYTES`` pile up unread is cut off: it leaves its
room at once (reason ``slow_reader``) and its socket is closed with code 4008.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from gbmedia.errors import ApiError, RequestId, bad_request, outage_error
from gbmedia.http.abuse import AbuseLimits
from gbmedia.http.ws_output import DEFAULT_LIMIT, SLOW_READER, SocketOutput, text_frame
from gbmedia.messaging.delivery import ChatHub
from gbmedia.messaging.models import ChatCaller
from gbmedia.messaging.presence import Presence
from gbmedia.messaging.protocol import CHAT_TYPES, Auth
from gbmedia.messaging.service import Chat
from gbmedia.messaging.socket import ChatSession, room_chat
from gbmedia.metrics import Metrics
from gbmedia.rooms.audience import Audience
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.participant import Participant, track_json
from gbmedia.sfu.paths import ClientPath
from gbmedia.sfu.peers import NegotiationError, TrackInfo
from gbmedia.signaling import protocol as p
from gbmedia.signaling.relay import CLOSE_RECONNECT, SEAT_PARAM, Relay, Route, SocketPipe, relayed
from gbmedia.tenancy.auth import Authenticator, VerifiedToken
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.revocation import Credential, Revocations, Revoked
from gbmedia.turn.credentials import TurnCredentials

# The socket's token no longer holds (its API key revoked, its instance or customer suspended);
# the close reason names which: api_key_revoked, instance_suspended, customer_suspended, subscription_cancelled.
CLOSE_REVOKED = 4403

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RtcService:
    """What the participant socket serves: token checks, the rooms on this node, chat."""

    auth: Authenticator
    live_rooms: LiveRooms
    chat: Chat
    chat_hub: ChatHub
    presence: Presence
    relay: Relay
    abuse: AbuseLimits  # per source address: failed token checks, and joins
    revocations: Revocations  # sessions end when their API key is revoked or their tenant suspended
    socket_limit: int = DEFAULT_LIMIT  # unsent bytes of one socket before it is cut off
    turn: TurnCredentials | None = None  # TURN credentials for each participant (None: no TURN server)
    metrics: Metrics | None = None  # join latency and errors by code

    def ice_servers(self, participant: Participant) -> dict[str, Any]:
        """``ice_servers`` (with a TURN credential for this participant) and when it expires, for ``joined``
        and the ``ice_servers`` reply; an empty list without a TURN server."""
        if self.turn is None:
            return {"ice_servers": [], "ice_servers_expire_at": None}
        issued = self.turn.issue(participant.id)
        return {"ice_servers": issued.to_json(), "ice_servers_expire_at": issued.expires_at}


RTC: web.AppKey[RtcService] = web.AppKey("rtc", RtcService)
# The node's open /rtc sockets: closed with 1012 when the application shuts down.
OPEN_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("open_sockets", set)


class Connection:
    """One socket's conversation; holds its participant once joined."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.service = request.app[RTC]
        self.live_rooms: LiveRooms = self.service.live_rooms
        self.room: LiveRoom | None = None  # the participant's room, once joined
        self.participant: Participant | None = None
        self.chat_session: ChatSession | None = None
        # Signaling and chat write to the socket through one output, which never waits for the client.
        self.output = SocketOutput(ws, request.transport, self.service.socket_limit)
        self.output.on_cut_off(self._cut_off)
        self.left = False
        self._reports: set[asyncio.Task[None]] = set()
        self._held: list[dict[str, Any]] | None = None  # room events waiting for this socket's `joined`
        self.pipe: SocketPipe | None = None  # set when the room lives on another node
        self._closing: asyncio.Future[bool] | None = None
        self._raw: str | bytes = ""  # the frame being handled: a join relayed to the owner goes as it came
        # A socket another node relays was counted there: its address here is that node's.
        self.address: str | None = None if relayed(request) else self.service.abuse.source(request)

    async def send(self, message: dict[str, Any]) -> None:
        """Write ``message`` to the socket now, without waiting for the client (ConnectionError once closed)."""
        if not self.output.write(text_frame(json.dumps(message, separators=(",", ":")))):
            raise ConnectionError("socket closed")
        if message.get("type") == "moved":  # the room left this node: the client reconnects and lands on the new one
            self._closing = asyncio.ensure_future(self.ws.close(code=CLOSE_RECONNECT, message=b"room moved"))

    async def handle(self, raw: str | bytes) -> None:
        if self.pipe is not None:
            await self.pipe.send(raw)
            return
        self._raw = raw
        request_id: RequestId = None
        try:
            message = p.parse_message(raw)
            request_id = message.id
            reply = await self.dispatch(message)
            if reply is not None:
                if request_id is not None:
                    reply["id"] = request_id
                await self.send(reply)
        except Exception as exc:
            await self._report(exc, request_id)

    def _cut_off(self) -> None:
        """The client stopped reading: its participant leaves the room now (the others see ``slow_reader``),
        not after a resume grace period (its socket is closing: see :class:`SocketOutput`)."""
        room, participant = self.room, self.participant
        if room is None or participant is None or self.left:
            return
        self.left = True
        log.warning(
            "participant too slow to read; removing it",
            extra={"room_id": str(room.room.id), "participant_id": participant.id},
        )

        async def leave() -> None:
            try:
                await room.leave(participant, SLOW_READER)
            except Exception:  # its connections are closed (leave's finally); the room goes on
                log.exception("removing a slow participant failed", extra={"participant_id": participant.id})

        self._reports.add(task := asyncio.ensure_future(leave()))
        task.add_done_callback(self._reports.discard)

    def _report_later(self, exc: Exception, request_id: RequestId) -> None:
        """:meth:`_report` from a callback (a pipelined chat send's error), in a task of its own."""
        self._reports.add(task := asyncio.ensure_future(self._report(exc, request_id)))
        task.add_done_callback(self._reports.discard)

    async def _report(self, exc: Exception, request_id: RequestId) -> None:
        """The error message for a request that failed; a socket closed meanwhile gets nothing."""
        if isinstance(exc, p.ProtocolError):
            exc.request_id = exc.request_id if exc.request_id is not None else request_id
            error = exc
        elif isinstance(exc, NegotiationError):
            error = p.ProtocolError(exc.code, exc.message, request_id)
        elif isinstance(exc, ApiError):
            error = p.ProtocolError(exc.code, exc.message, request_id, exc.details)
        elif (outage := outage_error(exc)) is not None:  # PostgreSQL or Redis away: the client may retry
            log.warning("signaling message failed: dependency unavailable", extra={"code": outage.code})
            error = p.ProtocolError(outage.code, outage.message, request_id)
        elif isinstance(exc, ConnectionError):
            return
        else:
            log.error("signaling message failed", exc_info=exc)
            error = p.ProtocolError("internal_error", "the server failed on this message", request_id)
        if self.service.metrics is not None:  # codes are the server's own, a bounded set
            self.service.metrics.signaling_errors.labels(error.code).inc()
        try:
            await self.send(error.to_message())
        except ConnectionError:
            pass

    async def dispatch(self, message: p.ClientMessage) -> dict[str, Any] | None:
        if isinstance(message, p.Ping):
            return {"type": "pong"}
        if isinstance(message, p.Join):
            return await self.join(message)
        if isinstance(message, Auth):
            return await self.authenticate(message)
        if message.type in CHAT_TYPES:  # chat's own: its session answers (a chat_send's ack follows the commit)
            if self.chat_session is None:
                raise p.ProtocolError("not_authenticated", f"send auth (or join) before {message.type}")
            return await self.chat_session.handle(message)  # type: ignore[arg-type]
        participant, room = self.participant, self.room
        if participant is None or room is None:
            raise p.ProtocolError("not_joined", f"send join before {message.type}")
        if room.participants.get(participant.id) is not participant:
            self.room, self.participant = None, None  # removed, replaced or the room closed: the session is over
            raise p.ProtocolError("not_joined", f"you are no longer in the room; join again before {message.type}")
        if isinstance(message, p.IceServersRequest):
            return {"type": "ice_servers", **self.service.ice_servers(participant)}
        if message.type in p.LIVE_TYPES:
            if room.audience is None:
                raise p.ProtocolError("not_a_live_room", f"{message.type} needs a live room")
            return await self._live_message(room.audience, participant, message)  # type: ignore[arg-type]
        if isinstance(message, p.Publish):
            infos = {mid: TrackInfo(t.source, t.name) for mid, t in message.tracks.items()}
            answer, _added = await room.publish(participant, message.sdp, infos, restart=message.restart)
            return {"type": "publish_answer", "sdp": answer, "tracks": [track_json(t) for t in participant.published]}
        if isinstance(message, p.Answer):
            await room.answer(participant, message.sdp)
            return {"type": "ack"} if message.id is not None else None
        if isinstance(message, p.SubscriberRestart):
            await room.restart_subscriber(participant)
            return {"type": "ack"}
        if isinstance(message, p.MediaPath):
            path = ClientPath(message.candidate_type, message.protocol, message.relay_protocol)
            if room.report_path(participant, message.target, path) and self.service.metrics is not None:
                self.service.metrics.client_paths.labels(message.target, path.label).inc()
            return {"type": "ack"} if message.id is not None else None
        if isinstance(message, p.Candidate):
            candidate = message.candidate.model_dump() if message.candidate else None
            await room.add_candidate(participant, message.target, candidate)
            return {"type": "ack"} if message.id is not None else None
        if isinstance(message, p.Subscribe):
            await room.set_subscribed(participant, message.track_ids, message.subscribe)
            return {"type": "ack"}
        if isinstance(message, p.Mute):
            await room.mute(participant, message.track_id, message.muted)
            return {"type": "ack"}
        if isinstance(message, p.TrackSettings):
            settings = room.track_settings(
                participant,
                message.track_id,
                paused=message.paused,
                quality=message.quality,
                width=message.width,
                height=message.height,
            )
            return {"type": "track_settings", **settings}
        assert isinstance(message, p.Leave)
        self.left = True
        await room.leave(participant, "left")
        self.room, self.participant = None, None
        return {"type": "left"}

    @staticmethod
    async def _live_message(
        audience: Audience, participant: Participant, message: p.LiveMessage
    ) -> dict[str, Any] | None:
        if isinstance(message, p.Reaction):
            await audience.react(participant, message.kind)
            return {"type": "ack"} if message.id is not None else None
        if isinstance(message, p.CohostInvite):
            await audience.invite(participant, message.participant_id)
            return {"type": "ack"}
        assert isinstance(message, p.CohostAnswer)
        return await audience.answer_invite(participant, message.accept)

    async def _verify(self, raw_token: str, protocol: int) -> VerifiedToken:
        if protocol != p.PROTOCOL_VERSION:
            raise p.ProtocolError(
                "unsupported_protocol",
                f"this server speaks protocol {p.PROTOCOL_VERSION}",
                details={"supported": [p.PROTOCOL_VERSION]},
            )
        if self.address is None:
            verified = await self.service.auth.verify_access_token(raw_token)
        else:
            abuse = self.service.abuse
            await abuse.join(self.address)  # `join` and `auth` both: each builds a session, and churn is abuse
            verified = await abuse.authenticate(self.address, lambda: self.service.auth.verify_access_token(raw_token))
        self.service.revocations.hold(self, credential_of(verified), Connection.revoke)
        return verified

    async def revoke(self, revoked: Revoked) -> None:
        """The socket's credential no longer holds: its participant leaves the room (told ``removed``
        with the reason), its chat stops, and the socket closes with :data:`CLOSE_REVOKED`."""
        room, participant = self.room, self.participant
        self.room, self.participant = None, None
        if participant is not None:
            self.left = True
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):  # a client that stops reading must not hold up the others' ends
                    await self.send({"type": "removed", "reason": revoked.reason})
            if room is not None:
                await room.leave(participant, revoked.reason)
        if self.chat_session is not None:
            session, self.chat_session = self.chat_session, None
            await session.stop()
        if not self.ws.closed:  # not awaited here: the client's close reply must not hold up the others' ends
            # A piped socket's session lives on the room's node, which heard the revocation too: its
            # `removed` comes through the pipe, then its close; this node closes only if that does not come.
            delay = 2.0 if self.pipe is not None else 0.0
            self._closing = asyncio.ensure_future(self._close_revoked(revoked, delay))

    async def _close_revoked(self, revoked: Revoked, delay: float) -> bool:
        if delay:
            await asyncio.sleep(delay)
        if self.ws.closed:
            return False
        return await self.ws.close(code=CLOSE_REVOKED, message=revoked.reason.encode())

    async def _start_chat(self, verified: Any) -> None:
        """Chat for the token's identity on this socket (once: ``auth`` or the first ``join``)."""
        if self.chat_session is not None:
            return
        token = verified.token
        self.chat_session = await ChatSession.open(
            self.service.chat,
            self.service.chat_hub,
            self.service.presence,
            ChatCaller.with_grants(verified.instance.id, token.identity, token.grants),
            self.output,
            self._report_later,
        )

    async def authenticate(self, message: Auth) -> dict[str, Any]:
        if self.chat_session is not None:
            raise p.ProtocolError("already_authenticated", "this socket is already authenticated")
        verified = await self._verify(message.token, message.protocol)
        await self._start_chat(verified)
        return {
            "type": "authenticated",
            "protocol": p.PROTOCOL_VERSION,
            "identity": verified.token.identity,
            "instance_id": str(verified.instance.id),
        }

    async def join(self, message: p.Join) -> dict[str, Any] | None:
        started = time.perf_counter()
        if self.participant is not None:
            raise p.ProtocolError("already_joined", "this socket has already joined a room")
        verified = await self._verify(message.token, message.protocol)
        token = verified.token
        if not token.grants.room_join:
            raise p.ProtocolError(
                "grant_missing", "the token lacks the room_join grant", details={"grant": "room_join"}
            )
        if not token.grants.room:
            raise p.ProtocolError("room_required", "the token names no room")
        if message.resume is not None and message.resume not in self.live_rooms.by_resume_token:
            if await self._route(verified, token.grants.room, message.kind) is None:
                return None  # the session lives on the room's node, which answers through the pipe
        if message.resume is not None:
            room, existing = self.live_rooms.by_resume_token.get(message.resume, (None, None))
            if (
                room is None
                or existing is None
                or existing.identity != token.identity
                or room.room.instance_id != verified.instance.id
            ):
                raise p.ProtocolError("resume_failed", "the session expired or belongs to someone else")
            self.room, self.participant = room, existing
            chat = await self._room_chat(verified, room)  # a new socket: chat starts again too
            extra = {"chat": chat, **self.service.ice_servers(existing)}
            await room.resume(existing, self.send, message.id, extra=extra)
            return None
        viewer = not token.grants.can_publish and not token.grants.hidden  # a live room's viewer may go to an edge
        route = await self._route(verified, token.grants.room, message.kind, viewer=viewer)
        if route is None:
            return None
        cascade = self.service.relay.cascade
        if route.edge and cascade is not None:
            room = await cascade.edge_room(route.room)
        else:
            if cascade is not None:
                await cascade.stop_edge(route.room.id)
            room = self.live_rooms.live_for(route.room)
        # Until `joined` is out, the room's events for this participant wait (another's publish may
        # offer it tracks meanwhile): a client must never see an offer for a session it has not joined.
        self._held = []
        participant = await room.join(
            token.identity, token.name, token.grants, auto_subscribe=message.auto_subscribe, send=self._send_event
        )
        self.room, self.participant = room, participant
        # The participant, too: one whose socket dropped waits out the resume grace without one.
        self.service.revocations.hold(participant, credential_of(verified), functools.partial(_leave_revoked, room))
        try:
            if route.seat is not None and cascade is not None:
                await cascade.seated(route.room.id, route.seat)
            joined = room.joined_message(participant)
            if message.id is not None:
                joined["id"] = message.id
            joined["chat"] = await self._room_chat(verified, room)
            joined.update(self.service.ice_servers(participant))
            await self.send(joined)
            if self.service.metrics is not None:
                self.service.metrics.join_latency.observe(time.perf_counter() - started)
        finally:
            await self._release_held()
        await room.start_subscriptions(participant)
        return None

    async def _send_event(self, message: dict[str, Any]) -> None:
        """The participant's room events: held while its ``joined`` is on its way, sent otherwise."""
        if self._held is not None:
            self._held.append(message)
            return
        await self.send(message)

    async def _release_held(self) -> None:
        """Send what waited for ``joined``, in order; events arriving meanwhile queue behind them."""
        while self._held:
            message = self._held.pop(0)
            try:
                await self.send(message)
            except ConnectionError:
                self._held.clear()
        self._held = None

    async def _route(self, verified: Any, name: str, kind: str, *, viewer: bool = False) -> Route | None:
        """Where this join is served: the Route when here, None when this socket is piped to the node
        that serves it (the room's owner, or for a live room's ``viewer`` the node with its seat)."""
        token = verified.token
        relay = self.service.relay
        for _attempt in range(2):
            stored = await self.live_rooms.rooms.open(Actor(token.api_key, "api_key"), verified.instance.id, name, kind)
            if relayed(self.request):
                try:
                    return await relay.landed(self.request, stored, viewer=viewer)
                except ApiError as exc:
                    raise p.ProtocolError(
                        exc.code, "the room is moving to another node; reconnect and join again"
                    ) from None
            route = await relay.route(stored, verified.instance.region, viewer=viewer)
            if route.here:
                return route
            try:
                self.pipe = await relay.open_pipe(
                    self.request,
                    self.ws,
                    route.node,
                    self._raw,
                    max_msg_size=4 * p.MAX_MESSAGE_BYTES,
                    query={SEAT_PARAM: route.seat} if route.seat else None,
                )
            except aiohttp.ClientConnectorError:
                continue  # the node died before its registry entry expired: it is forgotten, route again
            if self.chat_session is not None:  # the serving node's session serves chat on this socket from now on
                await self.chat_session.stop()
                self.chat_session = None
            return None
        raise p.ProtocolError("owner_unreachable", "the room's node cannot be reached; retry")

    async def _room_chat(self, verified: Any, room: LiveRoom) -> dict[str, Any]:
        """The room's conversation, with this participant a member of it."""
        identity = verified.token.identity
        chat = await room_chat(self.service.chat, verified.instance.id, room.room.id, room.room.name, identity)
        await self._start_chat(verified)
        return chat

    async def closed(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
            self.pipe = None
        if self.room is not None and self.participant is not None and not self.left:
            self.room.disconnected(self.participant)
        if self.chat_session is not None:
            await self.chat_session.stop()
            self.chat_session = None


def credential_of(verified: VerifiedToken) -> Credential:
    """What a session was let in with, for :class:`Revocations`."""
    instance = verified.instance
    return Credential(verified.token.api_key, instance.id, instance.customer_id)


async def _leave_revoked(room: LiveRoom, participant: Participant, revoked: Revoked) -> None:
    """A participant whose credential went leaves (nothing, if it left already)."""
    await room.leave(participant, revoked.reason)


async def rtc_handler(request: web.Request) -> web.WebSocketResponse:
    # aiohttp's own limit sits above the protocol's, so an oversized message gets a
    # protocol error instead of a closed socket.
    ws = web.WebSocketResponse(max_msg_size=4 * p.MAX_MESSAGE_BYTES, heartbeat=20)
    if not ws.can_prepare(request).ok:
        raise bad_request("websocket_required", "GET /rtc is a WebSocket: send an Upgrade: websocket handshake")
    await ws.prepare(request)
    connection = Connection(ws, request)
    connection.live_rooms.sockets += 1
    open_sockets = request.app[OPEN_SOCKETS]
    open_sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await connection.handle(msg.data)
    finally:
        open_sockets.discard(ws)
        connection.live_rooms.sockets -= 1
        await connection.closed()
    return ws


async def close_sockets_on_shutdown(app: web.Application) -> None:
    """Tell every client the node is going (1012: reconnect, resume) instead of leaving its socket open.

    aiohttp's shutdown waits for running handlers, and an open socket's handler runs until its
    client hangs up: without this a stopping node waited its whole shutdown timeout for browsers
    that had no reason to leave, and they learnt of the stop only from a dead connection.
    """
    sockets = list(app[OPEN_SOCKETS])
    await asyncio.gather(
        *(ws.close(code=CLOSE_RECONNECT, message=b"node shutting down") for ws in sockets), return_exceptions=True
    )


def register(app: web.Application, service: RtcService) -> None:
    app[RTC] = service
    app[OPEN_SOCKETS] = set()
    app.on_shutdown.append(close_sockets_on_shutdown)
    app.router.add_get("/rtc", rtc_handler)
