"""The compiled (WebAssembly) engine behind the debugger's :class:`~gbmedia.bots.debug.seam.Debuggable` seam.

A debug run compiles its dialog with ``debug=True``: every statement then calls the
``line`` import with its place, its call depth and its frame, from the worker thread the
module runs in. :func:`~gbmedia.bots.debug.seam.blocking_hook` hands that place to the
debugger and blocks the thread while the run is paused, so breakpoints, step over (by
depth, as in the interpreter), resume and getContext behave as they do over the
interpreter (tests/bots/debug/test_session.py runs the same checks over both).

Stopping a run that stands in its worker thread cannot cancel that thread: the pause hook
raises :class:`RunHalted` instead, which leaves the module at the next statement (or at
once when paused there), and :meth:`WasmDebugRun.close` waits until the thread is out.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

from gbmedia.bots.compiler import Compiled
from gbmedia.bots.context import Context
from gbmedia.bots.debug.seam import PauseHook, PlaceNote, blocking_hook
from gbmedia.bots.machine import Outcome
from gbmedia.bots.wasm_compiler import WasmDialog, compile_wasm
from gbmedia.bots.wasm_engine import EPOCH_TICK, WasmRun, _module

CLOSE_WAIT_SECONDS = 10.0  # how long stop waits for the worker thread to leave the module


def debug_module(compiled: Compiled) -> WasmDialog:
    """``compiled`` as a debug module (NotCompiled when it cannot be): CPU work, run it in a thread."""
    module = compile_wasm(compiled, debug=True)
    _module(module.wasm)  # Cranelift's compilation here, not at the run's first statement
    return module


class _TrackedRun(WasmRun):
    """A :class:`WasmRun` that says when its worker thread is inside the module."""

    def __init__(self, dialog: WasmDialog, ctx: Context) -> None:
        super().__init__(dialog, ctx)
        self.outside = threading.Event()
        self.outside.set()

    def _enter(self, resume: bool) -> int:
        self.outside.clear()
        try:
            return super()._enter(resume)
        finally:
            self.outside.set()


class WasmDebugRun:
    """A compiled debug module's run, driven by the debugger (the run stays in memory between HEARs)."""

    def __init__(self, dialog: WasmDialog, ctx: Context) -> None:
        self.run = _TrackedRun(dialog, ctx)
        self.held = False  # the worker thread waits in the line hook: the store may be read from the loop

    def set_pause_hook(self, hook: PauseHook | None, note: PlaceNote | None = None) -> None:
        run = self.run
        if hook is None:
            run.ctx.line_hook = None  # type: ignore[attr-defined]
            return

        def where() -> tuple[int, str | None]:
            unit, depth, _ = run.at or (0, 1, 0)
            return depth, run.meta["units"][unit]["name"] or None

        def resumed() -> None:
            """After a pause (in the worker thread): time paused is not time run, for the budget and the epochs."""
            run.ctx.budget.restart_clock()
            run.store.set_epoch_deadline(max(1, math.ceil(run.ctx.budget.remaining_seconds() / EPOCH_TICK)))

        pause = blocking_hook(hook, asyncio.get_running_loop(), where, resumed, note)

        def line_hook(dialog: str, line: int) -> None:
            self.held = True
            try:
                pause(dialog, line)
            finally:
                self.held = False

        run.ctx.line_hook = line_hook  # type: ignore[attr-defined]

    async def start(self) -> Outcome:
        return await self.run.start()

    async def answer(self, text: str) -> Outcome:
        return await self.run.resume(text)

    def variables(self) -> dict[str, Any]:
        """The dialog's variables, then the FUNCTION's parameters over them.

        Read from the event loop only while the worker thread waits in the line hook or is
        out of the module, so the store is never used by two threads at once; while the
        thread runs (a stop that is still waiting for a slow built-in) there is nothing.
        """
        if not self.held and not self.run.outside.is_set():
            return {}
        return {**self.run.globals, **self.run.locals()}

    async def close(self) -> None:
        """Wait for the worker thread to leave the module (the pause hook makes it halt)."""
        if not self.run.outside.is_set():
            await asyncio.to_thread(self.run.outside.wait, CLOSE_WAIT_SECONDS)
