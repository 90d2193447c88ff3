"""Cascading live rooms: an audience that outgrows its node is served by edge nodes.

A live room lives on one node, its **origin** (placement.py). When the origin
serves ``cascade_viewers`` viewers already, or its placement load reaches 1, new
viewers go to **edge** nodes instead: an edge keeps a copy of the room (a
:class:`~gbmedia.rooms.live.LiveRoom` with ``edge`` set) whose only host is the
room's program, pulled from another node over WebRTC (:mod:`gbmedia.sfu.pull`),
and serves its viewers from it through the ordinary forwarding path. Hosts and
publishers always go to the origin.

- **Seats** (Redis): ``gbmedia:viewers:<room>`` holds the viewers each node serves,
  ``gbmedia:edges:<room>`` each edge and the node it pulls from, and
  ``gbmedia:seats:<room>`` the viewers routed to a node and not there yet (each
  expires after :data:`SEAT_SECONDS`, and is removed when its viewer has joined).
  One script (:data:`_SEAT`) gives a viewer its seat: the origin while it has one,
  else the fullest edge with one left (edges fill up in turn, and the emptiest
  release), else a new edge. The seat is taken in the same script, so nodes routing
  viewers at once never overfill a node.
- **A new edge** is the best of :func:`~gbmedia.rooms.placement.edge_candidates`
  (another worker of the origin's machine first, then the closest region, the least
  loaded). It pulls from the shallowest node of the room's tree that feeds fewer
  than ``cascade_fanout`` edges, the origin first: once the origin feeds that many,
  edges feed edges.
- **The feed** is a WHEP session at the feeding node whose caller is a node: the
  cluster listener's ``/cluster/cascade/{room}`` (signaling/cascade.py), signed with
  the cluster secret, so no participant can open one. Keyframe requests from an
  edge's viewers go up the chain to the publisher (each hop's PublishedTrack asks
  the one above, rate limited per hop); NACKs are answered by each hop from the
  packets it sent.
- **The program follows**: every copy announces its program on the room's bus
  channel; an edge whose feeding node shows another program pulls anew and swaps
  its host (its viewers see the old host leave and the new one publish), and drops
  it when the feeding node shows nothing.
- **Counts, hearts and chat**: each copy reports its viewers (Redis and the bus), so
  ``viewer_count`` is the room's total on every node; reactions are handed to the
  other copies on the bus; chat crosses nodes by itself (messaging's bus).
- **Release**: an edge whose last viewer (or player, or edge pulling from it) left
  releases its copy after ``cascade_linger_seconds``: it leaves the tree, closes
  its feed at the feeding node and drops the room. When the feeding node's copy
  ends, the edge's does too (closed for a closed room, moved otherwise: its viewers
  rejoin through any node and get a seat again).

Limits: edge viewers see the program (one video, one audio), not every host's
tracks, and a host's mute is not mirrored to them (the origin simply stops
forwarding); they cannot be invited on stage; a simulcast program reaches an edge
as the one layer the edge's bandwidth estimate allows; ``max_participants`` is
checked per copy; one identity watching on two nodes counts twice; a viewer's
resume works on the node that served it, not through another one (the client joins
afresh); a viewer routed to an edge that released its copy in the same instant gets
``room_moving`` and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from gbmedia.bus import Bus, Subscription
from gbmedia.metrics import Sample
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.participant import Participant
from gbmedia.rooms.placement import LocalPlacement, RedisPlacement, edge_candidates, may_serve_viewers
from gbmedia.rooms.program import Program
from gbmedia.rooms.registry import NodeInfo, NodeRegistry
from gbmedia.rooms.store import Room, Rooms
from gbmedia.sfu.peers import NegotiationError, TrackInfo
from gbmedia.sfu.pull import PullPeer
from gbmedia.tenancy.tokens import Grants

log = logging.getLogger(__name__)

EDGES_KEY = "gbmedia:edges:"  # + room id: hash, edge node id -> the node it pulls from
VIEWERS_KEY = "gbmedia:viewers:"  # + room id: hash, node id -> viewers it serves
SEATS_KEY = "gbmedia:seats:"  # + room id: sorted set, "<node id> <seat>" -> when the seat lapses
CHANNEL = "gbmedia.live."  # + room id: the bus channel of a live room's copies
SEAT_SECONDS = 15.0  # a routed viewer holds its seat this long before it has joined
READY_SECONDS = 10.0  # a new edge copy waits this long for its first feed before serving anyway
KEY_TTL_SECONDS = 86_400  # the room's keys outlive a forgotten room by this much at most
PULL_ATTEMPTS = 4  # failed pulls in a row before an edge gives its copy up
PULL_BACKOFF = 0.5  # seconds before the first retry; doubled each time
REPORT_INTERVAL = 0.25  # seconds: the most often a copy tells the others its viewers (a crowd arriving)


def program_key(program: Program) -> str:
    """The origin's program as edges compare it ("" when nobody is live)."""
    if program.video is None:
        return ""
    return f"{program.video.id}/{program.audio.id if program.audio else ''}"


