"""Recordings of rooms: start, stop, follow the room's tracks, store files, count minutes.

A recording belongs to one room and runs on the node that holds the room's media.
Its kinds say what it produces: ``tracks`` (one file per published track, the
encoded packets as they came, see :mod:`gbmedia.recording.track_recorder`) and/or
``composite`` (one H.264/AAC MP4 of the whole room, see
:mod:`gbmedia.recording.composite`).

Life of a recording (``status``):

* ``waiting``: started, no media on disk yet (nobody publishes). It never hangs
  here: the first track published in the room starts it; stopping a waiting
  recording completes it with no files.
* ``recording``: at least one file has its first frame. Tracks published later
  join it, tracks that end close their files.
* ``stopping`` -> ``completed``: every file is finished and handed to the
  storage backend (uploaded, for S3); duration, size and the usage event
  (``recording_minutes``) are written.
* ``failed`` (with ``error``): a file could not be written (disk full, storage
  gone) or uploaded. The recording stops, the room is not touched: its
  participants keep their media. Files finished before the failure stay listed.

Outages (docs/operations.md, "Outages"): stopping never waits for the database.
The media stops being written at once; the rows are finished by writes that are
retried until PostgreSQL answers again, so a recording stopped during an outage
ends ``completed`` (or ``failed``) once it is back. The caller of a stop that meets
the outage gets 503 ``database_unavailable`` saying so. Below the free-space
reserve (:mod:`gbmedia.recording.disk`) starts are refused (507
``insufficient_storage``) and running recordings stop with ``disk_full``.

A node that dies mid-recording leaves playable files (the writers are crash-safe);
at its next start it marks its interrupted recordings ``failed`` with
``interrupted``, lists what is on disk and bills their minutes up to the files' last
write (the same usage key as a clean stop: never twice). Recording minutes are counted against
the tier's ``recording_minutes_per_month``: a start with none left is refused, and
a running recording stops by itself when the month's minutes run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from gbmedia.errors import ApiError, conflict, database_unavailable, not_found, outage_error
from gbmedia.metrics import Sample
from gbmedia.recording.codecs import SUPPORTED
from gbmedia.recording.composite import CompositeJob
from gbmedia.recording.disk import DiskGuard
from gbmedia.recording.storage import LocalStorage, S3Storage, StorageError
from gbmedia.recording.track_recorder import TrackRecorder, TrackResult
from gbmedia.recording.writer import content_type_for, extension_for, repair
from gbmedia.rooms.media import ENDED, PUBLISHED, RoomEvents, RoomMedia, TrackOwner
from gbmedia.rooms.store import Room, Rooms, room_hook_json
from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.track import PublishedTrack
from gbmedia.tenancy import audit, usage
from gbmedia.tenancy.customers import Customers, quota_exceeded
from gbmedia.tenancy.gates import require_feature
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.webhook_events import emit

log = logging.getLogger(__name__)
T = TypeVar("T")

KINDS = ("tracks", "composite")
ACTIVE = ("waiting", "recording", "stopping")
_REC_COLUMNS = (
    "id, customer_id, instance_id, room_id, kinds, status, error, storage, node_id, started_by, "
    "stop_reason, duration_seconds, size_bytes, created_at, started_at, stopped_at"
)
_FILE_COLUMNS = (
    "id, recording_id, name, kind, track_id, participant_id, participant_identity, source, codec, "
    "content_type, status, error, size_bytes, duration_seconds, start_offset_seconds, aligned_by, "
    "created_at, completed_at"
)


@dataclass(frozen=True)
class RecordingFile:
    id: uuid.UUID
    recording_id: uuid.UUID
    name: str
    kind: str
    track_id: str | None
    participant_id: str | None
    participant_identity: str | None
    source: str | None
    codec: str
    content_type: str
    status: str
    error: str | None
    size_bytes: int
    duration_seconds: float
    start_offset_seconds: float | None
    aligned_by: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None


@dataclass(frozen=True)
class Recording:
    id: uuid.UUID
    customer_id: uuid.UUID
    instance_id: uuid.UUID
    room_id: uuid.UUID
    kinds: list[str]
    status: str
    error: str | None
    storage: str
    node_id: str
    started_by: str
    stop_reason: str | None
    duration_seconds: float
    size_bytes: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    stopped_at: dt.datetime | None
    files: list[RecordingFile]


@dataclass(eq=False)
class _File:
    id: uuid.UUID
    key: str
    recorder: Any  # TrackRecorder, or the composite job
    content_type: str
    track: PublishedTrack | None = None  # the track it taps, None for the composite
    participant_id: str | None = None
    finished: asyncio.Task[None] | None = None
    untap: Callable[[], None] | None = None  # stops the sender-report feed
    arrival_offset: float | None = None
    sender_first: float | None = None


@dataclass(eq=False)
class _Active:
    id: uuid.UUID
    room: Room
    kinds: list[str]
    started_wall: float
    started_mono: float
    media_mono: float | None = None  # when the first frame of any file was written
    halted_mono: float | None = None  # when its media stopped being written
    status: str = "waiting"
    files: dict[str, _File] = field(default_factory=dict)  # by track id, "composite" for the composite
    adding: set[str] = field(default_factory=set)  # track ids whose file is being opened
    composite: Any = None
    quota_timer: asyncio.TimerHandle | None = None
    minutes_left: float = 0.0
    stopping: asyncio.Task[Recording] | None = None
    failure: str | None = None
    halted: bool = False  # its media is no longer written (stopping, failed or out of disk)
    database_down: asyncio.Event = field(default_factory=asyncio.Event)  # a write of it waits for PostgreSQL

    def media_seconds(self) -> float:
        """How long media has been recorded: from the first frame on (waiting is free)."""
        end = time.monotonic() if self.halted_mono is None else self.halted_mono
        return 0.0 if self.media_mono is None else max(0.0, end - self.media_mono)


def _file(row: asyncpg.Record) -> RecordingFile:
    return RecordingFile(**dict(row))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


STORAGE_CHECK_SECONDS = 2.0  # between checks of the customers' stored bytes while recordings run

CompositeFactory = Callable[..., Any]


class Recordings:
    def __init__(
        self,
        pool: asyncpg.Pool,
        storage: LocalStorage | S3Storage,
        rooms: Rooms,
        customers: Customers,
        instances: Instances,
        *,
        node_id: str,
        composite_factory: CompositeFactory = CompositeJob,
        disk: DiskGuard | None = None,
        retry_cap: float = 2.0,
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.rooms = rooms
        self.customers = customers
        self.instances = instances
        self.node_id = node_id
        self.composite_factory = composite_factory
        self.disk = disk or DiskGuard(storage.spool, 0)
        self.retry_cap = retry_cap  # longest pause between retries of a write during a database outage
        self._disk_watch: asyncio.Task[None] | None = None
        self._storage_watch: asyncio.Task[None] | None = None
        self.storage_check_interval = STORAGE_CHECK_SECONDS
        self.active: dict[uuid.UUID, _Active] = {}  # by recording id
        self._by_room: dict[uuid.UUID, _Active] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rooms_media: RoomEvents | None = None  # the node's live rooms, set by attach()
        self.completed = 0
        self.failed = 0
        rooms.on_close(self._room_closed)

    @property
    def system_actor(self) -> Actor:
        return Actor(f"node:{self.node_id}", "system")

    def attach(self, events: RoomEvents) -> None:
        """Follow the tracks of this node's live rooms."""
        self._rooms_media = events
        events.on_track(self._on_track)

    # --- reading ---------------------------------------------------------------------

    async def _files(self, conn: Any, recording_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[RecordingFile]]:
        rows = await conn.fetch(
            f"SELECT {_FILE_COLUMNS} FROM recording_files WHERE recording_id = ANY($1::uuid[]) "
            "ORDER BY created_at, name",
            recording_ids,
        )
        out: dict[uuid.UUID, list[RecordingFile]] = {i: [] for i in recording_ids}
        for row in rows:
            out[row["recording_id"]].append(_file(row))
        return out

    async def get(self, instance_id: uuid.UUID | None, recording_id: uuid.UUID) -> Recording:
        """The recording, or 404 ``recording_not_found`` (also for another instance's)."""
        row = await self.pool.fetchrow(
            f"SELECT {_REC_COLUMNS} FROM recordings WHERE id = $1 AND ($2::uuid IS NULL OR instance_id = $2)",
            recording_id,
            instance_id,
        )
        if row is None:
            raise not_found("recording", recording_id)
        files = await self._files(self.pool, [recording_id])
        return Recording(**dict(row), files=files[recording_id])

    async def list_for_room(self, room_id: uuid.UUID, *, limit: int = 100, offset: int = 0) -> list[Recording]:
        rows = await self.pool.fetch(
            f"""SELECT {_REC_COLUMNS} FROM recordings WHERE room_id = $1
                 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3""",
            room_id,
            limit,
            offset,
        )
        files = await self._files(self.pool, [r["id"] for r in rows])
        return [Recording(**dict(r), files=files[r["id"]]) for r in rows]

    async def file(self, recording: Recording, name: str) -> tuple[RecordingFile, str]:
        """A finished file of the recording and its storage key."""
        row = await self.pool.fetchrow(
            f"SELECT {_FILE_COLUMNS}, storage_key FROM recording_files WHERE recording_id = $1 AND name = $2",
            recording.id,
            name,
        )
        if row is None:
            raise ApiError(404, "recording_file_not_found", f"the recording has no file {name!r}")
        values = dict(row)
        key = values.pop("storage_key")
        found = RecordingFile(**values)
        if found.status == "recording":
            raise conflict("recording_file_not_ready", f"{name} is still being recorded; stop the recording first")
        if found.status == "failed" and found.size_bytes == 0:
            raise conflict("recording_file_failed", f"{name} failed and holds nothing: {found.error}")
        return found, key

    # --- removing ----------------------------------------------------------------------

    async def delete(self, actor: Actor, recording: Recording) -> Recording:
        """Remove a finished recording: its files from storage, then its rows (which frees the
        customer's storage quota, counted from the rows) and an audit entry.

        A running one is refused (409 ``recording_still_running``): its recorder would write on.
        Files go first: if the store fails (502 ``storage_unavailable``) the rows stay, so the
        delete can be retried and no file is left that nothing lists.
        """
        if recording.id in self.active or recording.status in ("waiting", "recording", "stopping"):
            raise conflict("recording_still_running", "the recording is still running; stop it first")
        keys = await self.pool.fetch("SELECT storage_key FROM recording_files WHERE recording_id = $1", recording.id)
        for row in keys:
            try:
                await self.storage.delete(row["storage_key"])
            except (StorageError, OSError) as exc:
                raise ApiError(502, "storage_unavailable", f"the recording store failed: {exc}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("DELETE FROM recordings WHERE id = $1 RETURNING id", recording.id) is None:
                raise not_found("recording", recording.id)  # a concurrent delete won
            await audit.record(
                conn,
                actor,
                "recording.delete",
                "recording",
                recording.id,
                customer_id=recording.customer_id,
                instance_id=recording.instance_id,
                details={"room_id": str(recording.room_id), "files": len(keys), "size_bytes": recording.size_bytes},
            )
        return recording

    # --- quotas ------------------------------------------------------------------------

    async def _minutes_left(self, conn: Any, room: Room) -> float:
        """Recording minutes left this month: the tier's allowance less what was used
        (finished recordings) and what this node is recording now for the customer.

        The feature gate (tier and instance) and the storage quota are checked first."""
        await require_feature(conn, room.instance_id, "recording")
        customer = await self.customers.get(room.customer_id, conn)
        plan = await self.customers.plan(customer.subscription_tier, conn)
        stored = await self._stored_bytes(conn, customer.id)
        if stored >= plan.quotas.storage_bytes:
            raise quota_exceeded("storage_bytes", plan.quotas.storage_bytes, stored)
        used = await conn.fetchval(
            """SELECT coalesce(sum(quantity), 0)::float8 FROM usage_events
                WHERE customer_id = $1 AND kind = 'recording_minutes'
                  AND occurred_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'""",
            customer.id,
        )
        running = sum(a.media_seconds() / 60 for a in self.active.values() if a.room.customer_id == customer.id)
        limit = plan.quotas.recording_minutes_per_month
        left = limit - used - running
        if left <= 0:
            raise quota_exceeded("recording_minutes_per_month", limit, int(used + running + 0.999))
        return left

    async def _stored_bytes(self, db: Any, customer_id: uuid.UUID) -> int:
        """The customer's recordings' bytes: what the rows say (finished files, on any node)
        plus what this node's running recordings have written to the spool so far."""
        held = await db.fetchval(
            "SELECT coalesce(sum(size_bytes), 0)::bigint FROM recordings WHERE customer_id = $1", customer_id
        )
        running = [a for a in self.active.values() if a.room.customer_id == customer_id and not a.halted]
        return int(held) + await asyncio.to_thread(self._spool_bytes, running)

    def _spool_bytes(self, running: list[_Active]) -> int:
        """Bytes the running recordings' files hold on the spool now (a thread: it stats files)."""
        total = 0
        for active in running:
            for entry in list(active.files.values()):
                with contextlib.suppress(OSError):
                    total += self.storage.spool_path(entry.key).stat().st_size
        return total

    async def _watch_storage(self) -> None:
        """While recordings run, stop a customer's recordings (``storage_quota_exhausted``) once
        its stored bytes reach the tier's ``storage_bytes``; the files written so far are kept."""
        try:
            while self.active:
                await asyncio.sleep(self.storage_check_interval)
                customers = {a.room.customer_id for a in self.active.values() if not a.halted}
                for customer_id in customers:
                    limit = await self.pool.fetchval(
                        """SELECT p.storage_bytes FROM customers c JOIN plans p ON p.id = c.subscription_tier
                            WHERE c.id = $1""",
                        customer_id,
                    )
                    if limit is None or await self._stored_bytes(self.pool, customer_id) < limit:
                        continue
                    log.info("storage quota used up: stopping recordings", extra={"customer_id": str(customer_id)})
                    for active in list(self.active.values()):
                        if active.room.customer_id == customer_id:
                            self._halt(active)
                            self._begin_stop(self.system_actor, active, "storage_quota_exhausted")
        except Exception as exc:
            if outage_error(exc) is None:
                raise
            log.warning("storage quota check failed: PostgreSQL unavailable; checking again when a recording starts")
        finally:
            self._storage_watch = None

    # --- start -------------------------------------------------------------------------

    async def start(self, actor: Actor, room: Room, kinds: list[str]) -> Recording:
        if room.status != "open":
            raise conflict("room_closed", "the room is closed; only open rooms can be recorded")
        if room.node_id is not None and room.node_id != self.node_id:
            raise conflict("room_on_other_node", f"the room's media is on node {room.node_id}; ask that node")
        if room.id in self._by_room:
            raise conflict("recording_in_progress", "the room is being recorded already; stop that recording first")
        if (shortage := await self.disk.shortage()) is not None:
            raise shortage
        async with self.pool.acquire() as conn, conn.transaction():
            left = await self._minutes_left(conn, room)
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO recordings (customer_id, instance_id, room_id, kinds, storage, node_id,
                                                started_by, started_at)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, now()) RETURNING {_REC_COLUMNS}""",
                    room.customer_id,
                    room.instance_id,
                    room.id,
                    kinds,
                    self.storage.name,
                    self.node_id,
                    actor.name,
                )
            except asyncpg.UniqueViolationError:
                raise conflict(
                    "recording_in_progress", "the room is being recorded already; stop that recording first"
                ) from None
            await audit.record(
                conn,
                actor,
                "recording.start",
                "recording",
                row["id"],
                customer_id=room.customer_id,
                instance_id=room.instance_id,
                details={"room_id": str(room.id), "kinds": kinds, "storage": self.storage.name},
            )
            await emit(
                conn,
                room.instance_id,
                "recording_started",
                {"recording": {"id": str(row["id"]), "kinds": kinds}, "room": room_hook_json(room)},
            )
        active = _Active(row["id"], room, list(kinds), time.time(), time.monotonic())
        self.active[active.id] = active
        self._by_room[room.id] = active
        active.minutes_left = left
        if self.disk.enabled and self._disk_watch is None:
            self._disk_watch = asyncio.ensure_future(self._watch_disk())
        if self._storage_watch is None:
            self._storage_watch = asyncio.ensure_future(self._watch_storage())
        log.info(
            "recording started",
            extra={
                "recording_id": str(active.id),
                "room_id": str(room.id),
                "kinds": kinds,
                "minutes_left": round(left, 1),
            },
        )
        try:
            if "composite" in kinds:
                await self._start_composite(active)
            media = self._rooms_media.media_of(room.id) if self._rooms_media is not None else None
            for owner, track in media.published() if media is not None else []:
                await self._add_track(active, owner, track)
        except StorageError as exc:
            await self._fail(active, str(exc))
        return await self.get(None, active.id)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _add_track(self, active: _Active, participant: TrackOwner, track: PublishedTrack) -> None:
        if active.status not in ("waiting", "recording") or active.failure:
            return
        if "composite" in active.kinds and active.composite is not None:
            active.composite.add_track(track, participant)
        if "tracks" not in active.kinds or track.id in active.files or track.id in active.adding:
            return
        codec = track.codec
        if codec.name not in SUPPORTED:
            log.warning(
                "track not recorded: codec not supported", extra={"track_id": track.id, "codec": codec.mimeType}
            )
            return
        # Claimed before the first await: a start and a track event racing add it once.
        active.adding.add(track.id)
        try:
            await self._open_track_file(active, participant, track)
        finally:
            active.adding.discard(track.id)

    async def _open_track_file(self, active: _Active, participant: TrackOwner, track: PublishedTrack) -> None:
        codec = track.codec
        name = f"{track.id}.{extension_for(codec.name)}"
        key = f"{active.room.instance_id}/{active.id}/{name}"
        path = self.storage.spool_path(key)
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot record {name}: {exc}") from exc
        row_id = await self.pool.fetchval(
            """INSERT INTO recording_files (recording_id, name, kind, track_id, participant_id,
                                            participant_identity, source, codec, content_type, storage_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
            active.id,
            name,
            track.kind,
            track.id,
            participant.id,
            participant.identity,
            track.source,
            codec.mimeType,
            content_type_for(codec.name),
            key,
        )
        if active.status not in ("waiting", "recording") or active.failure:  # stopped meanwhile
            await self.pool.execute("DELETE FROM recording_files WHERE id = $1", row_id)
            return
        recorder = TrackRecorder(
            path,
            codec,
            loop=asyncio.get_running_loop(),
            name=track.id,
            on_started=lambda: self._file_started(active),
            on_failed=lambda error: self._spawn(self._fail(active, error)),
        )
        entry = _File(row_id, key, recorder, content_type_for(codec.name), track, participant.id)
        active.files[track.id] = entry
        entry.untap = aiortc_adapter.tap_sender_reports(track.receiver, recorder.on_sender_report)
        track.add_sink(recorder)
        entry.finished = self._spawn(self._finish_file(active, entry))

    async def _start_composite(self, active: _Active) -> None:
        name = "composite.mp4"
        key = f"{active.room.instance_id}/{active.id}/{name}"
        path = self.storage.spool_path(key)
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot record {name}: {exc}") from exc
        job = self.composite_factory(
            path,
            loop=asyncio.get_running_loop(),
            on_started=lambda: self._file_started(active),
            on_failed=lambda error: self._spawn(self._fail(active, error)),
        )
        row_id = await self.pool.fetchval(
            """INSERT INTO recording_files (recording_id, name, kind, codec, content_type, storage_key)
               VALUES ($1, $2, 'composite', 'video/H264+audio/AAC', 'video/mp4', $3) RETURNING id""",
            active.id,
            name,
            key,
        )
        active.composite = job
        entry = _File(row_id, key, job, "video/mp4")
        active.files["composite"] = entry
        entry.finished = self._spawn(self._finish_file(active, entry))

    def _file_started(self, active: _Active) -> None:
        if active.media_mono is None:
            active.media_mono = time.monotonic()
            # The month's minutes run out this long after the media starts: stop then.
            active.quota_timer = asyncio.get_running_loop().call_later(
                active.minutes_left * 60, lambda: self._spawn(self._quota_stop(active))
            )
        if active.status == "waiting":
            active.status = "recording"
            self._spawn(
                self._persist(
                    active,
                    lambda: self.pool.execute(
                        "UPDATE recordings SET status = 'recording' WHERE id = $1 AND status = 'waiting'", active.id
                    ),
                )
            )

    async def _finish_file(self, active: _Active, entry: _File) -> None:
        """When the file's writer ends: hand the file to storage and record what it holds."""
        result: TrackResult = await entry.recorder.result()
        if entry.untap is not None:
            entry.untap()
        error = result.error
        size = result.stats.size_bytes
        if result.stats.frames and error is None:
            try:
                size = await self.storage.store(entry.key, entry.content_type)
            except StorageError as exc:
                error = str(exc)
        offset = None
        if result.first_frame_wall is not None:
            offset = max(0.0, result.first_frame_wall - active.started_wall)
        entry.arrival_offset, entry.sender_first = offset, result.first_frame_sender
        status = "failed" if error else "completed"
        await self._persist(
            active,
            lambda: self.pool.execute(
                """UPDATE recording_files SET status = $2, error = $3, size_bytes = $4, duration_seconds = $5,
                                             start_offset_seconds = $6, aligned_by = $7, completed_at = now()
                    WHERE id = $1""",
                entry.id,
                status,
                error,
                size,
                result.stats.duration,
                offset,
                None if offset is None else "arrival",
            ),
        )
        if not result.stats.frames and error is None:
            # Nothing arrived (the track ended before its first keyframe): no empty file is kept.
            await self._persist(
                active, lambda: self.pool.execute("DELETE FROM recording_files WHERE id = $1", entry.id)
            )
            with contextlib.suppress(StorageError, OSError):
                await self.storage.delete(entry.key)
        if error:
            await self._fail(active, error)

    # --- track events ---------------------------------------------------------------------

    async def _on_track(self, event: str, live: RoomMedia, participant: TrackOwner, track: PublishedTrack) -> None:
        active = self._by_room.get(live.room.id)
        if event == PUBLISHED:
            if active is None:
                kinds = auto_record_kinds(live.room.metadata)
                if not kinds:
                    return
                try:
                    await self.start(self.system_actor, live.room, kinds)
                except ApiError as exc:
                    log.warning(
                        "auto-record did not start",
                        extra={"room_id": str(live.room.id), "code": exc.code, "reason": exc.message},
                    )
                return  # start() attached every current track, this one included
            try:
                await self._add_track(active, participant, track)
            except StorageError as exc:
                await self._fail(active, str(exc))
        elif event == ENDED and active is not None:
            entry = active.files.get(track.id)
            if entry is not None:
                track.remove_sink(entry.recorder)
                entry.recorder.finish()
            if active.composite is not None:
                active.composite.remove_track(track)

    async def _quota_stop(self, active: _Active) -> None:
        if active.stopping is None and active.id in self.active:
            log.info("recording minutes used up: stopping", extra={"recording_id": str(active.id)})
            await self.stop(self.system_actor, active.id, reason="quota_exhausted")

    async def _room_closed(self, room: Room, reason: str) -> None:
        active = self._by_room.get(room.id)
        if active is not None:
            await self.stop(self.system_actor, active.id, reason="room_closed")

    # --- stop ----------------------------------------------------------------------------

    def running_room(self, recording_id: uuid.UUID) -> Room | None:
        """The room of a recording running on this node (known without the database), else None."""
        active = self.active.get(recording_id)
        return None if active is None else active.room

    async def stop(
        self, actor: Actor, recording_id: uuid.UUID, *, reason: str = "api", instance_id: uuid.UUID | None = None
    ) -> Recording:
        """Finish every file, store them, write duration, size and usage; idempotent while stopping."""
        active = self.active.get(recording_id)
        if active is None or (instance_id is not None and active.room.instance_id != instance_id):
            recording = await self.get(instance_id, recording_id)
            if recording.status in ACTIVE:
                raise conflict(
                    "recording_on_other_node", f"the recording runs on node {recording.node_id}; ask that node"
                )
            raise conflict("recording_not_active", f"the recording is {recording.status} already")
        self._halt(active)
        stopping = self._begin_stop(actor, active, reason)
        blocked = asyncio.ensure_future(active.database_down.wait())
        try:
            await asyncio.wait({stopping, blocked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            blocked.cancel()
        if stopping.done():
            return stopping.result()
        raise database_unavailable(
            "the recording's media is stopped; the database does not answer, so the recording is finished "
            "(status, duration, size) once it does"
        )

    def _begin_stop(self, actor: Actor, active: _Active, reason: str) -> asyncio.Task[Recording]:
        """The recording's one stop: finishing it runs in a task of its own, so a caller that gives up
        (a request cut off, a 503 during an outage) never leaves it half done."""
        if active.stopping is None:
            active.stopping = asyncio.ensure_future(self._stop(actor, active, reason))
            self._tasks.add(active.stopping)  # type: ignore[arg-type]
            active.stopping.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        return active.stopping

    def _halt(self, active: _Active) -> None:
        """Stop writing the recording's media, at once and without the database: every file's
        writer finishes (its file stays playable) and no new track joins."""
        if active.halted:
            return
        active.halted = True
        active.halted_mono = time.monotonic()
        if active.quota_timer is not None:
            active.quota_timer.cancel()
        active.status = "stopping"
        for entry in list(active.files.values()):
            if entry.track is not None:
                entry.track.remove_sink(entry.recorder)
            entry.recorder.finish()
        if active.composite is not None:
            active.composite.finish()

    async def _persist(self, active: _Active, write: Callable[[], Awaitable[T]]) -> T:
        """Run one of the recording's database writes, retrying while PostgreSQL is down or hung.

        A recording's end must reach its row (status, duration, size, usage) even when the
        database is away as it stops; the media is halted already, so waiting costs nothing
        but time. Other failures are raised as before.
        """
        delay = 0.1
        while True:
            try:
                result = await write()
            except Exception as exc:
                if outage_error(exc) is None:
                    raise
                if not active.database_down.is_set():
                    log.warning(
                        "recording waits for the database", extra={"recording_id": str(active.id), "error": repr(exc)}
                    )
                    active.database_down.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_cap)
                continue
            active.database_down.clear()
            return result

    async def _stop(self, actor: Actor, active: _Active, reason: str) -> Recording:
        self._halt(active)
        await self._persist(
            active,
            lambda: self.pool.execute(
                "UPDATE recordings SET status = 'stopping' WHERE id = $1 AND status <> 'failed'", active.id
            ),
        )
        pending = [e.finished for e in active.files.values() if e.finished is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._persist(active, lambda: self._align(active))
        duration = active.media_seconds()
        status, error = ("failed", active.failure) if active.failure else ("completed", None)
        size = await self._persist(active, lambda: self._finish_row(actor, active, reason, status, error, duration))
        self.active.pop(active.id, None)
        if self._by_room.get(active.room.id) is active:
            del self._by_room[active.room.id]
        if status == "failed":
            self.failed += 1
        else:
            self.completed += 1
        log.info(
            "recording stopped",
            extra={
                "recording_id": str(active.id),
                "status": status,
                "reason": reason,
                "duration_seconds": round(duration, 3),
                "size_bytes": size,
            },
        )
        return await self._persist(active, lambda: self.get(None, active.id))

    async def _finish_row(
        self, actor: Actor, active: _Active, reason: str, status: str, error: str | None, duration: float
    ) -> int:
        """The recording's final row, its usage and its audit entry, in one transaction; its size."""
        async with self.pool.acquire() as conn, conn.transaction():
            size = await conn.fetchval(
                "SELECT coalesce(sum(size_bytes), 0)::bigint FROM recording_files WHERE recording_id = $1", active.id
            )
            await conn.execute(
                """UPDATE recordings SET status = $2, error = $3, stop_reason = $4, duration_seconds = $5,
                                         size_bytes = $6, stopped_at = now() WHERE id = $1""",
                active.id,
                status,
                error,
                reason,
                duration,
                size,
            )
            if duration > 0:
                await usage.record(
                    conn,
                    [
                        usage.UsageEvent(
                            customer_id=active.room.customer_id,
                            instance_id=active.room.instance_id,
                            kind="recording_minutes",
                            quantity=usage.minutes(duration),
                            key=f"recording:{active.id}",  # once per recording, however often the stop is retried
                            occurred_at=dt.datetime.now(dt.UTC),
                            room_id=active.room.id,
                            subject=str(active.id),
                        )
                    ],
                )
            await audit.record(
                conn,
                actor,
                "recording.stop",
                "recording",
                active.id,
                customer_id=active.room.customer_id,
                instance_id=active.room.instance_id,
                details={
                    "room_id": str(active.room.id),
                    "reason": reason,
                    "status": status,
                    "duration_seconds": round(duration, 3),
                    "size_bytes": size,
                },
            )
            await emit(
                conn,
                active.room.instance_id,
                "recording_finished",
                {
                    "recording": {
                        "id": str(active.id),
                        "status": status,
                        "error": error,
                        "stop_reason": reason,
                        "duration_seconds": round(duration, 3),
                        "size_bytes": int(size),
                    },
                    "room": room_hook_json(active.room),
                },
            )
        return int(size)

    async def _align(self, active: _Active) -> None:
        """Line up each publisher's files by its sender reports (its own clock), anchored
        at the arrival-time offset of its earliest file; others keep arrival alignment."""
        groups: dict[str, list[_File]] = {}
        for entry in active.files.values():
            if entry.participant_id and entry.sender_first is not None and entry.arrival_offset is not None:
                groups.setdefault(entry.participant_id, []).append(entry)
        for entries in groups.values():
            if len(entries) < 2:
                continue
            anchor = min(entries, key=lambda e: e.sender_first or 0.0)
            for entry in entries:
                offset = max(
                    0.0, (anchor.arrival_offset or 0.0) + (entry.sender_first or 0.0) - (anchor.sender_first or 0.0)
                )
                await self.pool.execute(
                    "UPDATE recording_files SET start_offset_seconds = $2, aligned_by = 'sender_report' WHERE id = $1",
                    entry.id,
                    offset,
                )

    async def _fail(self, active: _Active, error: str) -> None:
        """A file failed: the recording fails and stops; the room is left alone."""
        if active.failure is not None:
            return
        active.failure = error[:1000]
        log.warning("recording failed", extra={"recording_id": str(active.id), "error": active.failure})
        self._halt(active)
        self._begin_stop(self.system_actor, active, "failed")
        await self._persist(
            active,
            lambda: self.pool.execute(
                "UPDATE recordings SET status = 'failed', error = $2 WHERE id = $1", active.id, active.failure
            ),
        )

    async def _watch_disk(self) -> None:
        """While recordings run, stop them all cleanly (``disk_full``) once free space falls below
        the reserve, so the database sharing the filesystem keeps room to write."""
        try:
            while self.active:
                await asyncio.sleep(self.disk.interval)
                if (shortage := await self.disk.shortage()) is None:
                    continue
                log.warning("free disk space below the reserve: stopping recordings", extra=shortage.details)
                for active in list(self.active.values()):
                    self._halt(active)
                    self._begin_stop(self.system_actor, active, "disk_full")
        finally:
            self._disk_watch = None

    # --- node life ----------------------------------------------------------------------------

    async def recover(self) -> int:
        """Mark this node's recordings that a crash interrupted as failed, keeping their files.

        The writers are crash-safe, so what is on disk plays up to the crash: each
        file is listed with its size (and uploaded, for S3).
        """
        rows = await self.pool.fetch(
            "SELECT id FROM recordings WHERE node_id = $1 AND status = ANY($2::text[])", self.node_id, list(ACTIVE)
        )
        for row in rows:
            files = await self.pool.fetch(
                "SELECT id, storage_key, content_type FROM recording_files WHERE recording_id = $1 "
                "AND status = 'recording'",
                row["id"],
            )
            # The last write before the crash ends what is billed (the writers flush as they go).
            last_write = await asyncio.to_thread(self._last_write, [f["storage_key"] for f in files])
            for f in files:
                try:
                    # The cut file plays as it is; a remux gives it its duration and seek index back.
                    await asyncio.to_thread(repair, self.storage.spool_path(f["storage_key"]))
                    size = await self.storage.store(f["storage_key"], f["content_type"])
                    await self.pool.execute(
                        """UPDATE recording_files SET status = 'completed', size_bytes = $2, completed_at = now(),
                                  error = 'interrupted: the node stopped while recording' WHERE id = $1""",
                        f["id"],
                        size,
                    )
                except StorageError as exc:
                    await self.pool.execute(
                        "UPDATE recording_files SET status = 'failed', error = $2 WHERE id = $1", f["id"], str(exc)
                    )
            async with self.pool.acquire() as conn, conn.transaction():
                done = await conn.fetchrow(
                    """UPDATE recordings SET status = 'failed',
                              error = 'interrupted: the node stopped while recording',
                              stop_reason = 'interrupted', stopped_at = now(),
                              size_bytes = (SELECT coalesce(sum(size_bytes), 0) FROM recording_files
                                             WHERE recording_id = $1),
                              duration_seconds = greatest(0, extract(epoch FROM now() - started_at))
                        WHERE id = $1
                    RETURNING instance_id, room_id, error, duration_seconds, size_bytes""",
                    row["id"],
                )
                await self._bill_interrupted(conn, row["id"], last_write)
                room = await conn.fetchrow("SELECT id, name, kind FROM rooms WHERE id = $1", done["room_id"])
                await emit(
                    conn,
                    done["instance_id"],
                    "recording_finished",
                    {
                        "recording": {
                            "id": str(row["id"]),
                            "status": "failed",
                            "error": done["error"],
                            "stop_reason": "interrupted",
                            "duration_seconds": round(float(done["duration_seconds"]), 3),
                            "size_bytes": int(done["size_bytes"]),
                        },
                        "room": {"id": str(room["id"]), "name": room["name"], "kind": room["kind"]},
                    },
                )
        if rows:
            log.warning("interrupted recordings marked failed", extra={"count": len(rows)})
        return len(rows)

    def _last_write(self, keys: list[str]) -> float | None:
        times = [p.stat().st_mtime for p in (self.storage.spool_path(k) for k in keys) if p.exists()]
        return max(times, default=None)

    async def _bill_interrupted(self, conn: Any, recording_id: uuid.UUID, last_write: float | None) -> None:
        """An interrupted recording's minutes: from its start to its files' last write, once (its key)."""
        row = await conn.fetchrow(
            "SELECT customer_id, instance_id, room_id, started_at FROM recordings WHERE id = $1", recording_id
        )
        if last_write is None or row["started_at"] is None:
            return
        seconds = last_write - row["started_at"].timestamp()
        if seconds <= 0:
            return
        await usage.record(
            conn,
            [
                usage.UsageEvent(
                    customer_id=row["customer_id"],
                    instance_id=row["instance_id"],
                    kind="recording_minutes",
                    quantity=usage.minutes(seconds),
                    key=f"recording:{recording_id}",
                    occurred_at=dt.datetime.now(dt.UTC),
                    room_id=row["room_id"],
                    subject=str(recording_id),
                )
            ],
        )

    async def close(self) -> None:
        """Node shutdown: every running recording stops cleanly (reason ``node_shutdown``).

        One whose rows cannot be written (the database is away) keeps its files, and the
        next start closes it out as interrupted (:meth:`recover`).
        """
        if self._disk_watch is not None:
            self._disk_watch.cancel()
        if self._storage_watch is not None:
            self._storage_watch.cancel()
        for active in list(self.active.values()):
            try:
                await self.stop(self.system_actor, active.id, reason="node_shutdown")
            except Exception:
                log.exception("stopping a recording at shutdown failed", extra={"recording_id": str(active.id)})
        for task in list(self._tasks):
            task.cancel()

    def samples(self) -> list[Sample]:
        files = [f for a in self.active.values() for f in a.files.values()]
        return [
            Sample("gbmedia_recordings_active", "Recordings running on this node", len(self.active)),
            Sample("gbmedia_recording_files_active", "Files being written by running recordings", len(files)),
            Sample(
                "gbmedia_recordings_completed_total", "Recordings completed on this node", self.completed, counter=True
            ),
            Sample("gbmedia_recordings_failed_total", "Recordings failed on this node", self.failed, counter=True),
        ]


def auto_record_kinds(metadata: dict[str, Any]) -> list[str]:
    """What a room's ``metadata.auto_record`` asks for: true means ``["tracks"]``."""
    value = metadata.get("auto_record") if isinstance(metadata, dict) else None
    if value is True:
        return ["tracks"]
    if isinstance(value, list):
        kinds = [k for k in KINDS if k in value]
        return kinds
    return []
