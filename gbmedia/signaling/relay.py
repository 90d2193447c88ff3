"""Relaying a room's requests to the node that owns it.

Any node takes any client: a load balancer needs no affinity table and a client
needs no redirect logic. When the room of a request lives elsewhere, this node
forwards the HTTP request (WHIP/WHEP, room REST calls, LL-HLS, recordings) or pipes
the ``/rtc`` WebSocket to the owner's internal listener, signed with the cluster
secret. Media never takes this path: the owner's ICE candidates name its own media
address, so RTP goes straight there.

Every relayed request carries an HMAC over the sending node, a timestamp, the method
and the path, so a node accepts relays only from nodes that know the secret; a bad
signature is refused (403 ``cluster_auth_failed``) and logged. A relayed request is
served where it lands and never relayed again: when the target no longer owns the
room it answers 503 ``room_moving`` and the client retries.

A viewer of a live room (a ``/rtc`` join without ``can_publish``, a WHEP player) is
routed to the node that has a seat for it (:meth:`Relay.route`): the origin while
it has room, else an edge (gbmedia/rooms/cascade.py). Its seat travels with the
relayed request (the ``seat`` query parameter, under the signature), and the edge
serves it from its copy of the room instead of answering ``room_moving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web

from gbmedia.errors import ApiError
from gbmedia.http.middleware import Handler
from gbmedia.metrics import Sample
from gbmedia.rooms.cascade import Cascade
from gbmedia.rooms.placement import Placer
from gbmedia.rooms.registry import NodeInfo, NodeRegistry
from gbmedia.rooms.store import Room

log = logging.getLogger(__name__)

NODE_HEADER = "X-Gbmedia-Cluster-Node"
TIME_HEADER = "X-Gbmedia-Cluster-Time"
SIGNATURE_HEADER = "X-Gbmedia-Cluster-Signature"
MAX_SKEW_SECONDS = 30.0  # nodes' clocks (NTP) and the request's age may differ this much
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself are not copied.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}
# The close code of a socket whose room's node went away, drained or moved the room:
# "service restart" (RFC 6455 7.4.1, registered 1012) tells the client to reconnect.
CLOSE_RECONNECT = 1012

RELAYED_FROM: web.RequestKey[str] = web.RequestKey("relayed_from")


class ClusterAuth:
    """Signs and checks requests between the nodes of one cluster."""

    def __init__(self, secret: str, node_id: str) -> None:
        self._secret = secret.encode()
        self.node_id = node_id

    def _signature(self, node: str, stamp: str, method: str, path: str) -> str:
        text = f"{node}\n{stamp}\n{method.upper()}\n{path}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()

    def headers(self, method: str, path: str) -> dict[str, str]:
        stamp = f"{time.time():.3f}"
        return {
            NODE_HEADER: self.node_id,
            TIME_HEADER: stamp,
            SIGNATURE_HEADER: self._signature(self.node_id, stamp, method, path),
        }

    def signed(self, request: web.Request) -> bool:
        """True for a request whose cluster signature is valid (a bad one is refused by the middleware)."""
        try:
            return SIGNATURE_HEADER in request.headers and bool(self.verify(request, quiet=True))
        except ApiError:
            return False

    def verify(self, request: web.Request, *, quiet: bool = False) -> str:
        """The sending node's id; raises 403 when the signature or its age is wrong."""
        node = request.headers.get(NODE_HEADER, "")
        stamp = request.headers.get(TIME_HEADER, "")
        presented = request.headers.get(SIGNATURE_HEADER, "")
        try:
            age = abs(time.time() - float(stamp))
        except ValueError:
            age = float("inf")
        expected = self._signature(node, stamp, request.method, request.path_qs)
        if not node or age > MAX_SKEW_SECONDS or not hmac.compare_digest(presented, expected):
            if quiet:
                raise ApiError(403, "cluster_auth_failed", "the request's cluster signature is not valid")
            log.warning(
                "relayed request refused: bad cluster signature",
                extra={"from_node": node[:128], "path": request.path, "remote": request.remote, "age": age},
            )
            raise ApiError(403, "cluster_auth_failed", "the request's cluster signature is not valid")
        return node


def cluster_middleware(auth: ClusterAuth) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Checks the signature of relayed requests and marks them (they are never relayed again)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if SIGNATURE_HEADER in request.headers or NODE_HEADER in request.headers:
            request[RELAYED_FROM] = auth.verify(request)
        return await handler(request)

    return middleware


