"""What the debugger needs of an engine, and the interpreter's side of it.

The debugger drives a run through a small interface so that any engine that runs GB
BASIC (the interpreter today, the WebAssembly engine later) can be debugged the same
way: the engine calls a *pause hook* before each statement with the statement's place,
and the hook may wait there (a breakpoint or a step); between two statements the
debugger reads the variables in scope. Starting and answering a HEAR are the same
calls an engine already has. The WebAssembly engine's side is in
:mod:`gbmedia.bots.debug.wasm`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gbmedia.bots.compiler import Compiled, Ins
from gbmedia.bots.context import Context
from gbmedia.bots.machine import Outcome, Run


@dataclass(frozen=True, slots=True)
class Place:
    """Where a run is about to execute a statement: its source line, the dialog it was written in, the call depth."""

    line: int
    dialog: str
    depth: int  # 1 in the dialog's body, 2 inside a FUNCTION it called, ...
    function: str | None  # the FUNCTION being run (None: the dialog's body)


PauseHook = Callable[[Place], Awaitable[bool]]  # True when it paused the run there
# Called in the engine's own thread before the pause hook: notes the place, and says whether the pause hook
# must run there (False: it would not pause, so a thread-run engine skips the trip to the event loop).
PlaceNote = Callable[[Place], bool]


class Debuggable(Protocol):
    """An engine's run as the debugger drives it."""

    def set_pause_hook(self, hook: PauseHook | None, note: PlaceNote | None = None) -> None:
        """Call ``hook`` before every statement (None: run at full speed); time it paused is not run time.

        An engine may first ask ``note`` (cheap, thread-safe) and skip ``hook`` where it says False.
        """

    async def start(self) -> Outcome:
        """Run from the top until the dialog ends, fails, or waits at a HEAR."""

    async def answer(self, text: str) -> Outcome:
        """Give the HEAR the run waits at the user's answer, and go on."""

    def variables(self) -> dict[str, Any]:
        """The variables in scope where the run stands, by name (JSON values)."""

    async def close(self) -> None:
        """After stop: wait until nothing of the run executes any more (a worker thread left its module)."""


class RunHalted(Exception):
    """The debugger stopped the run: raised by the pause hook, it ends an engine that runs in a thread."""


class InterpreterRun:
    """The interpreter (:class:`gbmedia.bots.machine.Run`) behind the :class:`Debuggable` seam.

    The run stays in memory between HEARs (no snapshot and restore): a debug run lives
    only on the node that holds it.
    """

    def __init__(self, compiled: Compiled, ctx: Context) -> None:
        self.compiled = compiled
        self.run = Run(compiled, ctx)

    def set_pause_hook(self, hook: PauseHook | None, note: PlaceNote | None = None) -> None:
        """The hook runs on the loop, in the run's own task: a call costs little, so ``note`` is not needed."""
        if hook is None:
            self.run.line_hook = None
            return

        async def line_hook(run: Run, ins: Ins) -> None:
            unit = run.frame.unit
            if await hook(Place(ins.line, ins.dialog or self.compiled.dialog, len(run.frames), unit or None)):
                run.ctx.budget.restart_clock()  # time paused is not time run; time running still counts

        self.run.line_hook = line_hook

    async def start(self) -> Outcome:
        return await self.run.start()

    async def answer(self, text: str) -> Outcome:
        return await self.run.resume(text)

    def variables(self) -> dict[str, Any]:
        """The dialog's variables, then the FUNCTION's own (its parameters) over them, as BASIC looks them up."""
        scope = dict(self.run.globals)
        if len(self.run.frames) > 1:
            scope.update(self.run.frame.vars)
        return scope

    async def close(self) -> None:
        """Nothing to wait for: the run is a task on the loop, and the debugger cancelled it."""


def blocking_hook(
    hook: PauseHook,
    loop: asyncio.AbstractEventLoop,
    where: Callable[[], tuple[int, str | None]] | None = None,
    resumed: Callable[[], None] | None = None,
    note: PlaceNote | None = None,
) -> Callable[[str, int], None]:
    """``hook`` for an engine that runs a dialog in a worker thread and calls a plain ``(dialog, line)`` hook.

    The compiled (WebAssembly) engine runs in a thread of its own pool and calls its
    ``line_hook(dialog, line)`` there: this hook hands the place to the debugger's pause
    hook on the event loop and blocks that worker thread until the pause ends, which is
    how a thread-run engine pauses. ``where`` gives the statement's call depth and
    FUNCTION (without it: depth 1, the body, and steps would go into FUNCTIONs);
    ``resumed`` runs in the thread after a pause (the engine restarts its clocks there).
    ``note``, asked in the thread first, spares the trip to the loop (tens of microseconds)
    at the statements where the run will not pause: most of them.
    A :class:`RunHalted` from the pause hook is raised in the thread, out of the engine.
    """

    def line_hook(dialog: str, line: int) -> None:
        depth, function = where() if where is not None else (1, None)
        place = Place(line, dialog, depth, function)
        if note is not None and not note(place):
            return
        paused = _wait_on(loop, asyncio.run_coroutine_threadsafe(hook(place), loop))
        if paused and resumed is not None:
            resumed()

    return line_hook


LOOP_CHECK_SECONDS = 1.0


def _wait_on(loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[bool]) -> bool:
    """The pause hook's answer, or :class:`RunHalted` once ``loop`` is closed: a worker thread never outlives it.

    A run paused when its event loop ends (a node stopped without ending its debug runs, a
    test's loop cancelled its tasks and closed) would otherwise hold its thread forever, and
    the pool's exit at interpreter shutdown would wait on it.
    """
    while True:
        try:
            return future.result(LOOP_CHECK_SECONDS)
        except concurrent.futures.CancelledError:  # the loop cancelled the hook's task: it is shutting down
            raise RunHalted from None
        except concurrent.futures.TimeoutError:
            if loop.is_closed():
                future.cancel()
                raise RunHalted from None
