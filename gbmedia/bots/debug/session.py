"""One debug run: a dialog run in its own sandbox, paused and stepped by an operator.

A debug run talks to nobody real. Its conversation is in memory (what the bot says
waits in :attr:`DebugRun.said` until the operator reads it), its tables are in memory
(SAVE and FIND never touch the instance's tables) and its files live in a scratch
folder removed when the run ends, so debugging a dialog cannot disturb live dialogs,
real conversations, or another debug run.

The engine runs in a task of its own; the pause hook, called before each statement,
decides whether to stop there (a breakpoint on that line, or a step that reached the
next statement at its depth or shallower) and then waits on an event that step,
resume and stop release. Each operator action waits until the run *settles* (paused,
waiting at a HEAR, or ended) for a short while, so its answer shows where the run
went; a run still busy after that answers ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmedia.bots.debug.seam import Debuggable, Place, RunHalted
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import Outcome
from gbmedia.waits import wait_for_event

RUNNING, BREAK, STOPPED = "running", "break", "stopped"
YIELD_EVERY = 256  # statements between two turns given to the event loop (a power of two)
SETTLE_SECONDS = 5.0  # how long an action waits for the run to pause, wait at a HEAR or end


@dataclass
class DebugPort(MemoryPort):
    """A debug run's conversation: in memory; what would leave it (SEND, TRANSFER TO) is shown as a log line instead."""

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        await super().send(channel, to, payload)
        self.logs.append(("send", f"{channel} to {to}: {json.dumps(payload, default=str)}"))

    async def transfer(self, to: str | None) -> None:
        await super().transfer(to)
        self.logs.append(("transfer", f"to {to or 'a person'}"))


