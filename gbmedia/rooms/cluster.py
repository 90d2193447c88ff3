"""This node as a member of the cluster: heartbeat, fencing, adoption and drain.

- Heartbeat: the node's load goes to the registry every beat (registry.py).
- Fencing: a node serves a room only while Redis names it the owner. A node that
  was cut off long enough to be taken for dead finds, on its next beat, that its
  rooms were placed elsewhere and moves their participants away instead of keeping
  a second copy of the room alive.
- Adoption: open rooms recorded on a dead node are placed again (placement.py), so a
  dead node's rooms never stay stranded.
- Drain: the node stops taking rooms, hands each of its rooms back and tells their
  participants to move; clients rejoin through any node and land on the room's new
  node. When no room is left (or the drain timeout passes) the node may exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from gbmedia.rooms.live import LiveRooms
from gbmedia.rooms.placement import NEW_ROOM_COST, LocalPlacement, RedisPlacement, room_cost
from gbmedia.rooms.registry import Heartbeat, NodeLoad, NodeRegistry

log = logging.getLogger(__name__)

CPU_WINDOW_SECONDS = 0.5  # a CPU share measured over less time says little


class PipeCloser(Protocol):
    async def end_pipes(self) -> None: ...


class ClusterMember:
    def __init__(
        self,
        registry: NodeRegistry,
        placement: LocalPlacement | RedisPlacement,
        live_rooms: LiveRooms,
        *,
        heartbeat_seconds: float,
        adopt_seconds: float,
        drain_timeout: float | None = None,
    ) -> None:
        self.registry = registry
        self.placement = placement
        self.live_rooms = live_rooms
        self.heartbeat = Heartbeat(registry, self.read_load, heartbeat_seconds)
        self.heartbeat.listeners.append(self._after_beat)
        self.adopt_seconds = adopt_seconds
        self.drain_timeout = drain_timeout  # a drain asked for through Redis waits this long at most
        self.sockets: Callable[[], int] = lambda: 0  # open signaling sockets (set by the signaling side)
        self.pipes: PipeCloser | None = None  # relayed sockets, ended on drain
        self.drained = asyncio.Event()
        self.draining = False
        self._last_adopt = 0.0
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._forwarded_mark = (time.monotonic(), 0)
        self._drain_task: asyncio.Task[None] | None = None

    async def serve_at(self, url: str, internal_url: str) -> None:
        """Where this node listens, once it does: other nodes relay to ``internal_url``."""
        self.registry.me = replace(self.registry.me, url=url, internal_url=internal_url)
        await self.heartbeat.beat()

    async def start(self) -> None:
        # The CPU share counts from here: starting (imports, checks, migrations) is no load, and
        # counted it made a lone node refuse its first rooms as too busy (cluster_full).
        self._cpu_mark = (time.monotonic(), time.process_time())
        await self.heartbeat.beat()  # registered before the node takes its first request
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.heartbeat.stop()
        if self._drain_task is not None:
            self._drain_task.cancel()
        try:
            await self.registry.withdraw()
        except Exception:  # Redis away: the entry expires by itself
            log.warning("could not withdraw from the registry", exc_info=True)

    async def read_load(self) -> NodeLoad:
        """The node's load now. Its cost: what its live rooms forward, plus, for each room placed
        here that carries less than a new room is charged (nobody in it yet), that charge."""
        placed = await self.live_rooms.rooms.open_on(self.placement.node_id)
        load = self.media_load()
        reserved = 0.0
        for kind, ids in placed.items():
            count = len(ids)
            busy = sum(
                1
                for live in self.live_rooms.live.values()
                if not live.closed
                and not live.edge  # an edge copy is another node's room (gbmedia/rooms/cascade.py)
                and live.room.kind == kind
                and live.cost() >= NEW_ROOM_COST.get(kind, 0.0)
            )
            reserved += max(count - busy, 0) * NEW_ROOM_COST.get(kind, NEW_ROOM_COST["meeting"])
        counted = tuple(str(room_id) for ids in placed.values() for room_id in ids)
        return replace(load, cost=load.cost + reserved, counted_rooms=counted)

    def media_load(self) -> NodeLoad:
        now, cpu = time.monotonic(), time.process_time()
        wall0, cpu0 = self._cpu_mark
        if now - wall0 >= CPU_WINDOW_SECONDS:
            self._cpu_mark = (now, cpu)
            share = round((cpu - cpu0) / (now - wall0), 3)
        else:  # too short to say (the beats at start, one after another): the last figure holds
            share = self.registry.me.load.cpu
        rooms = [live for live in self.live_rooms.live.values() if not live.closed]
        participants = [p for live in rooms for p in live.participants.values()]
        tracks = sum(len(p.published) for p in participants)
        subscriptions = sum(len(p.subscriptions) for p in participants)
        forwarded = self.live_rooms.forwarded_total()
        then, before = self._forwarded_mark
        self._forwarded_mark = (now, forwarded)
        return NodeLoad(
            cpu=share,
            rooms=len(rooms),
            participants=len(participants),
            tracks=tracks,
            subscriptions=subscriptions,
            forwarded_pps=round(max(forwarded - before, 0) / max(now - then, 1e-3), 1),
            sockets=self.sockets(),
            cost=room_cost(tracks, subscriptions),
        )

    async def _after_beat(self) -> None:
        await self._fence()
        if not self.draining and await self.registry.drain_requested():
            self.start_drain(self.drain_timeout)
        if time.monotonic() - self._last_adopt >= self.adopt_seconds and not self.draining:
            self._last_adopt = time.monotonic()
            await self.placement.adopt_orphans()

    async def _fence(self) -> None:
        # An edge copy of a live room lives on a node that does not own the room (gbmedia/rooms/cascade.py).
        ids = [room_id for room_id, live in self.live_rooms.live.items() if not live.closed and not live.edge]
        for room_id, owner in zip(ids, await self.placement.owners(ids), strict=True):
            if owner is None and not self.draining:
                owner = await self.placement.claim(room_id)  # Redis lost the key (flushed): claim it back
            if owner != self.placement.node_id:
                live = self.live_rooms.live.get(room_id)
                if live is not None and not live.closed:
                    log.warning(
                        "room owned by another node now: moving its participants",
                        extra={"room_id": str(room_id), "owner": owner},
                    )
                    await live.move_away("owner_changed")

    def start_drain(self, timeout: float | None) -> asyncio.Task[None]:
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self.drain(timeout), name="node-drain")
        return self._drain_task

    async def drain(self, within: float | None) -> None:
        """Move every room away, then set :attr:`drained` (see the module docstring)."""
        self.draining = True
        self.registry.set_draining()
        try:
            await self.registry.clear_drain()  # consumed: the node restarted under this id does not drain again
        except Exception:
            log.warning("could not clear the drain request", exc_info=True)
        started = time.monotonic()
        log.info("node draining", extra={"node_id": self.placement.node_id, "rooms": len(self.live_rooms.live)})
        try:
            await self.heartbeat.beat()  # the cluster sees "draining" now, not a beat later
        except Exception:
            log.warning("could not announce the drain", exc_info=True)
        for room_id, live in list(self.live_rooms.live.items()):
            if live.closed:
                continue
            await self.placement.release(room_id)
            await live.move_away("drain")
        if self.pipes is not None:
            await self.pipes.end_pipes()
        # Rooms that arrive anyway (a join already on its way) are moved as they appear.
        while any(not live.closed for live in self.live_rooms.live.values()):
            if within is not None and time.monotonic() - started > within:
                log.warning("drain timed out with rooms left", extra={"rooms": len(self.live_rooms.live)})
                break
            await asyncio.sleep(0.2)
            for room_id, live in list(self.live_rooms.live.items()):
                if not live.closed:
                    await self.placement.release(room_id)
                    await live.move_away("drain")
        log.info("node drained", extra={"node_id": self.placement.node_id, "seconds": time.monotonic() - started})
        self.drained.set()
