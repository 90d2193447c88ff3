"""Scheduled dialogs (``SET SCHEDULE "cron"``): each firing runs once, on one node, with no user.

``schedules.next_at`` is when a schedule fires next. Every node looks for schedules
that are due by its clock and claims each with ``UPDATE ... SET next_at = <the firing
after now> WHERE next_at = <the value it read> RETURNING``: of several nodes that saw
it due, exactly one moves it, and only that one runs the dialog. A node that was away
fires a missed schedule once, not once per missed time. The clock is injectable
(:attr:`Scheduler.clock`), so tests move time instead of waiting for it.

A scheduled run has no conversation: what it TALKs goes to the instance's log
(``chat_port.LogPort``), and a HEAR ends it with an error there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from dataclasses import dataclass

import asyncpg

from gbmedia.bots.chat_port import LogPort
from gbmedia.bots.dialogs import Clock, DialogMissing, next_firing, utc_now
from gbmedia.bots.engines import new_run
from gbmedia.bots.machine import Outcome
from gbmedia.bots.runner import Runner
from gbmedia.errors import ApiError
from gbmedia.tenancy.gates import require_feature

log = logging.getLogger(__name__)

TICK_SECONDS = 5.0
BATCH = 100  # due schedules looked at per tick


@dataclass(frozen=True)
class Firing:
    schedule_id: uuid.UUID
    instance_id: uuid.UUID
    dialog: str
    at: dt.datetime
    outcome: Outcome | None


class Scheduler:
    def __init__(
        self, pool: asyncpg.Pool, runner: Runner, *, clock: Clock = utc_now, tick_seconds: float = TICK_SECONDS
    ) -> None:
        self.pool = pool
        self.runner = runner
        self.clock = clock
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None
        self.fired = 0  # firings this node won (a metric)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bot scheduler tick failed")
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> list[Firing]:
        """Fire every schedule due now (by :attr:`clock`) that this node claims; the firings it ran."""
        now = self.clock()
        due = await self.pool.fetch(
            """SELECT id, instance_id, dialog_name, cron, next_at FROM schedules
                WHERE enabled AND next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at LIMIT $2""",
            now,
            BATCH,
        )
        fired: list[Firing] = []
        for row in due:
            claimed = await self.pool.fetchval(
                """UPDATE schedules SET next_at = $3, last_run_at = $4, updated_at = now()
                    WHERE id = $1 AND next_at = $2 RETURNING id""",
                row["id"],
                row["next_at"],
                next_firing(row["cron"], now),
                now,
            )
            if claimed is None:
                continue  # another node fired it
            self.fired += 1
            outcome = await self._run(row["instance_id"], row["dialog_name"])
            fired.append(Firing(row["id"], row["instance_id"], row["dialog_name"], now, outcome))
        return fired

    async def _run(self, instance_id: uuid.UUID, dialog: str) -> Outcome | None:
        port = LogPort(self.pool, instance_id, dialog)
        try:
            instance = await self.runner.instance(instance_id)
            compiled = await self.runner.dialogs.compiled(instance_id, dialog)
        except DialogMissing:
            return None  # deleted since it was read: its schedule went with it
        try:  # bots turned off by the tier or the instance: this firing is passed by, not kept for later
            await require_feature(self.pool, instance_id, "bots")
        except ApiError as refused:
            await port.log("warning", f"{dialog}: scheduled run skipped: {refused.message}")
            return None
        try:
            run = await new_run(compiled, self.runner.context(instance, dialog, port), self.runner.engine)
            outcome = await run.start()
        except Exception:
            log.exception("scheduled dialog failed", extra={"dialog": dialog})
            return None
        if outcome.status == "waiting":
            await port.log("error", f"{dialog}: HEAR in a scheduled dialog: there is no user to answer")
        elif outcome.status == "goto" and outcome.goto:
            await port.log("warning", f"{dialog}: GO TO {outcome.goto} in a scheduled dialog is not followed")
        return outcome
