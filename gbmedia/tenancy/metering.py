"""The node's usage meter: timed sessions and counters, written in ticks that never count twice.

A module that knows a usage (the rooms for participants and viewers, chat for
messages) opens a :class:`UsageMeter` session when it starts and closes it when it
ends, or adds to a counter. Every ``flush_seconds`` the meter writes what accrued
since the last tick, as usage events (:mod:`gbmedia.tenancy.usage`), in one
statement:

* a session's tick ``n`` covers ``[flushed_to, now)`` (or up to its end) and has the
  key ``<session id>:<n>``. The tick is fixed before it is written and, if the write
  fails (the database away), written again unchanged at the next flush: a write whose
  answer was lost but that committed is then a conflict, not a second count.
* the counters of a tick are keyed ``<meter id>:<tick>:<customer>:<instance>:<kind>``,
  the meter id being random per process start, and are retried unchanged the same way.

So a node killed mid-session loses what accrued since its last committed tick (at most
``flush_seconds`` plus one write) and never counts a minute twice; a restarted node
meters its new sessions under new ids. A closed session's last tick is written at the
next flush, and :meth:`UsageMeter.stop` flushes everything on a clean shutdown.
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
from decimal import Decimal

import asyncpg

from gbmedia.tenancy import usage
from gbmedia.tenancy.usage import UsageEvent

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Usage:
    """Whose usage a session or counter is: the customer, instance and room it is billed to."""

    customer_id: uuid.UUID
    instance_id: uuid.UUID | None
    room_id: uuid.UUID | None = None


@dataclass
class _Session:
    id: str
    owner: Usage
    kind: str
    subject: str | None
    channel: str | None
    started: float  # epoch seconds
    flushed_to: float  # epoch seconds: written up to here
    ended: float | None = None
    tick: int = 0
    pending: tuple[int, float, float] | None = None  # (tick, from, to) fixed and not yet committed


@dataclass
class _Counts:
    tick: int
    counts: dict[tuple[Usage, str], int] = field(default_factory=dict)
    seconds: dict[tuple[Usage, str, str | None], float] = field(default_factory=dict)


class UsageMeter:
    def __init__(self, pool: asyncpg.Pool, flush_seconds: float, clock: Clock = time.time) -> None:
        self.pool = pool
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.id = uuid.uuid4().hex[:16]  # this process's counters' keys
        self.sessions: dict[str, _Session] = {}
        self._counts: dict[tuple[Usage, str], int] = {}
        self._seconds: dict[tuple[Usage, str, str | None], float] = {}
        self._pending_counts: _Counts | None = None
        self._tick = 0
        self._before_flush: list[Callable[[], Awaitable[None] | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()  # one flush at a time: a tick is fixed, written and committed together
        self.written = 0  # events committed by this meter
        self.failures = 0

    # --- what the modules that know a usage call ----------------------------------------

    def open(
        self,
        session_id: str,
        owner: Usage,
        kind: str,
        *,
        subject: str | None = None,
        channel: str | None = None,
        started: float | None = None,
    ) -> None:
        """Start timing ``session_id`` (from ``started``, epoch seconds; default now). Idempotent."""
        if kind not in usage.MINUTE_KINDS:
            raise ValueError(f"{kind!r} is not a timed usage")
        if session_id in self.sessions:
            return
        begin = self.clock() if started is None else min(started, self.clock())
        self.sessions[session_id] = _Session(session_id, owner, kind, subject, channel, begin, begin)

    def close(self, session_id: str, ended: float | None = None) -> None:
        """Stop timing ``session_id`` (at ``ended``; default now); its last tick goes out at the next flush."""
        session = self.sessions.get(session_id)
        if session is not None and session.ended is None:
            end = self.clock() if ended is None else ended
            session.ended = max(end, session.flushed_to)

    def is_open(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        return session is not None and session.ended is None

    def count(self, owner: Usage, kind: str, quantity: int = 1) -> None:
        """Add to a counted usage (``messages``, ``bytes_out``)."""
        if kind not in usage.COUNT_KINDS:
            raise ValueError(f"{kind!r} is not a counted usage")
        if quantity > 0:
            self._counts[(owner, kind)] = self._counts.get((owner, kind), 0) + quantity

    def count_seconds(self, owner: Usage, kind: str, seconds: float, *, channel: str | None = None) -> None:
        """Add to a timed usage that is not a session: media time served (LL-HLS viewers fetch it by the part)."""
        if kind not in usage.MINUTE_KINDS:
            raise ValueError(f"{kind!r} is not a timed usage")
        if seconds > 0:
            self._seconds[(owner, kind, channel)] = self._seconds.get((owner, kind, channel), 0.0) + seconds

    def before_flush(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``hook`` before each flush (a module that samples its state, like the rooms' byte counts)."""
        self._before_flush.append(hook)

    # --- ticks ----------------------------------------------------------------------------

    def _fix_ticks(self, now: float) -> list[UsageEvent]:
        events: list[UsageEvent] = []
        for s in self.sessions.values():
            if s.pending is None:
                upto = now if s.ended is None else s.ended
                if upto > s.flushed_to:
                    s.pending = (s.tick, s.flushed_to, upto)
            if s.pending is not None:
                tick, begin, end = s.pending
                events.append(
                    UsageEvent(
                        customer_id=s.owner.customer_id,
                        instance_id=s.owner.instance_id,
                        kind=s.kind,
                        # cumulative rounding: a session's ticks add up to exactly its rounded length
                        quantity=usage.minutes(end - s.started) - usage.minutes(begin - s.started),
                        key=f"{s.id}:{tick}",
                        occurred_at=dt.datetime.fromtimestamp(end, dt.UTC),
                        room_id=s.owner.room_id,
                        subject=s.subject,
                        channel=s.channel,
                    )
                )
        if self._pending_counts is None and (self._counts or self._seconds):
            self._pending_counts = _Counts(self._tick, self._counts, self._seconds)
            self._counts, self._seconds = {}, {}
            self._tick += 1
        if self._pending_counts is not None:
            at = dt.datetime.fromtimestamp(now, dt.UTC)
            for (owner, kind), quantity in self._pending_counts.counts.items():
                events.append(
                    UsageEvent(
                        customer_id=owner.customer_id,
                        instance_id=owner.instance_id,
                        kind=kind,
                        quantity=Decimal(quantity),
                        key=f"{self.id}:{self._pending_counts.tick}:{owner.customer_id}:{owner.instance_id}:"
                        f"{owner.room_id}:{kind}",
                        occurred_at=at,
                        room_id=owner.room_id,
                    )
                )
            for (owner, kind, channel), seconds in self._pending_counts.seconds.items():
                events.append(
                    UsageEvent(
                        customer_id=owner.customer_id,
                        instance_id=owner.instance_id,
                        kind=kind,
                        quantity=usage.minutes(seconds),
                        key=f"{self.id}:{self._pending_counts.tick}:{owner.customer_id}:{owner.instance_id}:"
                        f"{owner.room_id}:{kind}:{channel}",
                        occurred_at=at,
                        room_id=owner.room_id,
                        channel=channel,
                    )
                )
        return events

    def _committed(self) -> None:
        for session_id, s in list(self.sessions.items()):
            if s.pending is not None:
                s.tick, s.flushed_to, s.pending = s.pending[0] + 1, s.pending[2], None
            if s.ended is not None and s.flushed_to >= s.ended:
                del self.sessions[session_id]
        self._pending_counts = None

    async def flush(self) -> int:
        """Write every accrued tick; how many events were new. A failed write is kept for the next flush."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        for hook in self._before_flush:
            result = hook()
            if result is not None:
                await result
        events = [e for e in self._fix_ticks(self.clock()) if e.quantity > 0]
        if not events:
            self._committed()
            return 0
        written = await usage.record(self.pool, events)
        self._committed()
        self.written += written
        return written

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-meter")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.failures += 1  # the fixed ticks are written again, unchanged, next time
                log.warning("usage flush failed; retried at the next tick", extra={"error": str(exc)})

    async def stop(self) -> None:
        """Stop the ticks and write what accrued (open sessions up to now, and they go on if restarted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("final usage flush failed", extra={"error": str(exc)})
