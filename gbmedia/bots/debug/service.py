"""The node's debug runs: started per instance, capped per instance, ended when left idle.

A paused run holds a task, its variables and a scratch folder; an operator who closes
the page never says stop. So every action refreshes the run's ``last_used``, and a
reaper ends runs idle longer than ``GBMEDIA_DEBUG_RUN_IDLE_SECONDS``; an instance may
hold at most ``GBMEDIA_DEBUG_RUNS_PER_INSTANCE`` runs at once. Debug runs live in this
node's memory only: a run id another node made, or another instance's, is not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gbmedia.bots.compiler import Compiled, load
from gbmedia.bots.context import Context
from gbmedia.bots.debug.seam import Debuggable, InterpreterRun
from gbmedia.bots.debug.session import DebugPort, DebugRun
from gbmedia.bots.debug.wasm import WasmDebugRun, debug_module
from gbmedia.bots.dialogs import DialogMissing, Dialogs, dialog_name
from gbmedia.bots.engines import DEFAULT_ENGINE
from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher, allowed_networks
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import UserInfo
from gbmedia.bots.limits import Limits
from gbmedia.bots.memory_tables import MemoryTables
from gbmedia.bots.wasm_compiler import NotCompiled
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Instance

log = logging.getLogger(__name__)
DEBUG_USER = UserInfo("debugger", "Debugger")


class TooManyDebugRuns(Exception):
    """The instance already holds as many debug runs as it may."""


@dataclass
class Debugger:
    dialogs: Dialogs
    instances: Instances
    limits: Limits
    idle_seconds: float = 600.0
    per_instance: int = 5
    engine: str = DEFAULT_ENGINE  # GBMEDIA_BOT_ENGINE: the engine a debug run uses unless its start names one
    runs: dict[uuid.UUID, DebugRun] = field(default_factory=dict)
    _reaper: asyncio.Task[None] | None = None

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="debug-run-reaper")

    async def close(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        for run in list(self.runs.values()):
            await self.end(run)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(self.idle_seconds / 4, 30.0)))
            try:
                await self.reap()
            except Exception:  # one bad run must not stop the reaper for the others
                log.exception("debug run reaper failed")

    async def reap(self) -> list[uuid.UUID]:
        """End the runs nobody touched for ``idle_seconds``; their ids."""
        now = time.monotonic()
        idle = [run for run in self.runs.values() if now - run.last_used > self.idle_seconds]
        for run in idle:
            log.info("debug run %s of %s ended after %.0f s idle", run.id, run.dialog, now - run.last_used)
            await self.end(run)
        return [run.id for run in idle]

    async def compile(self, instance_id: uuid.UUID, name: str, source: str) -> Compiled:
        """``source`` compiled as dialog ``name``, its INCLUDEs from the instance's stored dialogs."""
        sources = {d.name: d.source for d in await self.dialogs.list(instance_id)}

        def loader(included: str) -> str:
            return sources[dialog_name(included)]

        return await asyncio.to_thread(load, source, dialog_name(name), loader)

    async def start(
        self,
        instance: Instance,
        compiled: Compiled,
        source: str,
        breakpoints: list[int],
        stop_on_entry: bool,
        engine: str | None = None,
    ) -> DebugRun:
        """A debug run of ``compiled`` in ``engine`` (None: the node's); one the compiler refuses runs interpreted."""
        if sum(1 for run in self.runs.values() if run.instance_id == instance.id) >= self.per_instance:
            raise TooManyDebugRuns(self.per_instance)
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gbmedia-debug-"))
        port = DebugPort(user=DEBUG_USER)
        try:
            http: GuardedFetcher | None = GuardedFetcher(allowed_networks(instance.config))
        except Fault:
            http = None

        async def stored(name: str) -> Compiled:
            """callVM: the instance's stored dialog, run in this debug run's sandbox (its tables and files)."""
            try:
                return await self.dialogs.compiled(instance.id, name)
            except DialogMissing:
                raise Fault(f"the bot has no dialog {name}") from None

        ctx = Context(
            instance_id=str(instance.id),
            dialog=compiled.dialog,
            dialogs=stored,
            port=port,
            tables=MemoryTables(),
            files=InstanceFiles.rooted(scratch),
            http=http,
            config=instance.config,
            locale=instance.locale or "en",
            limits=self.limits,
        )
        runner, name = await self._engine(compiled, ctx, engine or self.engine)
        run = DebugRun(instance.id, compiled.dialog, source, runner, port, scratch, name)
        run.breakpoints.update(breakpoints)
        self.runs[run.id] = run
        await run.start(stop_on_entry)
        return run

    async def _engine(self, compiled: Compiled, ctx: Context, engine: str) -> tuple[Debuggable, str]:
        if engine == "wasm":
            try:
                module = await asyncio.to_thread(debug_module, compiled)
            except NotCompiled as exc:
                log.info("debug run of %s in the interpreter: %s", compiled.dialog, exc)
            else:
                return WasmDebugRun(module, ctx), "wasm"
        return InterpreterRun(compiled, ctx), "interp"

    def get(self, instance_id: uuid.UUID, run_id: uuid.UUID) -> DebugRun | None:
        """The instance's run (None for another instance's: the caller answers 404 alike)."""
        run = self.runs.get(run_id)
        if run is None or run.instance_id != instance_id:
            return None
        run.last_used = time.monotonic()
        return run

    async def end(self, run: DebugRun) -> None:
        self.runs.pop(run.id, None)
        await run.stop()
