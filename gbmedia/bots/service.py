"""The bot runtime as a node holds it: the dialogs, the engine that answers in chats, the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gbmedia.bots.debug.service import Debugger
from gbmedia.bots.dialogs import Dialogs
from gbmedia.bots.engine import DialogEngine
from gbmedia.bots.limits import Limits
from gbmedia.bots.runner import Runner
from gbmedia.bots.scheduler import Scheduler
from gbmedia.messaging.service import Chat
from gbmedia.tenancy.instances import Instances


@dataclass
class Bots:
    dialogs: Dialogs
    engine: DialogEngine
    scheduler: Scheduler
    debugger: Debugger  # debug runs: in memory, apart from the engine's runs

    @classmethod
    def create(
        cls,
        pool: asyncpg.Pool,
        chat: Chat,
        instances: Instances,
        data_dir: Path,
        limits: Limits,
        debug_idle_seconds: float = 600.0,
        debug_runs_per_instance: int = 5,
    ) -> Bots:
        dialogs = Dialogs(pool)
        runner = Runner(pool, instances, dialogs, data_dir, limits)
        debugger = Debugger(dialogs, instances, limits, debug_idle_seconds, debug_runs_per_instance)
        return cls(dialogs, DialogEngine(pool, chat, runner), Scheduler(pool, runner), debugger)

    def start(self) -> None:
        self.engine.start()
        self.scheduler.start()
        self.debugger.start_reaper()

    async def stop(self) -> None:
        await self.debugger.close()
        await self.scheduler.stop()
        await self.engine.stop()
