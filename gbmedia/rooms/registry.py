"""The node registry: which node processes are alive, where they are and how loaded.

Each cluster member writes its :class:`NodeInfo` to Redis every heartbeat with an
expiry a few heartbeats long, so a node that stops refreshing (crashed, frozen, cut
off) disappears from the registry by itself: liveness needs no failure detector
beyond Redis' clock. Placement reads the registry to choose a room's node; the
relay reads it to find the owner's internal address.

A node without Redis is alone: :class:`LocalRegistry` holds only itself, so the
same placement code runs on a single node and always answers "here".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

NODE_KEY = "gbmedia:node:"  # + node id: the node's NodeInfo as JSON, with an expiry
NODES_KEY = "gbmedia:nodes"  # set of node ids ever registered (pruned as they expire)
DRAIN_KEY = "gbmedia:drain:"  # + node id: an operator asked this node to drain
RECENT_KEY = "gbmedia:recent:"  # + node id: hash room id -> cost, rooms placed on it its heartbeat has not counted


@dataclass(frozen=True)
class NodeLoad:
    """What a node carries now; ``cost`` is placement's unit (see placement.room_cost)."""

    cpu: float = 0.0  # share of one core this process used over the last heartbeat (0..1)
    rooms: int = 0
    participants: int = 0
    tracks: int = 0
    subscriptions: int = 0
    forwarded_pps: float = 0.0
    sockets: int = 0
    cost: float = 0.0
    # Rooms placed here that ``cost`` counts (ids): publishing them ends their placement charge
    # (RECENT_KEY), so a room is never counted twice. Not stored in the registry entry.
    counted_rooms: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    url: str  # public HTTP base URL clients may use
    internal_url: str  # where other nodes relay requests to (the cluster listener)
    media_address: str  # the address in this node's ICE candidates
    udp_ports: str
    capacity: float  # cost units this node carries before it counts as full
    max_cpu: float
    load: NodeLoad = field(default_factory=NodeLoad)
    draining: bool = False
    incarnation: str = field(default_factory=lambda: secrets.token_hex(6))  # one per process start
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0

    @property
    def load_share(self) -> float:
        """How full the node is, 0..1 (and past 1 when over): the larger of cost and CPU."""
        cpu_share = self.load.cpu / self.max_cpu if self.max_cpu < 1.0 else 0.0
        return max(self.load.cost / self.capacity, cpu_share)

    def has_room_for(self, cost: float) -> bool:
        """Takes a new room of ``cost``: not draining, under capacity and under the CPU limit."""
        if self.draining:
            return False
        if self.max_cpu < 1.0 and self.load.cpu >= self.max_cpu:
            return False
        return self.load.cost + cost <= self.capacity

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["load"].pop("counted_rooms")  # the heartbeat's own business (RedisRegistry.publish)
        return data

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeInfo:
        data = json.loads(raw)
        data["load"] = NodeLoad(**data.get("load", {}))
        return cls(**data)


def with_recent(node: NodeInfo, recent_cost: float) -> NodeInfo:
    """The node's load with the rooms placed on it since its last heartbeat, which it has not counted yet."""
    if not recent_cost:
        return node
    return replace(node, load=replace(node.load, cost=node.load.cost + recent_cost))


class NodeRegistry(Protocol):
    """The live nodes of the cluster (or only this one)."""

    me: NodeInfo

    async def live_nodes(self) -> list[NodeInfo]: ...

    async def get(self, node_id: str) -> NodeInfo | None: ...

    async def forget(self, node: NodeInfo) -> bool: ...

    async def drain_requested(self) -> bool: ...

    async def request_drain(self, node_id: str) -> None: ...

    async def clear_drain(self) -> None: ...

    def set_draining(self) -> None: ...

    async def publish(self, load: NodeLoad) -> None: ...

    async def withdraw(self) -> None: ...


LoadReader = Callable[[], Awaitable[NodeLoad]]


class Heartbeat:
    """Refreshes ``registry.me`` with the node's load every ``interval`` seconds."""

    def __init__(self, registry: NodeRegistry, read_load: LoadReader, interval: float) -> None:
        self.registry = registry
        self.read_load = read_load
        self.interval = interval
        self.listeners: list[Callable[[], Any]] = []  # called after each beat (fencing, drain checks)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def beat(self) -> None:
        await self.registry.publish(await self.read_load())
        for listener in self.listeners:
            result = listener()
            if asyncio.iscoroutine(result):
                await result

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away for a moment: the next beat tries again
                log.exception("heartbeat failed", extra={"node_id": self.registry.me.node_id})
            await asyncio.sleep(self.interval)