@dataclass(frozen=True)
class FeedProgram:
    """What a feed carries, as its feeding node says (a header of its answer)."""

    key: str  # the origin's program (program_key there)
    identity: str  # the host whose program it is
    name: str
    tracks: dict[str, TrackInfo]  # by kind

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "identity": self.identity,
                "name": self.name,
                "tracks": {kind: {"source": t.source, "name": t.name} for kind, t in self.tracks.items()},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> FeedProgram:
        data = json.loads(raw)
        tracks = {kind: TrackInfo(str(t["source"]), str(t["name"])) for kind, t in data["tracks"].items()}
        return cls(str(data["key"]), str(data["identity"]), str(data["name"]), tracks)


@dataclass(frozen=True)
class FeedAnswer:
    sdp: str
    location: str  # the session at the feeding node (stopping the feed deletes it)
    program: FeedProgram


class FeedUnavailable(Exception):
    """The feeding node sends nothing now: ``room_not_live`` (nobody is live), ``not_serving`` (it has no
    copy of the room), ``unreachable`` (it does not answer) or ``feed_failed``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Feeder(Protocol):
    """How an edge asks another node for a room's program (signaling/cascade.py: the cluster listener)."""

    async def pull(self, source: NodeInfo, room_id: uuid.UUID, offer_sdp: str) -> FeedAnswer: ...

    async def stop(self, source: NodeInfo, location: str) -> None: ...


@dataclass(frozen=True)
class Seat:
    """Where a viewer is served; ``seat`` is its reservation there (None: nothing reserved)."""

    node: NodeInfo
    seat: str | None = None
    edge: bool = False  # served by an edge copy (the node does not own the room)


# Seat a viewer of a live room (see the module docstring). KEYS: edges, viewers, seats.
# ARGV: origin, limit, fanout, now, seat expiry, seat id, then counted lists: the live nodes,
# the nodes that may serve viewers, and (uncounted, to the end) the new-edge candidates, best first.
# Returns {node, parent, new (1/0)}, or false when no node has a seat and none can become an edge.
_SEAT = (
    f"local KEY_TTL = {KEY_TTL_SECONDS}\n"
    + """
local origin, limit, fanout = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now, expires, seat = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local i = 7
local alive, open = {}, {}
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do alive[ARGV[i]] = true; i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do open[ARGV[i]] = true; i = i + 1 end
local fresh = {}
while i <= #ARGV do fresh[#fresh + 1] = ARGV[i]; i = i + 1 end

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local tree, order = {}, {}
local flat = redis.call('HGETALL', KEYS[1])
for j = 1, #flat, 2 do
  local edge, parent = flat[j], flat[j + 1]
  if alive[edge] then
    tree[edge] = parent
    order[#order + 1] = edge
  else
    redis.call('HDEL', KEYS[1], edge)
    redis.call('HDEL', KEYS[2], edge)
  end
end
table.sort(order)
local taken = {}
local counts = redis.call('HGETALL', KEYS[2])
for j = 1, #counts, 2 do taken[counts[j]] = tonumber(counts[j + 1]) end
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local node = string.match(member, '^(.*) [^ ]+$')
  if node then taken[node] = (taken[node] or 0) + 1 end
end

local function take(node, parent, new)
  redis.call('ZADD', KEYS[3], expires, node .. ' ' .. seat)
  for k = 1, 3 do redis.call('EXPIRE', KEYS[k], KEY_TTL) end
  return {node, parent, new}
end

if open[origin] and (taken[origin] or 0) < limit then return take(origin, '', 0) end
local best, most = nil, -1
for _, edge in ipairs(order) do
  local t = taken[edge] or 0
  if open[edge] and t < limit and t > most then best, most = edge, t end
end
if best then return take(best, tree[best], 0) end

local chosen = nil
for _, node in ipairs(fresh) do
  if node ~= origin and not tree[node] then chosen = node; break end
end
if not chosen then return false end
local children = {}
for _, parent in pairs(tree) do children[parent] = (children[parent] or 0) + 1 end
local function depth(node)
  local d = 0
  while tree[node] and d < 64 do node = tree[node]; d = d + 1 end
  return d
end
local parent, shallowest = nil, nil
local feeders = {origin}
for _, edge in ipairs(order) do feeders[#feeders + 1] = edge end
for _, node in ipairs(feeders) do
  if (node == origin or open[node]) and (children[node] or 0) < fanout then
    local d = depth(node)
    if parent == nil or d < shallowest then parent, shallowest = node, d end
  end
end
if parent == nil then parent = origin end
redis.call('HSET', KEYS[1], chosen, parent)
return take(chosen, parent, 1)
"""
)