def relayed(request: web.Request) -> bool:
    return RELAYED_FROM in request


SEAT_PARAM = "seat"  # a routed viewer's seat at the node it is relayed to


@dataclass(frozen=True)
class Route:
    """Where a request for ``room`` is served: ``node`` (``here``: this one), as the room's owner or
    (``edge``) as one of a live room's edges; ``seat`` is a viewer's reservation there."""

    room: Room
    node: NodeInfo
    here: bool
    edge: bool = False
    seat: str | None = None


def _with_query(request: web.Request, extra: Mapping[str, str] | None) -> str:
    """The request's path and query, with ``extra`` parameters (what goes to the target, signed)."""
    if not extra:
        return request.path_qs
    return str(request.rel_url.update_query(dict(extra)))


@dataclass(eq=False)  # a pipe is itself, not its fields: kept in a set
class SocketPipe:
    """A client's ``/rtc`` socket piped to the owner's: frames pass through untouched."""

    upstream: aiohttp.ClientWebSocketResponse
    downstream: web.WebSocketResponse
    owner: NodeInfo
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._pump())

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.upstream.send_bytes(data)
        else:
            await self.upstream.send_str(data)

    async def _pump(self) -> None:
        """Owner → client; when the owner's socket ends, so does the client's (it reconnects)."""
        code = CLOSE_RECONNECT
        reason = b"owner node closed the session"
        try:
            while True:
                msg = await self.upstream.receive()
                if msg.type == WSMsgType.TEXT:
                    await self.downstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.downstream.send_bytes(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    if msg.type == WSMsgType.CLOSE and msg.extra:  # the owner's reason (a revocation's code)
                        reason = str(msg.extra).encode()[:120]
                    break
            if self.upstream.close_code is not None and self.upstream.close_code != 1006:
                code = self.upstream.close_code
        except (ConnectionError, aiohttp.ClientError):
            pass
        finally:
            if not self.downstream.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.downstream.close(code=code, message=reason)

    async def close(self) -> None:
        await self.upstream.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class Relay:
    """Finds a room's owner and forwards requests there (see the module docstring)."""

    def __init__(
        self, placement: Placer, registry: NodeRegistry, auth: ClusterAuth, cascade: Cascade | None = None
    ) -> None:
        self.placement = placement
        self.registry = registry
        self.auth = auth
        self.cascade = cascade if cascade is not None and cascade.enabled else None  # live rooms' edges
        self._session: aiohttp.ClientSession | None = None
        self.relayed_requests = 0
        self.relayed_sockets = 0
        self.pipes: set[SocketPipe] = set()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=3, sock_read=None),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        for pipe in list(self.pipes):
            await pipe.close()
        if self._session is not None:
            await self._session.close()

    async def owner(self, room: Room, region: str | None = None) -> NodeInfo | None:
        """The room's node when it is another one; None when this node serves it."""
        node = await self.placement.owner(room, region)
        return None if node.node_id == self.placement.node_id else node

    async def route(self, room: Room, region: str | None = None, *, viewer: bool = False) -> Route:
        """Where a new request for ``room`` goes: its owner, or for a ``viewer`` of a live room the node
        with a seat for it (the seat is taken now)."""
        owner = await self.placement.owner(room, region)
        me = self.placement.node_id
        if viewer and self.cascade is not None and room.kind == "live":
            seat = await self.cascade.seat_viewer(room, owner, region)
            return Route(room, seat.node, seat.node.node_id == me, seat.edge, seat.seat)
        return Route(room, owner, owner.node_id == me)

    async def landed(self, request: web.Request, room: Room, *, viewer: bool = False) -> Route:
        """A relayed request is served here: by the owner, or by an edge of the live room for a viewer.
        Anywhere else the room has moved on (503 ``room_moving``, the client retries)."""
        me = self.registry.me
        seat = request.query.get(SEAT_PARAM) or None
        if (await self.placement.owner(room)).node_id == me.node_id:
            return Route(room, me, True, seat=seat)
        if viewer and self.cascade is not None and room.kind == "live" and await self.cascade.serves(room.id):
            return Route(room, me, True, edge=True, seat=seat)
        raise ApiError(503, "room_moving", "the room is moving to another node; retry", {"retry_after": 1})

    async def forward_viewer(
        self, request: web.Request, room: Room, region: str | None = None
    ) -> web.StreamResponse | Route:
        """A viewer's HTTP request (WHEP): the answer of the node with its seat, or the Route when this
        node serves it."""
        if relayed(request):
            return await self.landed(request, room, viewer=True)
        for _attempt in range(2):
            route = await self.route(room, region, viewer=True)
            if route.here:
                return route
            try:
                return await self._forward_http(request, route.node, {SEAT_PARAM: route.seat} if route.seat else None)
            except aiohttp.ClientConnectorError:
                await self.registry.forget(route.node)
        raise ApiError(503, "owner_unreachable", "the room's node cannot be reached; retry", {"retry_after": 1})

    async def forward_to(self, request: web.Request, node_id: str) -> web.StreamResponse | None:
        """Forward ``request`` to the node ``node_id`` (a session it holds); None when that is this node,
        or when the request was relayed already."""
        if node_id == self.placement.node_id or relayed(request):
            return None
        node = await self.registry.get(node_id)
        if node is None:
            raise ApiError(404, "session_not_found", "the node that held this session is gone")
        return await self._forward_http(request, node)

    async def place(self, room: Room, region: str | None = None) -> str:
        """Place a new room now (REST create), so its node is known before anyone joins."""
        return (await self.placement.owner(room, region)).node_id

    async def forward(self, request: web.Request, room: Room, region: str | None = None) -> web.StreamResponse | None:
        """Forward ``request`` to the room's owner; None when this node serves the room itself."""
        for _attempt in range(2):
            owner = await self.owner(room, region)
            if owner is None:
                return None
            if relayed(request):
                raise ApiError(503, "room_moving", "the room is moving to another node; retry", {"retry_after": 1})
            try:
                return await self._forward_http(request, owner)
            except aiohttp.ClientConnectorError:
                await self.registry.forget(owner)  # refused: dead before its entry expired; place again
        raise ApiError(503, "owner_unreachable", "the room's node cannot be reached; retry", {"retry_after": 1})

    async def _forward_http(
        self, request: web.Request, owner: NodeInfo, query: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        path = _with_query(request, query)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers.update(self.auth.headers(request.method, path))
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        body = await request.read()
        async with self.session.request(
            request.method, owner.internal_url + path, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            response.headers["X-Gbmedia-Served-By"] = owner.node_id
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        self.relayed_requests += 1
        return response

    async def open_pipe(
        self,
        request: web.Request,
        downstream: web.WebSocketResponse,
        owner: NodeInfo,
        first: str | bytes,
        max_msg_size: int,
        query: Mapping[str, str] | None = None,
    ) -> SocketPipe:
        """Open the owner's ``/rtc``, hand it the client's first frame (its join) and pipe the rest."""
        path = _with_query(request, query)
        try:
            upstream = await self.session.ws_connect(
                owner.internal_url + path,
                headers=self.auth.headers("GET", path),
                heartbeat=20,
                max_msg_size=max_msg_size,
            )
        except aiohttp.ClientConnectorError:
            await self.registry.forget(owner)
            raise
        pipe = SocketPipe(upstream, downstream, owner)
        self.pipes.add(pipe)
        await pipe.send(first)
        pipe.start()
        assert pipe.task is not None
        pipe.task.add_done_callback(lambda _t: self.pipes.discard(pipe))
        self.relayed_sockets += 1
        return pipe

    async def end_pipes(self) -> None:
        """Close every piped socket so its client reconnects elsewhere (this node drains)."""
        for pipe in list(self.pipes):
            with contextlib.suppress(Exception):
                await pipe.downstream.close(code=CLOSE_RECONNECT, message=b"node draining")
            await pipe.close()

    def samples(self) -> list[Sample]:
        return [
            Sample(
                "gbmedia_relayed_requests_total",
                "HTTP requests forwarded to a room's owner",
                self.relayed_requests,
                counter=True,
            ),
            Sample(
                "gbmedia_relayed_sockets_total",
                "/rtc sockets piped to a room's owner",
                self.relayed_sockets,
                counter=True,
            ),
            Sample("gbmedia_relayed_sockets", "/rtc sockets piped to a room's owner now", len(self.pipes)),
        ]
