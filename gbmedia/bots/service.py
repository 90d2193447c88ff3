"""The bot runtime as a node holds it: the dialogs, the engine that answers in chats, the scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from gbmedia.bots.browser import Browsers
from gbmedia.bots.debug.service import Debugger
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
    debugger: Debugger  # debug runs: in memory, apart from the engine's runs
    browsers: Browsers | None = None  # closed with the bots: every context, then the browser process

    @classmethod
    def create(
        cls,
        pool: asyncpg.Pool,
        chat: Chat,
        instances: Instances,
        data_dir: Path,
        limits: Limits,
        *,
        debug_idle_seconds: float = 600.0,
        debug_runs_per_instance: int = 5,
        links: ShareLinks | None = None,
        office_binary: str = "soffice",
        file_store: Callable[[str], FileStore] | None = None,
        engine: str = "wasm",
        **ports: Any,
    ) -> Bots:
        """``ports``: what runs may reach of the node (``browsers``, ``media_bots``, ``rooms``, ``placement``)."""
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
            engine=engine,
            **ports,
        )
        debugger = Debugger(dialogs, instances, limits, debug_idle_seconds, debug_runs_per_instance, engine)
        return cls(dialogs, DialogEngine(pool, chat, runner), Scheduler(pool, runner), debugger, runner.browsers)

    def start(self) -> None:
        self.engine.start()
        self.scheduler.start()
        self.debugger.start_reaper()

    async def stop(self) -> None:
        await self.debugger.close()
        await self.scheduler.stop()
        await self.engine.stop()
        if self.browsers is not None:
            await self.browsers.close()