class DebugStateError(Exception):
    """An action that does not fit the run's state (step while it runs, a message while it does not HEAR)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class DebugRun:
    """A dialog run under the debugger; ``engine`` is any :class:`Debuggable`."""

    instance_id: uuid.UUID
    dialog: str
    source: str
    engine: Debuggable
    port: MemoryPort
    scratch: Path | None = None
    engine_name: str = "interp"  # which engine runs it: "interp" or "wasm"
    breakpoints: set[int] = field(default_factory=set)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    state: str = RUNNING
    line: int | None = None
    function: str | None = None
    waiting: bool = False  # at a HEAR: sendMessage goes on
    outcome: str | None = None  # how it ended: done, failed, goto, stopped
    error: dict[str, Any] | None = None
    last_used: float = field(default_factory=time.monotonic)
    _stepping_depth: int | None = None  # stepping: pause at the next statement this deep or shallower
    _depth: int = 1
    _halting: bool = False  # stop was asked: the pause hook halts the engine
    _go: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _statements: int = 0
    _said_read: int = 0
    _logs_read: int = 0

    # --- the engine's side ---------------------------------------------------------------

    def _note(self, place: Place) -> bool:
        """In an engine's thread, before each statement: note the place; whether :meth:`_pause_hook` must run.

        The same decision as the pause hook's, made without the event loop (plain reads and
        writes of attributes); False where the run goes on without pausing.
        """
        if self._halting:
            return True
        if place.dialog != self.dialog:
            return False
        self.line, self.function, self._depth = place.line, place.function, place.depth
        stepping = self._stepping_depth is not None and place.depth <= self._stepping_depth
        return stepping or place.line in self.breakpoints

    async def _pause_hook(self, place: Place) -> bool:
        """Before each statement: pause here (True) at a breakpoint or where a step ends."""
        if self._halting:
            raise RunHalted  # stopped: an engine running in a thread leaves its module here
        self._statements += 1
        if not self._statements & (YIELD_EVERY - 1):
            await asyncio.sleep(0)  # a busy loop still lets stop, getContext and other runs in
        if place.dialog != self.dialog:
            return False  # an INCLUDEd dialog's statements: its lines are not this source's
        self.line, self.function, self._depth = place.line, place.function, place.depth
        stepping = self._stepping_depth is not None and place.depth <= self._stepping_depth
        if not stepping and place.line not in self.breakpoints:
            return False
        self._stepping_depth = None
        self.state = BREAK
        self._go.clear()
        self._settled.set()
        await self._go.wait()
        if self._halting:
            raise RunHalted
        self.state = RUNNING
        return True

    async def _drive(self, first: bool, answer: str = "") -> None:
        try:
            outcome = await (self.engine.start() if first else self.engine.answer(answer))
        except Exception as exc:  # the engine promises outcomes; anything else still ends only this run
            outcome = Outcome("failed")
            self.error = {"line": self.line, "message": f"internal error ({type(exc).__name__})"}
        self._settle(outcome)

    def _settle(self, outcome: Outcome) -> None:
        if outcome.status == "waiting":
            self.state, self.waiting = RUNNING, True
        else:
            self.state, self.waiting, self.outcome = STOPPED, False, outcome.status
            if outcome.error is not None:
                self.line = outcome.error.line or self.line
                self.error = {"line": outcome.error.line, "message": outcome.error.message}
        self._settled.set()

    def _launch(self, first: bool, answer: str = "") -> None:
        self._settled.clear()
        self._task = asyncio.create_task(self._drive(first, answer), name=f"debug-run-{self.id}")

    async def _wait_settled(self, settle: float) -> None:
        await wait_for_event(self._settled, settle)

    # --- the operator's side ---------------------------------------------------------------

    async def start(self, stop_on_entry: bool, settle: float = SETTLE_SECONDS) -> None:
        self.engine.set_pause_hook(self._pause_hook, self._note)
        if stop_on_entry:
            self._stepping_depth = 1 << 30  # the first statement, wherever it is
        self._launch(first=True)
        await self._wait_settled(settle)

    def _require_break(self) -> None:
        self._require_alive()
        if self.state != BREAK:
            if self.waiting:
                raise DebugStateError("debug_run_waiting", "the dialog waits at a HEAR: send it a message")
            raise DebugStateError("debug_run_not_paused", "the dialog is running, not paused at a line")

    def _require_alive(self) -> None:
        if self.state == STOPPED:
            raise DebugStateError("debug_run_stopped", "the debug run has ended")

    async def step(self, settle: float = SETTLE_SECONDS) -> None:
        """Step over: run this statement (a FUNCTION it calls included) and pause at the next one."""
        self._require_break()
        self._stepping_depth = self._depth
        await self._release(settle)

    async def resume(self, settle: float = SETTLE_SECONDS) -> None:
        """Run on to the next breakpoint, HEAR or the end."""
        self._require_break()
        self._stepping_depth = None
        await self._release(settle)

    async def _release(self, settle: float) -> None:
        self._settled.clear()
        self._go.set()
        await self._wait_settled(settle)

    async def send_message(self, text: str, settle: float = SETTLE_SECONDS) -> None:
        """The user's answer to the HEAR the run waits at."""
        self._require_alive()
        if not self.waiting:
            raise DebugStateError("debug_run_not_waiting", "the dialog is not waiting at a HEAR")
        self.waiting = False
        self._launch(first=False, answer=text)
        await self._wait_settled(settle)

    def set_breakpoint(self, line: int, enabled: bool) -> None:
        if enabled:
            self.breakpoints.add(line)
        else:
            self.breakpoints.discard(line)

    async def stop(self) -> None:
        """End the run wherever it is (paused, running or waiting) and drop its scratch files."""
        task, self._task = self._task, None
        self._halting = True
        self._go.set()  # a pause held in an engine's worker thread ends, and the hook halts that engine
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.engine.close()
        if self.state != STOPPED:
            self.state, self.waiting, self.outcome = STOPPED, False, "stopped"
        self._settled.set()
        if self.scratch is not None:
            scratch, self.scratch = self.scratch, None
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    def context(self) -> dict[str, Any]:
        """getContext: the state, the line, the variables in scope, what the bot said and logged since the last call."""
        said = self.port.said[self._said_read :]
        self._said_read = len(self.port.said)
        logs = self.port.logs[self._logs_read :]
        self._logs_read = len(self.port.logs)
        variables = self.engine.variables() if self.state == BREAK or self.waiting or self.state == STOPPED else {}
        return {
            "id": self.id,
            "dialog": self.dialog,
            "engine": self.engine_name,
            "state": self.state,
            "line": self.line,
            "function": self.function,
            "waiting_for_input": self.waiting,
            "outcome": self.outcome,
            "error": self.error,
            "breakpoints": sorted(self.breakpoints),
            "variables": json.loads(json.dumps(variables, default=str)),
            "messages": said,
            "logs": [{"level": level, "text": text} for level, text in logs],
        }