class LocalRegistry:
    """A node without Redis: the cluster is this node."""

    def __init__(self, me: NodeInfo) -> None:
        self.me = me
        self._drain = False

    def set_draining(self) -> None:
        self.me = replace(self.me, draining=True)

    async def publish(self, load: NodeLoad) -> None:
        self.me = replace(self.me, load=load, updated_at=time.time())

    async def live_nodes(self) -> list[NodeInfo]:
        return [self.me]

    async def get(self, node_id: str) -> NodeInfo | None:
        return self.me if node_id == self.me.node_id else None

    async def forget(self, node: NodeInfo) -> bool:
        return False

    async def drain_requested(self) -> bool:
        return self._drain

    async def request_drain(self, node_id: str) -> None:
        if node_id == self.me.node_id:
            self._drain = True

    async def clear_drain(self) -> None:
        self._drain = False

    async def withdraw(self) -> None:
        """Nothing to withdraw from: nobody else reads a local registry."""


# Deletes a node's entry only if it is still the same process start: a node that
# restarted under the same id (a new incarnation) is not forgotten by mistake.
_FORGET = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local info = cjson.decode(raw)
if info['incarnation'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisRegistry:
    """The cluster's registry in Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, me: NodeInfo, *, ttl: float) -> None:
        self.redis = redis
        self.me = me
        self.ttl_ms = int(ttl * 1000)
        self._forget = redis.register_script(_FORGET)

    def set_draining(self) -> None:
        self.me = replace(self.me, draining=True)

    async def publish(self, load: NodeLoad) -> None:
        """The node's entry with its load; in the same transaction, the rooms the load counts stop
        being charged as placed-but-uncounted (placement would count them twice otherwise)."""
        self.me = replace(self.me, load=load, updated_at=time.time())
        raw = json.dumps(self.me.to_json())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(NODE_KEY + self.me.node_id, raw, px=self.ttl_ms)
            pipe.sadd(NODES_KEY, self.me.node_id)
            if load.counted_rooms:
                pipe.hdel(RECENT_KEY + self.me.node_id, *load.counted_rooms)
            await pipe.execute()

    async def withdraw(self) -> None:
        """Leave the registry at once (a clean stop), instead of waiting to expire."""
        await self._forget(keys=[NODE_KEY + self.me.node_id], args=[self.me.incarnation])
        await self.redis.srem(NODES_KEY, self.me.node_id)

    async def live_nodes(self) -> list[NodeInfo]:
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in await self.redis.smembers(NODES_KEY))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([NODE_KEY + i for i in ids])
            for node_id in ids:
                pipe.hvals(RECENT_KEY + node_id)
            raws, *recents = await pipe.execute()
        nodes = []
        gone = []
        for node_id, raw, recent in zip(ids, raws, recents, strict=True):
            if raw is None:
                gone.append(node_id)
                continue
            nodes.append(with_recent(NodeInfo.from_json(raw), sum(float(cost) for cost in recent)))
        if gone:  # expired entries: keep the set small (a node coming back adds itself again)
            await self.redis.srem(NODES_KEY, *gone)
        return nodes

    async def get(self, node_id: str) -> NodeInfo | None:
        if node_id == self.me.node_id:
            return self.me
        raw = await self.redis.get(NODE_KEY + node_id)
        return NodeInfo.from_json(raw) if raw is not None else None

    async def forget(self, node: NodeInfo) -> bool:
        """Drop a node found dead before its entry expires (its cluster port refused us)."""
        forgotten = bool(await self._forget(keys=[NODE_KEY + node.node_id], args=[node.incarnation]))
        if forgotten:
            log.warning("node forgotten: its cluster listener refused connections", extra={"dead": node.node_id})
        return forgotten

    async def drain_requested(self) -> bool:
        return bool(await self.redis.exists(DRAIN_KEY + self.me.node_id))

    async def request_drain(self, node_id: str) -> None:
        await self.redis.set(DRAIN_KEY + node_id, "1", ex=3600)

    async def clear_drain(self) -> None:
        await self.redis.delete(DRAIN_KEY + self.me.node_id)
