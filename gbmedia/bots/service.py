"""The bot runtime as a node holds it: the dialogs, the engine that answers in chats, the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from gbmedia.bots.browser import Browsers
from gbmedia.bots.dialogs import Dialogs
from gbmedia.bots.engine import DialogEngine
from gbmedia.bots.limits import Limits
from gbmedia.bots.runner import Runner
from gbmedia.bots.scheduler import Scheduler
from gbmedia.messaging.service import Chat
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.run_tokens import RunTokens


@dataclass
class Bots:
    dialogs: Dialogs
    engine: DialogEngine
    scheduler: Scheduler
    browsers: Browsers | None = None  # closed with the bots: every context, then the browser process

    @classmethod
    def create(
        cls, pool: asyncpg.Pool, chat: Chat, instances: Instances, data_dir: Path, limits: Limits, **ports: Any
    ) -> Bots:
        """``ports``: what runs may reach of the node (``browsers``, ``media_bots``, ``rooms``, ``placement``)."""
        dialogs = Dialogs(pool)
        runner = Runner(pool, instances, dialogs, data_dir, limits, RunTokens(instances.secrets), **ports)
        return cls(dialogs, DialogEngine(pool, chat, runner), Scheduler(pool, runner), runner.browsers)

    def start(self) -> None:
        self.engine.start()
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.engine.stop()
        if self.browsers is not None:
            await self.browsers.close()
