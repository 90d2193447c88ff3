"""The bot runtime as a node holds it: the dialogs, the engine that answers in chats, the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

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

    @classmethod
    def create(
        cls, pool: asyncpg.Pool, chat: Chat, instances: Instances, data_dir: Path, limits: Limits, engine: str = "wasm"
    ) -> Bots:
        dialogs = Dialogs(pool)
        runner = Runner(pool, instances, dialogs, data_dir, limits, engine)
        return cls(dialogs, DialogEngine(pool, chat, runner), Scheduler(pool, runner))

    def start(self) -> None:
        self.engine.start()
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.engine.stop()