# An edge leaves the room's tree unless a viewer is on its way to it (ARGV[3] "force": even then).
# The edges it fed (none is pulling, or it would not leave) pull from its own feeding node instead.
# KEYS: edges, viewers, seats. ARGV: node, now, force (1/0). Returns 1 when it left.
_LEAVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
if ARGV[3] ~= '1' then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if string.sub(member, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then return 0 end
  end
end
local mine = redis.call('HGET', KEYS[1], ARGV[1])
if mine then
  local flat = redis.call('HGETALL', KEYS[1])
  for j = 1, #flat, 2 do
    if flat[j + 1] == ARGV[1] then redis.call('HSET', KEYS[1], flat[j], mine) end
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RoomLink:
    """One live room's copy on this node, tied to its copies on the others (an ``AudienceLink``)."""

    def __init__(self, cascade: Cascade, live: LiveRoom) -> None:
        self.cascade = cascade
        self.live = live
        audience = live.audience
        assert audience is not None
        self.audience = audience
        self.room_id = live.room.id
        self.channel = CHANNEL + str(live.room.id)
        self.feed: EdgeFeed | None = None  # set on an edge copy
        self.ready = asyncio.Event()  # subscribed to the room's channel
        self.ended = False
        self._subscription: Subscription | None = None
        self._dirty = False
        self.writing = asyncio.Lock()  # one count write at a time, each counting when it writes: the last is right
        self._writer: asyncio.Task[None] | None = None
        self._reported: int | None = None

    async def start(self) -> None:
        try:
            self._subscription = await self.cascade.bus.subscribe(self.channel, self._on_message)
        except Exception:  # Redis away: counts and hearts stay local until the heartbeat's sync
            log.exception("could not follow a live room's other nodes", extra={"room_id": str(self.room_id)})
        finally:
            self.ready.set()
        if self.ended and self._subscription is not None:  # ended while subscribing
            await self._subscription.close()

    async def _publish(self, message: dict[str, Any]) -> None:
        try:
            await self.cascade.bus.publish(self.channel, {**message, "node": self.cascade.node_id})
        except Exception:  # at most once, like the bus itself: the heartbeat's sync repairs counts
            log.warning("could not tell a live room's other nodes", extra={"room_id": str(self.room_id)}, exc_info=True)

    # --- AudienceLink --------------------------------------------------------------------

    def local_changed(self) -> None:
        self._dirty = True
        if self._writer is None and not self.ended:
            self._writer = self.cascade.spawn(self._write())
        if self.feed is not None:
            self.feed.audience_changed()

    async def _write(self) -> None:
        """Report this node's viewers (Redis for seats, the bus for the other copies): the latest value,
        at most every :data:`REPORT_INTERVAL` (a viewer's own seat is counted at once, see ``seated``)."""
        try:
            while self._dirty and not self.ended:
                self._dirty = False
                async with self.writing:
                    count = self.audience.local_viewer_count()
                    if count == self._reported:
                        continue
                    try:
                        await self.cascade.redis.hset(VIEWERS_KEY + str(self.room_id), self.cascade.node_id, count)
                    except Exception:
                        log.warning("could not report a live room's viewers", exc_info=True)
                        continue
                self._reported = count
                await self._publish({"type": "viewers", "count": count})
                await asyncio.sleep(REPORT_INTERVAL)
        finally:
            self._writer = None

    async def reactions(self, counts: dict[str, int]) -> None:
        await self._publish({"type": "reactions", "counts": counts})

    async def program_changed(self, program: Program) -> None:
        key = self.feed.key_of(program) if self.feed is not None else program_key(program)
        await self._publish({"type": "program", "key": key})

    async def closed(self) -> None:
        """This copy ends: the others forget its viewers; an edge leaves the tree and stops its feed."""
        if self.ended:
            return
        self.ended = True
        self.cascade.links.pop(self.room_id, None)
        await self._publish({"type": "ended", "message": self.live.end_message})
        if self.feed is not None:
            await self.feed.stop()
        else:
            with contextlib.suppress(Exception):
                await self.cascade.redis.hdel(VIEWERS_KEY + str(self.room_id), self.cascade.node_id)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()

    # --- the other copies ----------------------------------------------------------------

    async def _on_message(self, message: dict[str, Any]) -> None:
        node = message.get("node")
        if not isinstance(node, str) or node == self.cascade.node_id or self.ended:
            return
        kind = message.get("type")
        if kind == "viewers":
            self.audience.set_remote(node, int(message.get("count") or 0))
        elif kind == "reactions":
            counts = message.get("counts")
            if isinstance(counts, dict):
                await self.audience.remote_reactions({str(k): int(v) for k, v in counts.items()})
        elif kind == "program":
            if self.feed is not None and node == self.feed.parent_id:
                self.feed.parent_shows(str(message.get("key") or ""))
        elif kind == "ended":
            self.audience.set_remote(node, 0)
            if self.feed is not None and node == self.feed.parent_id:
                ended = message.get("message")
                await self.feed.upstream_ended(ended if isinstance(ended, dict) else None)

    async def sync(self, counts: dict[str, int], alive: set[str]) -> None:
        """The heartbeat's repair: the other nodes' counts as Redis has them (dead nodes left out)."""
        me = self.cascade.node_id
        remote = {n: c for n, c in counts.items() if n != me and n in alive and c > 0}
        for node in set(self.audience.remote) | set(remote):
            self.audience.set_remote(node, remote.get(node, 0))
        if counts.get(me) != self.audience.local_viewer_count():
            self._reported = None  # Redis lost it (or never had it): write it again
            self.local_changed()


class EdgeFeed:
    """An edge copy's program: pulled from the feeding node, followed as it changes, released when unwatched."""

    def __init__(self, cascade: Cascade, live: LiveRoom, link: RoomLink) -> None:
        self.cascade = cascade
        self.live = live
        self.link = link
        self.room_id = live.room.id
        self.parent_id: str | None = None
        self.source: NodeInfo | None = None  # the node the current feed comes from
        self.stage: Participant | None = None  # the host the viewers see
        self.peer: PullPeer | None = None
        self.location: str | None = None
        self.key = ""  # the origin program the stage shows
        self.wanted: str | None = None  # the program the feeding node shows (None: not known yet)
        self.first = asyncio.Event()  # the first pull settled (a host on stage, or nothing to show)
        self.stopped = False
        self._keys: dict[str, str] = {}  # stage participant id -> the program key it shows
        self._wake = asyncio.Event()
        self._stale = False
        self._force = False  # pull anew even if the program is the same (the feeding node changed)
        self._task: asyncio.Task[None] | None = None
        self._linger: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self.cascade.spawn(self._run())
        self.audience_changed()  # nobody may come: the linger starts now

    def key_of(self, program: Program) -> str:
        if program.video is None:
            return ""
        return self._keys.get(program.video.participant_id, "")

    def program(self) -> FeedProgram | None:
        """What this copy shows now, to feed an edge that pulls from it."""
        audience = self.live.audience
        program = audience.current_program if audience is not None else None
        if program is None or program.video is None:
            return None
        host = self.live.participants.get(program.video.participant_id)
        if host is None:
            return None
        tracks = {t.kind: TrackInfo(t.source, t.name) for t in (program.video, program.audio) if t is not None}
        return FeedProgram(self.key_of(program), host.identity, host.name, tracks)

    # --- following the feeding node ---------------------------------------------------------

    def parent_shows(self, key: str) -> None:
        self.wanted = key
        self.poke()

    def poke(self) -> None:
        self._stale = False
        self._wake.set()

    async def _run(self) -> None:
        await self.link.ready.wait()
        failures = 0
        while not self.stopped:
            self._wake.clear()
            try:
                if self.wanted == "":
                    await self._drop_stage()
                elif self._force or (
                    not self._stale and (self.wanted is None or self.wanted != self.key or self.stage is None)
                ):
                    self._force = False
                    await self._pull()
                failures = 0
            except FeedUnavailable as exc:
                if exc.code == "room_not_live":
                    self.wanted = ""
                    await self._drop_stage()
                    failures = 0
                else:
                    failures += 1
                    log.warning(
                        "edge could not pull a live room's program",
                        extra={"room_id": str(self.room_id), "from": self.parent_id, "code": exc.code},
                    )
                    if failures >= PULL_ATTEMPTS:
                        self.first.set()
                        await self._lost("upstream_unreachable")
                        return
                    await self.cascade.reparent(self.room_id)
                    await asyncio.sleep(PULL_BACKOFF * 2 ** (failures - 1))
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("edge feed failed", extra={"room_id": str(self.room_id)})
                failures += 1
                if failures >= PULL_ATTEMPTS:
                    self.first.set()
                    await self._lost("upstream_unreachable")
                    return
                await asyncio.sleep(PULL_BACKOFF * 2 ** (failures - 1))
                continue
            self.first.set()
            await self._wake.wait()

    async def _pull(self) -> None:
        """Pull the feeding node's program anew and put it on stage in place of the old one."""
        feeder = self.cascade.feeder
        if feeder is None:
            raise FeedUnavailable("feed_failed", "this node cannot pull feeds")
        self.parent_id = await self.cascade.parent_of(self.room_id)
        source = await self.cascade.registry.get(self.parent_id) if self.parent_id else None
        if source is None:
            raise FeedUnavailable("unreachable", f"the feeding node {self.parent_id} is not alive")
        stage = Participant("", "", Grants(), auto_subscribe=False, send_to_socket=None, fed_by=source.node_id)
        peer = PullPeer(stage.id, address=self.live.registry.media_address)
        try:
            answer = await feeder.pull(source, self.room_id, await peer.offer())
        except BaseException:
            await peer.close()
            raise
        try:
            await peer.accept(answer.sdp, answer.program.tracks)
        except (NegotiationError, ValueError) as exc:
            await peer.close()
            with contextlib.suppress(Exception):
                await feeder.stop(source, answer.location)
            raise FeedUnavailable("feed_failed", f"the feed's answer cannot be used: {exc}") from None
        program = answer.program
        stage.identity, stage.name = program.identity, program.name
        stage.grants = Grants(room=self.live.room.name, room_join=True, can_publish=True)
        self._watch(peer)
        if self.wanted is not None and program.key != self.wanted:
            self._stale = True  # the feeding node is not there yet: wait for its next announcement
        elif self.wanted is None:
            self.wanted = program.key
        old, old_peer, old_source, old_location = self.stage, self.peer, self.source, self.location
        self.stage, self.peer, self.source, self.location, self.key = stage, peer, source, answer.location, program.key
        self._keys[stage.id] = program.key
        try:
            await self.live.add_feed(stage, peer)
        except Exception:
            self.stage, self.peer, self.source, self.location = old, old_peer, old_source, old_location
            await peer.close()
            with contextlib.suppress(Exception):
                await feeder.stop(source, answer.location)
            raise
        log.info(
            "edge pulls a live room's program",
            extra={"room_id": str(self.room_id), "from": source.node_id, "host": program.identity},
        )
        if old is not None:
            await self._retire(old, old_source, old_location)

    def _watch(self, peer: PullPeer) -> None:
        @peer.pc.on("connectionstatechange")
        async def on_state() -> None:
            if peer.pc.connectionState in ("failed", "closed") and not peer.closed and peer is self.peer:
                await self.upstream_ended(None)

    async def _retire(self, old: Participant, source: NodeInfo | None, location: str | None) -> None:
        self._keys.pop(old.id, None)
        with contextlib.suppress(Exception):
            await self.live.leave(old, "program_changed")
        if source is not None and location is not None and self.cascade.feeder is not None:
            with contextlib.suppress(Exception):
                await self.cascade.feeder.stop(source, location)

    async def _drop_stage(self) -> None:
        old, source, location = self.stage, self.source, self.location
        self.stage, self.peer, self.source, self.location, self.key = None, None, None, None, ""
        if old is not None:
            await self._retire(old, source, location)

    # --- the end ------------------------------------------------------------------------

    async def upstream_ended(self, message: dict[str, Any] | None) -> None:
        """The feeding node's copy ended (``message``: what its participants were told) or its feed broke."""
        if self.stopped:
            return
        try:  # the room's own node closes it in PostgreSQL before it tells anyone
            room = await self.cascade.rooms.get(None, self.room_id)
        except Exception:
            room = None
        if room is not None and room.status == "closed":
            told = message is not None and message.get("type") == "room_closed"
            await self._close(str(message.get("reason") or "api") if told else "api")  # type: ignore[union-attr]
        elif not await self._feed_from_origin():
            await self._lost("upstream_lost")

    async def _feed_from_origin(self) -> bool:
        """An edge that fed this one is gone: pull from the room's own node instead, the viewers staying.
        False when the origin itself is gone (the room is placed again; the viewers move to it)."""
        origin = await self.cascade.origin_of(self.room_id)
        if origin is None or origin.node_id in (self.parent_id, self.cascade.node_id):
            return False
        await self.cascade.rejoin_tree(self.room_id, origin.node_id)
        log.info(
            "edge pulls from the room's node: the edge that fed it is gone",
            extra={"room_id": str(self.room_id), "gone": self.parent_id, "origin": origin.node_id},
        )
        self._force = True
        self.poke()
        return True

    async def _close(self, reason: str) -> None:
        if self.cascade.live_rooms.live.get(self.room_id) is self.live:
            del self.cascade.live_rooms.live[self.room_id]
        await self.live.close(reason)

    async def _lost(self, reason: str) -> None:
        """Viewers move (they rejoin through any node and get a seat again)."""
        if not self.live.closed:
            log.warning("edge copy of a live room lost its feed", extra={"room_id": str(self.room_id), "why": reason})
            await self.live.move_away(reason)

    def audience_changed(self) -> None:
        """Linger once nobody is served here; stop lingering when someone is."""
        audience = self.live.audience
        if self.stopped or audience is None:
            return
        if audience.audience_size() > 0:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
        elif self._linger is None:
            self._linger = self.cascade.spawn(self._release_later())

    async def _release_later(self) -> None:
        try:
            while not self.stopped:
                await asyncio.sleep(self.cascade.linger)
                audience = self.live.audience
                if audience is None or audience.audience_size() > 0:
                    return
                if await self.cascade.leave_tree(self.room_id, force=False):
                    if audience.audience_size() > 0:  # someone came in the meantime: stay
                        await self.cascade.rejoin_tree(self.room_id, self.parent_id)
                        return
                    log.info("edge released a live room", extra={"room_id": str(self.room_id)})
                    self._linger = None
                    await self._close("edge_released")
                    return
        finally:
            if self._linger is asyncio.current_task():
                self._linger = None

    async def stop(self) -> None:
        """The copy ended: stop pulling, close the session at the feeding node, leave the tree."""
        if self.stopped:
            return
        self.stopped = True
        self.first.set()
        self._wake.set()
        for task in (self._task, self._linger):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.peer is not None and not self.peer.closed:
            await self.peer.close()
        if self.source is not None and self.location is not None and self.cascade.feeder is not None:
            with contextlib.suppress(Exception):
                await self.cascade.feeder.stop(self.source, self.location)
        self.location = None
        self.cascade.feeds.pop(self.room_id, None)
        with contextlib.suppress(Exception):
            await self.cascade.leave_tree(self.room_id, force=True)

    async def check(self, alive: set[str]) -> None:
        """The heartbeat's look: the feeding node still lives; a missed announcement is caught up."""
        if self.stopped or self._task is None or self._task.done():
            return
        if self.parent_id is not None and self.parent_id not in alive and not self._force:
            await self.upstream_ended(None)
            return
        if self.wanted != self.key and self.wanted != "":
            self.poke()


class Cascade:
    """This node's part in cascading live rooms (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        bus: Bus,
        registry: NodeRegistry,
        placement: LocalPlacement | RedisPlacement,
        live_rooms: LiveRooms,
        rooms: Rooms,
        *,
        viewers: int,
        fanout: int,
        linger: float,
    ) -> None:
        self._redis = redis
        self.bus = bus
        self.registry = registry
        self.placement = placement
        self.live_rooms = live_rooms
        self.rooms = rooms
        self.viewers = viewers
        self.fanout = fanout
        self.linger = linger
        self.enabled = redis is not None and bus.spans_nodes
        self.feeder: Feeder | None = None  # set by the signaling side (it speaks HTTP to the other nodes)
        self.links: dict[uuid.UUID, RoomLink] = {}
        self.feeds: dict[uuid.UUID, EdgeFeed] = {}
        self.edges_added = 0
        self._edges: dict[uuid.UUID, int] = {}  # edges of the rooms this node is the origin of (metrics)
        self._tasks: set[asyncio.Task[Any]] = set()
        if redis is not None:
            self._seat = redis.register_script(_SEAT)
            self._leave = redis.register_script(_LEAVE)
        live_rooms.on_created(self._attach)

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None
        return self._redis

    @property
    def node_id(self) -> str:
        return self.registry.me.node_id

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _attach(self, live: LiveRoom) -> None:
        """Every live room's copy on this node gets its link to the others."""
        if not self.enabled or live.audience is None:
            return
        link = RoomLink(self, live)
        previous = self.links.get(live.room.id)
        if previous is not None:
            previous.ended = True
        self.links[live.room.id] = link
        live.audience.link = link
        self.spawn(link.start())

    # --- seats ------------------------------------------------------------------------------

    async def seat_viewer(self, room: Room, origin: NodeInfo, region: str | None = None) -> Seat:
        """Where a new viewer of ``room`` (owned by ``origin``) is served, its seat taken there."""
        if not self.enabled or room.kind != "live":
            return Seat(origin)
        nodes = await self.registry.live_nodes()
        by_id = {n.node_id: n for n in nodes}
        by_id.setdefault(origin.node_id, origin)
        alive = list(by_id)
        open_ids = [n.node_id for n in by_id.values() if may_serve_viewers(n)]
        fresh = [n.node_id for n in edge_candidates(list(by_id.values()), origin, region=region)]
        seat = uuid.uuid4().hex
        now = time.time()
        keys = [EDGES_KEY + str(room.id), VIEWERS_KEY + str(room.id), SEATS_KEY + str(room.id)]
        args: list[Any] = [origin.node_id, self.viewers, self.fanout, now, now + SEAT_SECONDS, seat]
        args += [len(alive), *alive, len(open_ids), *open_ids, *fresh]
        result = await self._seat(keys=keys, args=args)
        if not result:
            return Seat(origin)  # nobody else can take viewers: the origin serves past its limit
        node_id, parent, new = _text(result[0]), _text(result[1]), int(result[2])
        node = by_id.get(node_id, origin)
        if new:
            self.edges_added += 1
            log.info(
                "live room cascades to a new edge",
                extra={"room_id": str(room.id), "edge": node_id, "from": parent, "origin": origin.node_id},
            )
        return Seat(node, seat, edge=node.node_id != origin.node_id)

    async def seated(self, room_id: uuid.UUID, seat: str) -> None:
        """The viewer of ``seat`` has joined here: its reservation becomes a counted viewer."""
        if not self.enabled:
            return
        link = self.links.get(room_id)
        async with link.writing if link is not None else contextlib.nullcontext():
            live = self.live_rooms.live.get(room_id)
            count = live.audience.local_viewer_count() if live is not None and live.audience is not None else 0
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(SEATS_KEY + str(room_id), f"{self.node_id} {seat}")
                pipe.hset(VIEWERS_KEY + str(room_id), self.node_id, count)
                await pipe.execute()

    async def serves(self, room_id: uuid.UUID) -> bool:
        """Whether this node is one of the room's edges."""
        if not self.enabled:
            return False
        return bool(await self.redis.hexists(EDGES_KEY + str(room_id), self.node_id))

    async def parent_of(self, room_id: uuid.UUID) -> str | None:
        raw = await self.redis.hget(EDGES_KEY + str(room_id), self.node_id)
        return _text(raw) if raw is not None else None

    async def origin_of(self, room_id: uuid.UUID) -> NodeInfo | None:
        """The room's live owner, as placement has it (None: unplaced, or its node is dead); places nothing."""
        owner = (await self.placement.owners([room_id]))[0]
        return await self.registry.get(owner) if owner is not None else None

    async def reparent(self, room_id: uuid.UUID) -> None:
        """The feeding node failed us: pull from the origin from now on."""
        origin = await self.origin_of(room_id)
        if origin is not None and origin.node_id != self.node_id:
            await self.rejoin_tree(room_id, origin.node_id)

    async def leave_tree(self, room_id: uuid.UUID, *, force: bool) -> bool:
        keys = [EDGES_KEY + str(room_id), VIEWERS_KEY + str(room_id), SEATS_KEY + str(room_id)]
        return bool(await self._leave(keys=keys, args=[self.node_id, time.time(), "1" if force else "0"]))

    async def rejoin_tree(self, room_id: uuid.UUID, parent_id: str | None) -> None:
        if parent_id is not None:
            await self.redis.hset(EDGES_KEY + str(room_id), self.node_id, parent_id)

    # --- edge copies --------------------------------------------------------------------------

    async def edge_room(self, room: Room) -> LiveRoom:
        """This node's edge copy of ``room``, made on first use; its first feed is awaited (within
        :data:`READY_SECONDS`), so a viewer finds the host on stage when it arrives."""
        live = self.live_rooms.live.get(room.id)
        if live is None or live.closed:
            live = self.live_rooms.live_for(room, edge=True)
            link = self.links.get(room.id)
            if link is None or link.live is not live:
                raise FeedUnavailable("not_serving", "live rooms do not cascade on this node")
            feed = EdgeFeed(self, live, link)
            link.feed = feed
            self.feeds[room.id] = feed
            feed.start()
        elif not live.edge:
            return live  # the room's own copy: this node owns it now
        current = self.feeds.get(room.id)
        if current is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(current.first.wait()), READY_SECONDS)
        return live

    async def stop_edge(self, room_id: uuid.UUID) -> None:
        """This node serves the room as its owner now: an edge copy it kept moves its viewers away."""
        live = self.live_rooms.live.get(room_id)
        if live is not None and live.edge and not live.closed:
            await live.move_away("owner_changed")

    async def source(self, room: Room) -> LiveRoom:
        """The copy that feeds an edge pulling ``room`` from this node (an edge's made on demand)."""
        live = self.live_rooms.live.get(room.id)
        if live is not None and not live.closed and not live.edge:
            return live
        if room.status != "open" or not await self.serves(room.id):
            raise FeedUnavailable("not_serving", "this node serves no copy of the room")
        return await self.edge_room(room)

    def feed_program(self, live: LiveRoom) -> FeedProgram:
        """What a feed of ``live`` carries now; FeedUnavailable ``room_not_live`` when nobody is live."""
        audience = live.audience
        program = audience.current_program if audience is not None else None
        if live.edge:
            feed = self.feeds.get(live.room.id)
            described = feed.program() if feed is not None else None
        elif program is not None and program.video is not None:
            host = live.participants.get(program.video.participant_id)
            tracks = {t.kind: TrackInfo(t.source, t.name) for t in (program.video, program.audio) if t is not None}
            described = FeedProgram(program_key(program), host.identity, host.name, tracks) if host else None
        else:
            described = None
        if described is None or not described.key:
            raise FeedUnavailable("room_not_live", "nobody is live in this room yet")
        return described

    # --- the heartbeat ----------------------------------------------------------------------

    async def tick(self) -> None:
        """Each heartbeat: counts repaired from Redis, feeding nodes checked, edges counted."""
        if not self.enabled or not (self.links or self.feeds):
            return
        try:
            alive = {n.node_id for n in await self.registry.live_nodes()}
            links = list(self.links.values())
            async with self.redis.pipeline(transaction=False) as pipe:
                for link in links:
                    pipe.hgetall(VIEWERS_KEY + str(link.room_id))
                    pipe.hkeys(EDGES_KEY + str(link.room_id))
                replies = await pipe.execute()
            for index, link in enumerate(links):
                raw, edges = replies[2 * index], [_text(e) for e in replies[2 * index + 1]]
                counts = {_text(k): int(v) for k, v in raw.items()}
                await link.sync(counts, alive)
                if link.feed is None:  # the origin forgets dead edges (the edges they fed pull from it now)
                    dead = [e for e in edges if e not in alive]
                    if dead:
                        await self.redis.hdel(EDGES_KEY + str(link.room_id), *dead)
                        await self.redis.hdel(VIEWERS_KEY + str(link.room_id), *dead)
                    self._edges[link.room_id] = len(edges) - len(dead)
            for room_id in list(self._edges):
                if room_id not in self.links:
                    del self._edges[room_id]
            for feed in list(self.feeds.values()):
                await feed.check(alive)
        except Exception:  # Redis away for a beat: the next one tries again
            log.warning("cascade heartbeat failed", exc_info=True)

    def samples(self) -> list[Sample]:
        samples = []
        for link in self.links.values():
            labels = (("room", str(link.room_id)), ("role", "edge" if link.feed is not None else "origin"))
            samples.append(
                Sample(
                    "gbmedia_live_room_node_viewers",
                    "Viewers of a live room this node serves (role origin: the room's node; edge: a copy)",
                    link.audience.local_viewer_count(),
                    labels=labels,
                )
            )
        for room_id, edges in self._edges.items():
            samples.append(
                Sample(
                    "gbmedia_live_room_edges",
                    "Edge nodes serving viewers of a live room this node is the origin of",
                    edges,
                    labels=(("room", str(room_id)),),
                )
            )
        samples.append(Sample("gbmedia_cascade_pulls", "Live rooms this node serves as an edge", len(self.feeds)))
        samples.append(
            Sample(
                "gbmedia_cascade_edges_added_total",
                "Edges this node added to live rooms' trees",
                self.edges_added,
                counter=True,
            )
        )
        return samples

    async def close(self) -> None:
        """Edge copies still here end (their viewers move); nothing more is pulled or reported."""
        for room_id, feed in list(self.feeds.items()):
            live = feed.live
            if not live.closed:
                with contextlib.suppress(Exception):
                    await live.move_away("node_shutdown")
            await feed.stop()
            self.feeds.pop(room_id, None)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
