"""The bot runtime as a node holds it: the dialogs, the engine that answers in chats, the scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gbmedia.bots.dialogs import Dialogs
from gbmedia.bots.engine import DialogEngine
from gbmedia.bots.host import FileStore
from gbmedia.bots.limits import Limits
from gbmedia.bots.runner import Runner
from gbmedia.bots.scheduler import Scheduler
from gbmedia.bots.sharing import ShareLinks
from gbmedia.messaging.service import Chat
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.run_tokens import RunTokens


@dataclass
class Bots:
    dialogs: Dialogs
    engine: DialogEngine
    scheduler: Scheduler

    @classmethod
    def create(
        cls,
        pool: asyncpg.Pool,
        chat: Chat,
        instances: Instances,
        data_dir: Path,
        limits: Limits,
        links: ShareLinks | None = None,
        office_binary: str = "soffice",
        file_store: Callable[[str], FileStore] | None = None,
    ) -> Bots:
        dialogs = Dialogs(pool)
        runner = Runner(
            pool,
            instances,
            dialogs,
            data_dir,
            limits,
            RunTokens(instances.secrets),
            links=links,
            office_binary=office_binary,
            file_store=file_store,
        )
        return cls(dialogs, DialogEngine(pool, chat, runner), Scheduler(pool, runner))

    def start(self) -> None:
        self.engine.start()
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.engine.stop()
