"""Placement: every room lives on exactly one live node, chosen by load and region.

A room is placed when it is created or first joined, and placed again when its
node is gone (dead or drained). The choice is made by whichever node gets the
request, from the registry's view of the cluster; the claim is one Redis script,
so two nodes placing the same room at once agree on one owner (the first claim
wins, the second reads it). The owner is also written to ``rooms.node_id``, where
the idle sweeper and the operator's views read it.

Cost model: a node's load is counted in down tracks, the unit that costs CPU in
an SFU (each forwarded packet is sent once per subscriber). A meeting of n people
publishing t tracks each costs about t·n·(n-1): it grows with the square of its
size. A live room costs its publishers' tracks once per viewer: it grows linearly
and cascades to edge nodes when one node's share gets too big. A new room is
charged what a small one costs until its node reports real figures.
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

import redis.asyncio as aioredis
from aiohttp import web

from gbmedia.errors import ApiError
from gbmedia.rooms.registry import NODE_KEY, RECENT_KEY, NodeInfo, NodeRegistry
from gbmedia.rooms.store import Room, Rooms

log = logging.getLogger(__name__)

ROOM_KEY = "gbmedia:room:"  # + room id: the owning node's id

# What a room is charged before its node reports it: a 4-person meeting with audio
# and video (2·4·3 down tracks), a live room's publisher and first viewers.
NEW_ROOM_COST = {"meeting": 24.0, "live": 20.0}
# How much less loaded another node must be before a room goes there rather than
# onto the node that got the request (which saves a relay hop for every message).
LOCAL_PREFERENCE = 0.1


def room_cost(published_tracks: int, subscriptions: int) -> float:
    """What live rooms cost now: their down tracks, plus their up tracks (each received once)."""
    return float(subscriptions + published_tracks)


def meeting_cost(participants: int, tracks_each: int = 2) -> float:
    """What a meeting of ``participants`` costs when everyone sees everyone."""
    return float(tracks_each * participants * max(participants - 1, 0) + tracks_each * participants)


def live_cost(viewers: int, tracks: int = 2) -> float:
    """What a live room costs: the program's tracks to each viewer."""
    return float(tracks * viewers + tracks)


def region_distance(a: str, b: str) -> int:
    """0 same region, 1 same area (``eu-west`` and ``eu-central``), 2 elsewhere."""
    if a == b:
        return 0
    return 1 if a.split("-", 1)[0] == b.split("-", 1)[0] else 2


def choose_node(nodes: list[NodeInfo], *, region: str, kind: str, prefer: str | None = None) -> NodeInfo | None:
    """The node a new room of ``kind`` should go to, or None when every node is full.

    The closest region with room to spare wins; within it the least-loaded node,
    except that ``prefer`` (the node asking) keeps the room when it is within
    :data:`LOCAL_PREFERENCE` of the best.
    """
    cost = NEW_ROOM_COST.get(kind, NEW_ROOM_COST["meeting"])
    # A node that does not listen for relays yet (starting) only takes rooms it places itself.
    fits = [n for n in nodes if n.has_room_for(cost) and (n.internal_url or n.node_id == prefer)]
    if not fits:
        return None
    nearest = min(region_distance(region, n.region) for n in fits)
    near = [n for n in fits if region_distance(region, n.region) == nearest]
    best = min(near, key=lambda n: (n.load_share, n.node_id))
    if prefer is not None and prefer != best.node_id:
        mine = next((n for n in near if n.node_id == prefer), None)
        if mine is not None and mine.load_share <= best.load_share + LOCAL_PREFERENCE:
            return mine
    return best


def may_serve_viewers(node: NodeInfo) -> bool:
    """A node takes more viewers of a live room (as its origin or an edge): live, not draining, not full."""
    return not node.draining and node.load_share < 1.0


def edge_candidates(nodes: list[NodeInfo], origin: NodeInfo, *, region: str | None = None) -> list[NodeInfo]:
    """The nodes that could become a new edge of ``origin``'s live room, best first.

    Another worker of the origin's machine first (the same media address: the feed
    never leaves the machine), then the closest region, then the least loaded; nodes
    that cannot take viewers or that other nodes cannot reach yet are left out.
    """
    near = region or origin.region
    fits = [n for n in nodes if n.node_id != origin.node_id and n.internal_url and may_serve_viewers(n)]

    def rank(n: NodeInfo) -> tuple[bool, int, float, str]:
        return (n.media_address != origin.media_address, region_distance(near, n.region), n.load_share, n.node_id)

    return sorted(fits, key=rank)


class Placer(Protocol):
    """What the relay and the room APIs ask: which node serves this room."""

    @property
    def node_id(self) -> str: ...

    async def owner(self, room: Room, region: str | None = None) -> NodeInfo: ...

    async def owns(self, room_id: uuid.UUID) -> bool: ...


class RoomRouter(Protocol):
    """Sends a room's requests to its node (signaling/relay.py): what the room, recording
    and streaming APIs use so a request for a room on another node is answered there."""

    async def forward(
        self, request: web.Request, room: Room, region: str | None = None
    ) -> web.StreamResponse | None: ...

    async def place(self, room: Room, region: str | None = None) -> str: ...


