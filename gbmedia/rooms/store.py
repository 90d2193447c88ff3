"""Rooms: create, find, list and close them, within the tier's quotas; close idle ones.

A room belongs to an instance and lives on one node (``node_id``, the node that
created it). Its name is unique among the instance's open rooms; a closed room keeps
its row (history, billing) and frees its name. Every create and close writes an
audit row in the same transaction.

Idle rooms close by themselves, as in LiveKit: a room whose ``last_active_at`` is
more than ``empty_timeout`` seconds ago and that has nobody in it on this node is
closed by the node's :class:`RoomSweeper`. The signaling layer calls
:meth:`Rooms.touch` on joins and leaves and supplies the live participant count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from gbmedia.errors import ApiError, bad_request, conflict, not_found
from gbmedia.tenancy import audit
from gbmedia.tenancy.billing import require_standing
from gbmedia.tenancy.customers import Customers, quota_exceeded
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.usage import require_participant_minutes
from gbmedia.tenancy.webhook_events import emit

log = logging.getLogger(__name__)

ROOM_KINDS = ("meeting", "live")
ROOM_STATUSES = ("open", "closed")
DEFAULT_EMPTY_TIMEOUT = 300  # seconds; LiveKit's default
MIN_EMPTY_TIMEOUT = 1
MAX_EMPTY_TIMEOUT = 24 * 3600
SWEEP_INTERVAL = 5.0  # seconds between idle sweeps
# Letters, digits, '-', '_' and '.': safe in URLs, paths and log lines.
ROOM_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
ROOM_NAME_MAX_LENGTH = 200
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)

_ROOM_COLUMNS = (
    "id, customer_id, instance_id, name, kind, status, max_participants, empty_timeout, "
    "metadata, node_id, created_at, closed_at, last_active_at"
)

StatusFilter = Literal["open", "closed", "all"]
# Live participants of a room on this node (the signaling layer's count).
ParticipantCount = Callable[[uuid.UUID], int | Awaitable[int]]
CloseListener = Callable[["Room", str], Awaitable[None]]


@dataclass(frozen=True)
class Room:
    id: uuid.UUID
    customer_id: uuid.UUID
    instance_id: uuid.UUID
    name: str
    kind: str
    status: str
    max_participants: int
    empty_timeout: int
    metadata: dict[str, Any]
    node_id: str | None
    created_at: dt.datetime
    closed_at: dt.datetime | None
    last_active_at: dt.datetime


def _room(row: asyncpg.Record) -> Room:
    return Room(**dict(row))


def no_participants(room_id: uuid.UUID) -> int:
    """The count before signaling supplies its own: nobody is ever connected."""
    return 0


class Rooms:
    def __init__(self, pool: asyncpg.Pool, customers: Customers, instances: Instances, *, node_id: str) -> None:
        self.pool = pool
        self.customers = customers
        self.instances = instances
        self.node_id = node_id
        self._close_listeners: list[CloseListener] = []

    @property
    def system_actor(self) -> Actor:
        """Who the audit log names for what the node does by itself."""
        return Actor(f"node:{self.node_id}", "system")

    def on_close(self, listener: CloseListener) -> None:
        """Call ``listener(room, reason)`` after a room closes (reason ``api`` or ``idle``).

        The signaling layer uses it to disconnect the room's participants.
        """
        self._close_listeners.append(listener)

    async def create(
        self,
        actor: Actor,
        instance_id: uuid.UUID,
        name: str,
        kind: str = "meeting",
        max_participants: int | None = None,
        empty_timeout: int = DEFAULT_EMPTY_TIMEOUT,
        metadata: dict[str, Any] | None = None,
    ) -> Room:
        """Open a room on this node, within the customer's tier quotas.

        The customer row is locked while the open rooms are counted, so concurrent
        creations cannot take more slots than ``max_concurrent_rooms`` allows.
        """
        # The REST models refuse these first; this guards the other callers.
        if len(name) > ROOM_NAME_MAX_LENGTH or not _ROOM_NAME.fullmatch(name):
            raise bad_request(
                "invalid_room_settings", f"a room name is 1-{ROOM_NAME_MAX_LENGTH} letters, digits, '-', '_' or '.'"
            )
        if kind not in ROOM_KINDS:
            raise bad_request("invalid_room_settings", f"kind must be one of {ROOM_KINDS}")
        if not MIN_EMPTY_TIMEOUT <= empty_timeout <= MAX_EMPTY_TIMEOUT:
            raise bad_request(
                "invalid_room_settings", f"empty_timeout must be {MIN_EMPTY_TIMEOUT}-{MAX_EMPTY_TIMEOUT} seconds"
            )
        if max_participants is not None and max_participants < 1:
            raise bad_request("invalid_room_settings", "max_participants must be at least 1")
        async with self.pool.acquire() as conn, conn.transaction():
            instance = await self.instances.get(instance_id, conn)
            if instance.status != "active":
                raise conflict("instance_not_active", f"instance {instance_id} is {instance.status}")
            customer = await self.customers.get(instance.customer_id, conn, for_update=True)
            if customer.status != "active":
                raise conflict("customer_not_active", f"the customer account is {customer.status}")
            await require_standing(conn, customer.id)  # pending, past due or cancelled: no new rooms
            if kind == "live":
                await require_feature(conn, instance.id, "live")
            quotas = await self.customers.quotas(customer, conn)
            limit = quotas.max_participants_per_room
            if max_participants is None:
                max_participants = limit  # the default: as many as the tier allows
            if not 1 <= max_participants <= limit:
                raise quota_exceeded("max_participants_per_room", limit, requested=max(max_participants, 1))
            used = await conn.fetchval(
                "SELECT count(*) FROM rooms WHERE customer_id = $1 AND status = 'open'", customer.id
            )
            if used >= quotas.max_concurrent_rooms:
                raise quota_exceeded("max_concurrent_rooms", quotas.max_concurrent_rooms, used)
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO rooms (customer_id, instance_id, name, kind, max_participants,
                                           empty_timeout, metadata, node_id)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_ROOM_COLUMNS}""",
                    customer.id,
                    instance.id,
                    name,
                    kind,
                    max_participants,
                    empty_timeout,
                    metadata or {},
                    self.node_id,
                )
            except asyncpg.UniqueViolationError:
                raise conflict("room_name_taken", f"the instance already has an open room named {name!r}") from None
            room = _room(row)
            await audit.record(
                conn,
                actor,
                "room.create",
                "room",
                room.id,
                customer_id=room.customer_id,
                instance_id=room.instance_id,
                details={
                    "name": name,
                    "kind": kind,
                    "max_participants": max_participants,
                    "empty_timeout": empty_timeout,
                    "node_id": self.node_id,
                },
            )
            await emit(conn, room.instance_id, "room_started", {"room": room_hook_json(room)})
        return room

    async def open(self, actor: Actor, instance_id: uuid.UUID, name: str, kind: str = "meeting") -> Room:
        """The instance's open room with this name, created (as ``kind``) when there is none."""
        await require_participant_minutes(self.pool, instance_id)
        try:
            room = await self.get(instance_id, name)
            if room.status == "open":
                if room.kind == "live":  # joining a live room opened before the feature was turned off
                    await require_feature(self.pool, instance_id, "live")
                return room
        except ApiError as exc:
            if exc.status != 404:
                raise
        try:
            return await self.create(actor, instance_id, name, kind=kind)
        except ApiError as race:
            if race.code != "room_name_taken":
                raise
            return await self.get(instance_id, name)

    async def set_node(self, room_id: uuid.UUID, node_id: str) -> None:
        """Record the node placement chose for an open room."""
        await self.pool.execute(
            "UPDATE rooms SET node_id = $2, last_active_at = now() WHERE id = $1 AND status = 'open'"
            " AND node_id IS DISTINCT FROM $2",
            room_id,
            node_id,
        )

    async def open_on(self, node_id: str) -> dict[str, list[uuid.UUID]]:
        """This node's open rooms' ids by kind: joined or not, each is a room placement sent here."""
        rows = await self.pool.fetch(
            "SELECT kind, array_agg(id) AS ids FROM rooms WHERE node_id = $1 AND status = 'open' GROUP BY kind",
            node_id,
        )
        return {row["kind"]: list(row["ids"]) for row in rows}

    async def open_elsewhere(self, live_nodes: list[str], limit: int = 100) -> list[Room]:
        """Open rooms recorded on a node that is not among ``live_nodes`` (dead or gone)."""
        rows = await self.pool.fetch(
            f"""SELECT {_ROOM_COLUMNS} FROM rooms
                 WHERE status = 'open' AND (node_id IS NULL OR NOT node_id = ANY($1::text[]))
                 ORDER BY last_active_at DESC LIMIT $2""",
            live_nodes,
            limit,
        )
        return [_room(row) for row in rows]

    async def get(self, instance_id: uuid.UUID | None, name_or_id: uuid.UUID | str) -> Room:
        """The room with this id, or the instance's room with this name (an open one
        if there is one, else the newest closed one).

        ``instance_id`` None (the operator) finds any room, by id only. A room of
        another instance is not found, exactly like a missing one.
        """
        room_id = _as_uuid(name_or_id)
        row = None
        if room_id is not None:
            row = await self.pool.fetchrow(
                f"""SELECT {_ROOM_COLUMNS} FROM rooms
                     WHERE id = $1 AND ($2::uuid IS NULL OR instance_id = $2)""",
                room_id,
                instance_id,
            )
        # A name may look like a UUID; it is tried as a name when no id matched.
        if row is None and instance_id is not None and not isinstance(name_or_id, uuid.UUID):
            row = await self.pool.fetchrow(
                f"""SELECT {_ROOM_COLUMNS} FROM rooms WHERE instance_id = $1 AND name = $2
                     ORDER BY status = 'open' DESC, created_at DESC, id LIMIT 1""",
                instance_id,
                name_or_id,
            )
        if row is None:
            raise not_found("room", name_or_id)
        return _room(row)

    async def list(
        self, instance_id: uuid.UUID | None, status: StatusFilter = "open", *, limit: int = 100, offset: int = 0
    ) -> list[Room]:
        """Newest first. ``instance_id`` None lists every instance's rooms (operator)."""
        if status not in (*ROOM_STATUSES, "all"):
            raise bad_request("invalid_query", "status must be open, closed or all")
        rows = await self.pool.fetch(
            f"""SELECT {_ROOM_COLUMNS} FROM rooms
                 WHERE ($1::uuid IS NULL OR instance_id = $1)
                   AND ($2::text = 'all' OR status = $2)
                 ORDER BY created_at DESC, id
                 LIMIT $3 OFFSET $4""",
            instance_id,
            status,
            limit,
            offset,
        )
        return [_room(r) for r in rows]

    async def close(self, actor: Actor, room: Room, *, reason: str = "api") -> Room:
        """Close the room; closing a closed room changes nothing and returns it."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE rooms SET status = 'closed', closed_at = now()
                     WHERE id = $1 AND status = 'open' RETURNING {_ROOM_COLUMNS}""",
                room.id,
            )
            if row is None:
                current = await conn.fetchrow(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE id = $1", room.id)
                if current is None:
                    raise not_found("room", room.id)
                return _room(current)
            closed = _room(row)
            await audit.record(
                conn,
                actor,
                "room.close",
                "room",
                closed.id,
                customer_id=closed.customer_id,
                instance_id=closed.instance_id,
                details={"name": closed.name, "reason": reason},
            )
            await emit(conn, closed.instance_id, "room_finished", {"room": room_hook_json(closed), "reason": reason})
        await self._closed(closed, reason)
        return closed

    async def touch(self, room_id: uuid.UUID) -> bool:
        """Mark activity in an open room (a join, a leave); False when it is not open."""
        result = await self.pool.execute(
            "UPDATE rooms SET last_active_at = now() WHERE id = $1 AND status = 'open'", room_id
        )
        return result != "UPDATE 0"

    async def close_idle(self, participant_count: ParticipantCount = no_participants) -> list[Room]:
        """Close this node's open rooms that are past their empty timeout with nobody in them.

        A room that still has participants counts as active: its clock restarts, so
        it closes ``empty_timeout`` after the last one was seen, not at once.
        """
        rows = await self.pool.fetch(
            f"""SELECT {_ROOM_COLUMNS} FROM rooms
                 WHERE status = 'open' AND node_id = $1
                   AND last_active_at + make_interval(secs => empty_timeout) < now()
                 ORDER BY last_active_at""",
            self.node_id,
        )
        closed: list[Room] = []
        occupied: list[uuid.UUID] = []
        for row in rows:
            room = _room(row)
            count = participant_count(room.id)
            if inspect.isawaitable(count):
                count = await count
            if count > 0:
                occupied.append(room.id)
                continue
            async with self.pool.acquire() as conn, conn.transaction():
                # Checked again: a join may have touched the room since it was read.
                row = await conn.fetchrow(
                    f"""UPDATE rooms SET status = 'closed', closed_at = now()
                         WHERE id = $1 AND status = 'open'
                           AND last_active_at + make_interval(secs => empty_timeout) < now()
                     RETURNING {_ROOM_COLUMNS}""",
                    room.id,
                )
                if row is None:
                    continue
                done = _room(row)
                await audit.record(
                    conn,
                    self.system_actor,
                    "room.close",
                    "room",
                    done.id,
                    customer_id=done.customer_id,
                    instance_id=done.instance_id,
                    details={"name": done.name, "reason": "idle", "empty_timeout": done.empty_timeout},
                )
                await emit(conn, done.instance_id, "room_finished", {"room": room_hook_json(done), "reason": "idle"})
            closed.append(done)
            await self._closed(done, "idle")
        if occupied:
            await self.pool.execute(
                "UPDATE rooms SET last_active_at = now() WHERE id = ANY($1::uuid[]) AND status = 'open'",
                occupied,
            )
        return closed

    async def _closed(self, room: Room, reason: str) -> None:
        for listener in self._close_listeners:
            try:
                await listener(room, reason)
            except Exception:  # one listener's failure must not undo the close or skip others
                log.exception("room close listener failed", extra={"room_id": str(room.id)})


def room_hook_json(room: Room) -> dict[str, Any]:
    """A room as its webhook events show it (rooms/webhooks.py shows it the same way)."""
    return {"id": str(room.id), "name": room.name, "kind": room.kind}


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class RoomSweeper:
    """The node's background task that closes idle rooms every ``interval`` seconds.

    ``participant_count`` starts as "nobody" and is replaced by the signaling layer
    with its live count (``node.room_sweeper.participant_count = ...``).
    """

    def __init__(
        self, rooms: Rooms, participant_count: ParticipantCount = no_participants, interval: float = SWEEP_INTERVAL
    ) -> None:
        self.rooms = rooms
        self.participant_count = participant_count
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="room-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def sweep(self) -> list[Room]:
        closed = await self.rooms.close_idle(self.participant_count)
        for room in closed:
            log.info(
                "idle room closed",
                extra={"room_id": str(room.id), "room": room.name, "instance_id": str(room.instance_id)},
            )
        return closed

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a while; try again later
                log.warning("room sweep failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)