# Claim a room for ARGV[1] unless a live node (its registry key exists) holds it. A claim
# also charges the new owner the room's cost (ARGV[4]) under RECENT_KEY, a hash by room id
# (ARGV[6]), until the owner's heartbeat counts the room (and removes it: registry.publish)
# or ARGV[5] ms pass: placements racing in the same second see the node as busier, and a
# room its heartbeat counts is never charged twice.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return owner end
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(ARGV[4]) > 0 then
  redis.call('HSET', ARGV[3] .. ARGV[1], ARGV[6], ARGV[4])
  redis.call('PEXPIRE', ARGV[3] .. ARGV[1], ARGV[5])
end
return ARGV[1]
"""


class LocalPlacement:
    """A single node without Redis: every room is here."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry

    @property
    def node_id(self) -> str:
        return self.registry.me.node_id

    async def owner(self, room: Room, region: str | None = None) -> NodeInfo:
        return self.registry.me

    async def owns(self, room_id: uuid.UUID) -> bool:
        return True

    async def release(self, room_id: uuid.UUID) -> None:
        """Nothing to release: the room was never placed anywhere else."""

    async def owners(self, room_ids: list[uuid.UUID]) -> list[str | None]:
        return [self.node_id] * len(room_ids)

    async def claim(self, room_id: uuid.UUID) -> str:
        return self.node_id

    async def adopt_orphans(self) -> list[tuple[Room, str]]:
        """Nothing to adopt: no other node ever held a room."""
        return []


class RedisPlacement:
    """Placement over the Redis registry (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, registry: NodeRegistry, rooms: Rooms, *, recent_ms: int = 3000) -> None:
        self.redis = redis
        self.recent_ms = recent_ms  # how long a placement is charged before the owner's heartbeat counts it
        self.registry = registry
        self.rooms = rooms
        self._claim = redis.register_script(_CLAIM)

    @property
    def node_id(self) -> str:
        return self.registry.me.node_id

    async def owner(self, room: Room, region: str | None = None) -> NodeInfo:
        """The room's live owner, placing the room first when it has none."""
        current = await self.redis.get(ROOM_KEY + str(room.id))
        if current is not None:
            node = await self.registry.get(current.decode())
            if node is not None:
                await self._record(room, node.node_id)
                return node
        nodes = await self.registry.live_nodes()
        chosen = choose_node(nodes, region=region or self.registry.me.region, kind=room.kind, prefer=self.node_id)
        if chosen is None:
            raise ApiError(
                503,
                "cluster_full",
                "every node of the cluster is at capacity or draining; try again shortly",
                {"nodes": len(nodes)},
            )
        owner_id = (
            await self._claim(keys=[ROOM_KEY + str(room.id)], args=self._claim_args(chosen.node_id, room.kind, room.id))
        ).decode()
        owner = chosen if owner_id == chosen.node_id else await self.registry.get(owner_id)
        if owner is None:  # the winner died between its claim and our read: place again
            return await self.owner(room, region)
        if owner_id == chosen.node_id:
            log.info(
                "room placed",
                extra={"room_id": str(room.id), "node_id": owner_id, "kind": room.kind, "by": self.node_id},
            )
        await self._record(room, owner_id)
        return owner

    async def _record(self, room: Room, node_id: str) -> None:
        if room.node_id != node_id:
            await self.rooms.set_node(room.id, node_id)

    async def owns(self, room_id: uuid.UUID) -> bool:
        current = await self.redis.get(ROOM_KEY + str(room_id))
        return current is not None and current.decode() == self.node_id

    async def owners(self, room_ids: list[uuid.UUID]) -> list[str | None]:
        """Each room's owner in Redis (None: unplaced): the fence a node checks each heartbeat."""
        if not room_ids:
            return []
        owners = await self.redis.mget([ROOM_KEY + str(r) for r in room_ids])
        return [o.decode() if o is not None else None for o in owners]

    async def claim(self, room_id: uuid.UUID) -> str:
        """Claim a room for this node unless a live node holds it; the owner after the claim."""
        owner = await self._claim(keys=[ROOM_KEY + str(room_id)], args=self._claim_args(self.node_id, None, room_id))
        return str(owner.decode())

    def _claim_args(self, node_id: str, kind: str | None, room_id: uuid.UUID) -> list[str | float | int]:
        cost = NEW_ROOM_COST.get(kind, NEW_ROOM_COST["meeting"]) if kind is not None else 0.0
        return [node_id, NODE_KEY, RECENT_KEY, cost, self.recent_ms, str(room_id)]

    async def release(self, room_id: uuid.UUID) -> None:
        """Give up a room this node owns (closed or moved away): the next join places it anew."""
        key = ROOM_KEY + str(room_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            if (await pipe.get(key)) == self.node_id.encode():
                pipe.multi()
                pipe.delete(key)
                await pipe.execute()
            else:
                await pipe.unwatch()

    async def adopt_orphans(self) -> list[tuple[Room, str]]:
        """Place again the open rooms whose node is gone, so none stays with a dead node.

        Every node runs this each heartbeat; the claim makes concurrent adopters agree.
        An adopted room nobody comes back to closes on its new node's idle sweep, like
        any room its participants left, and stops counting against the quota then.
        """
        live = [n.node_id for n in await self.registry.live_nodes()]
        adopted = []
        for room in await self.rooms.open_elsewhere(live):
            try:
                owner = await self.owner(room)
            except ApiError:  # the cluster is full: the rest wait for the next beat
                break
            log.info(
                "room adopted from a dead node",
                extra={"room_id": str(room.id), "dead": room.node_id, "node_id": owner.node_id},
            )
            adopted.append((room, owner.node_id))
        return adopted
