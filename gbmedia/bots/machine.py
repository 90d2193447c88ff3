"""The GB BASIC interpreter: runs a compiled dialog, suspends at HEAR, resumes from JSON.

A run is a stack of frames (the dialog's body, then each FUNCTION being called), each
a program counter into its unit's instructions, its variables and its loops' hidden
slots. At a HEAR the run stops and :meth:`Run.snapshot` gives all of that as JSON; the
dialog engine stores it (PostgreSQL) and, when the user answers, maybe on another
node, :meth:`Run.restore` rebuilds the run from the same compiled dialog and
:meth:`Run.resume` checks the answer (re-asking when it does not fit) and goes on.

Whatever fails ends the run with an error for the operator (dialog, line, message or
limit) and a polite sentence for the user; nothing a dialog does reaches the caller as
an unexpected exception.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gbmedia.bots.compiler import (
    Compiled,
    IAssign,
    ICall,
    IEachNext,
    IEachStart,
    IEnd,
    IForStart,
    IForStep,
    IForTest,
    IHear,
    IJump,
    IJumpIf,
    IKeyword,
    Ins,
    IReturn,
    ITable,
)
from gbmedia.bots.context import Context
from gbmedia.bots.errors import BasicError, BasicRuntimeError, Fault, LimitExceeded, PoliteStop
from gbmedia.bots.hear import options_of, prepare, reask_message, validate
from gbmedia.bots.lib_data import declare_table
from gbmedia.bots.lib_system import use_interpreter
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.limits import Budget, OverLimit
from gbmedia.bots.login import NOT_YET, PROMPT
from gbmedia.bots.login import message as login_message
from gbmedia.bots.values import kind_of, to_number, truthy

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_FRAMES = 200  # FUNCTION calls as statements: frames of the run's own stack
MAX_INLINE_DEPTH = 50  # FUNCTION calls inside expressions: these use Python's stack
SORRY = {
    "en": "Sorry, something went wrong on my side and I had to stop. Please try again later.",
    "pt": "Desculpe, algo deu errado do meu lado e precisei parar. Por favor, tente mais tarde.",
    "es": "Lo siento, algo salió mal de mi lado y tuve que parar. Por favor, inténtelo más tarde.",
}


@dataclass
class Frame:
    unit: str
    pc: int = 0
    vars: dict[str, Any] = field(default_factory=dict)
    hidden: dict[str, Any] = field(default_factory=dict)
    inline: bool = False  # called from inside an expression: returns to Python, cannot HEAR

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "pc": self.pc, "vars": self.vars, "hidden": self.hidden}


@dataclass
class Outcome:
    """How a run stopped: ``done``, ``waiting`` (at a HEAR: ``state`` to store), ``goto``, ``stopped`` or ``failed``."""

    status: str
    state: dict[str, Any] | None = None
    error: BasicError | None = None
    goto: str | None = None


# Called before each statement's first instruction when set (the debugger): it may pause the run by awaiting.
LineHook = Callable[["Run", Ins], Awaitable[None]]


class StateError(ValueError):
    """A saved state that does not belong to this dialog (changed since) or is malformed."""


async def run_failed(ctx: Context, exc: BaseException, dialog: str, line: int) -> Outcome:
    """How a run of either engine ends on an error: the operator's log line, a polite word to the user."""
    if isinstance(exc, OverLimit):
        error: BasicError = LimitExceeded(exc.limit, exc.allowed, line, dialog)
    elif isinstance(exc, BasicError):
        error = exc
        error.dialog = error.dialog or dialog
    else:
        error = BasicRuntimeError(str(exc), line, None, dialog)
    log.warning("bot run ended: %s", error, extra={"dialog": error.dialog, "line": error.line})
    await ctx.port.log("error", str(error))
    await ctx.port.talk(SORRY.get(ctx.language, SORRY["en"]))
    return Outcome("failed", error=error)


class Run:
    """One run of a dialog in one conversation."""

    def __init__(self, compiled: Compiled, ctx: Context) -> None:
        self.compiled = compiled
        self.ctx = ctx
        self.units = {name: unit.code for name, unit in compiled.units.items()}
        self.frames: list[Frame] = [Frame("")]
        self.frame = self.frames[0]
        self.globals = self.frame.vars
        self.returned: Any = None
        self.rows: list[dict[str, Any]] = []  # SELECT ... WHERE: the row being tested
        self.waiting = False
        self.finished = False
        self.inline_depth = 0
        self.line_hook: LineHook | None = None
        self.starts = {name: unit.starts for name, unit in compiled.units.items()}
        ctx.dialog = compiled.dialog

    # --- the outside: start, resume, snapshot -------------------------------------------

    async def start(self) -> Outcome:
        return await self._go()

    async def resume(self, answer: Any) -> Outcome:
        """Give the user's answer to the HEAR the run waits at; a misfit answer is re-asked."""
        if not self.waiting:
            raise StateError("this run is not waiting for an answer")
        ins = self.units[self.frame.unit][self.frame.pc]
        assert isinstance(ins, IHear)
        self.ctx.budget.restart_clock()
        try:
            if ins.kind == "LOGIN":  # the answer is who signed in with the code, not what was written
                who = await self._login_port().login_result()
                if who is None:
                    await self._login_prompt(NOT_YET)
                    return Outcome("waiting", self.snapshot())
                await self._set(ins.setter, who)
                self.waiting = False
                self.frame.pc += 1
                return await self._go()
            options = options_of([await self._value(o) for o in ins.options])
            ok, value = validate(ins.kind, await prepare(ins.kind, answer, self.ctx), options, self.ctx.language)
            if not ok:
                await self.ctx.port.talk(reask_message(ins.kind, options, self.ctx.language))
                return Outcome("waiting", self.snapshot())
            await self._set(ins.setter, self.ctx.budget.check_value(value))
        except (Fault, BasicError, PoliteStop) as exc:
            return await self._failed(exc, ins)
        self.waiting = False
        self.frame.pc += 1
        return await self._go()

    def _login_port(self) -> Any:
        port = self.ctx.port
        if not callable(getattr(port, "login_start", None)):
            raise Fault("HEAR AS LOGIN needs a conversation with a person (a chat), not this one")
        return port

    async def _login_prompt(self, table: dict[str, str]) -> None:
        """Give the user a new one-time sign-in code (HEAR AS LOGIN)."""
        code = await self._login_port().login_start()
        await self.ctx.port.talk(login_message(table, self.ctx.language, code))

    def snapshot(self) -> dict[str, Any]:
        """The run as JSON: enough to :meth:`restore` it in another process."""
        return {
            "v": STATE_VERSION,
            "dialog": self.compiled.dialog,
            "fingerprint": self.compiled.fingerprint,
            "frames": [f.to_json() for f in self.frames],
            "settings": self.ctx.settings,
            "budget": self.ctx.budget.to_json(),
            "waiting": self.waiting,
        }

    @classmethod
    def restore(cls, compiled: Compiled, ctx: Context, state: dict[str, Any]) -> Run:
        if state.get("v") != STATE_VERSION or state.get("dialog") != compiled.dialog:
            raise StateError("the saved run is not a run of this dialog")
        if state.get("fingerprint") != compiled.fingerprint:
            raise StateError(f"dialog {compiled.dialog} changed since this run was saved")
        run = cls(compiled, ctx)
        try:
            run.frames = [Frame(f["unit"], int(f["pc"]), dict(f["vars"]), dict(f["hidden"])) for f in state["frames"]]
            for frame in run.frames:
                if frame.unit not in run.units or not 0 <= frame.pc <= len(run.units[frame.unit]):
                    raise StateError("the saved run points outside the dialog")
            budget = state["budget"]
            ctx.budget = Budget(
                ctx.limits, int(budget["statements"]), int(budget["http_calls"]), int(budget["http_bytes"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed saved run: {exc}") from None
        if not run.frames:
            raise StateError("malformed saved run: no frames")
        ctx.settings.update(state.get("settings") or {})
        run.frame = run.frames[-1]
        run.globals = run.frames[0].vars
        run.waiting = bool(state.get("waiting"))
        if run.waiting and not isinstance(run.units[run.frame.unit][run.frame.pc], IHear):
            raise StateError("the saved run is not at a HEAR")
        return run

    # --- what instructions and closures call -----------------------------------------------

    def lookup(self, name: str) -> Any:
        for row in reversed(self.rows):
            for key, value in row.items():
                if str(key).upper() == name:
                    return value
        vars_ = self.frame.vars
        if name in vars_:
            return vars_[name]
        if name in self.globals:
            return self.globals[name]
        builtin = REGISTRY.get(name)
        if builtin is not None and builtin.min_args == 0 and not builtin.is_async and not builtin.statement_only:
            return builtin.fn(self.ctx)  # TODAY, NOW, UUID, RANDOM without parentheses
        return None

    def assign(self, name: str, value: Any) -> None:
        self.check(value)
        vars_ = self.frame.vars  # a FUNCTION's own variables are its parameters; the rest are the dialog's
        if name in vars_:
            vars_[name] = value
        else:
            self.globals[name] = value

    def check(self, value: Any) -> Any:
        return self.ctx.budget.check_value(value)

    @contextmanager
    def row_scope(self, row: Any) -> Iterator[None]:
        self.rows.append(row if isinstance(row, dict) else {})
        try:
            yield
        finally:
            self.rows.pop()

    async def call_inline(self, name: str, args: list[Any]) -> Any:
        """A FUNCTION called inside an expression: run it to its RETURN here (it cannot HEAR)."""
        if self.inline_depth >= MAX_INLINE_DEPTH:
            raise Fault(f"FUNCTION calls inside expressions nested more than {MAX_INLINE_DEPTH} deep")
        self._push(name, args, inline=True)
        self.inline_depth += 1
        try:
            await self._loop(len(self.frames))
        finally:
            self.inline_depth -= 1
        value, self.returned = self.returned, None
        return value

    async def run_within(self) -> bool:
        """Run the dialog's body inside another run (callVM): no outcome, nothing released; True if at a HEAR."""
        await self._loop(1)
        return self.waiting

    # --- the loop -----------------------------------------------------------------------

    async def _go(self) -> Outcome:
        if self.finished:
            raise StateError("this run has ended")
        try:
            return await self._go_on()
        finally:  # ended, failed or waiting at a HEAR: its browser pages do not outlive this call
            await self.ctx.release()

    async def _go_on(self) -> Outcome:
        try:
            await self._loop(1)
        except (Fault, BasicError, PoliteStop) as exc:
            return await self._failed(exc, self._current())
        except RecursionError:
            return await self._failed(Fault("FUNCTION calls nested too deep"), self._current())
        except Exception as exc:  # a built-in's bug must end this run, not reach the caller (a chat, an HTTP request)
            log.exception("bot built-in failed unexpectedly in %s", self.compiled.dialog)
            return await self._failed(Fault(f"internal error ({type(exc).__name__})"), self._current())
        if self.waiting:
            return Outcome("waiting", self.snapshot())
        self.finished = True
        if self.ctx.goto:
            return Outcome("goto", goto=self.ctx.goto)
        return Outcome("done")

    def _current(self) -> Ins | None:
        code = self.units[self.frame.unit]
        return code[self.frame.pc] if self.frame.pc < len(code) else None

    async def _failed(self, exc: BaseException, ins: Ins | None) -> Outcome:
        self.finished = True
        line = ins.line if ins is not None else 0
        if isinstance(exc, PoliteStop):
            await self.ctx.port.talk(str(exc))
            return Outcome("stopped")
        dialog = (ins.dialog if ins is not None else "") or self.compiled.dialog
        return await run_failed(self.ctx, exc, dialog, line)

    def _push(self, name: str, args: list[Any], inline: bool = False) -> None:
        unit = self.compiled.units[name]
        if len(self.frames) >= MAX_FRAMES:
            raise Fault(f"FUNCTION calls nested more than {MAX_FRAMES} deep")
        frame = Frame(name, 0, dict(zip(unit.params, args, strict=True)), {}, inline)
        self.frames.append(frame)
        self.frame = frame

    def _pop(self) -> Frame:
        done = self.frames.pop()
        self.frame = self.frames[-1]
        return done

    async def _set(self, setter: Any, value: Any) -> None:
        fn, is_async = setter
        if is_async:
            await fn(self, value)
        else:
            fn(self, value)

    async def _value(self, ev: Any) -> Any:
        fn, is_async = ev
        return (await fn(self)) if is_async else fn(self)

    async def _loop(self, depth: int) -> None:
        """Run instructions until the frame stack drops below ``depth``, a HEAR, or the end."""
        budget = self.ctx.budget
        max_statements = budget.limits.max_statements
        units = self.units
        hook, starts = self.line_hook, self.starts
        while True:
            frame = self.frame
            code = units[frame.unit]
            if frame.pc >= len(code):  # falling off the end: the dialog ends, a FUNCTION returns empty
                if len(self.frames) == 1:
                    return
                await self._return(None, depth)
                if len(self.frames) < depth:
                    return
                continue
            ins = code[frame.pc]
            if hook is not None and frame.pc in starts[frame.unit]:
                await hook(self, ins)  # a debugger's breakpoint or step: the run may wait here
            budget.statements += 1
            if budget.statements > max_statements:
                raise OverLimit("statements", max_statements)
            if not budget.statements & 1023:
                budget.check_time()
            kind = type(ins)
            if kind is IAssign:
                fn, is_async = ins.value  # type: ignore[attr-defined]
                value = (await fn(self)) if is_async else fn(self)
                sfn, s_async = ins.setter  # type: ignore[attr-defined]
                if s_async:
                    await sfn(self, value)
                else:
                    sfn(self, value)
                frame.pc += 1
            elif kind is IJumpIf:
                fn, is_async = ins.cond  # type: ignore[attr-defined]
                value = (await fn(self)) if is_async else fn(self)
                if truthy(value) == ins.when:  # type: ignore[attr-defined]
                    frame.pc = ins.to  # type: ignore[attr-defined]
                else:
                    frame.pc += 1
            elif kind is IJump:
                frame.pc = ins.to  # type: ignore[attr-defined]
            elif kind is IForTest:
                end, step = frame.hidden[ins.slot]  # type: ignore[attr-defined]
                current = to_number(self.lookup(ins.var))  # type: ignore[attr-defined]
                if (step >= 0 and current > end) or (step < 0 and current < end):
                    frame.pc = ins.to  # type: ignore[attr-defined]
                else:
                    frame.pc += 1
            elif kind is IForStep:
                end, step = frame.hidden[ins.slot]  # type: ignore[attr-defined]
                self.assign(ins.var, to_number(self.lookup(ins.var)) + step)  # type: ignore[attr-defined]
                frame.pc = ins.to  # type: ignore[attr-defined]
            elif kind is IKeyword:
                await self._keyword(ins)  # type: ignore[arg-type]
                if self.ctx.goto:
                    return
                frame.pc += 1
            elif kind is IForStart:
                start = to_number(await self._value(ins.start))  # type: ignore[attr-defined]
                end = to_number(await self._value(ins.end))  # type: ignore[attr-defined]
                step = 1 if ins.step is None else to_number(await self._value(ins.step))  # type: ignore[attr-defined]
                if step == 0:
                    raise Fault("FOR ... STEP 0 never ends")
                frame.hidden[ins.slot] = [end, step]  # type: ignore[attr-defined]
                self.assign(ins.var, start)  # type: ignore[attr-defined]
                frame.pc += 1
            elif kind is IEachStart:
                items = await self._value(ins.items)  # type: ignore[attr-defined]
                if items is None:
                    items = []
                elif isinstance(items, dict):
                    items = [items]  # FIND gives one row as an object: a loop over it runs once
                elif not isinstance(items, list):
                    raise Fault(f"FOR EACH goes over a list, not a {kind_of(items)}")
                frame.hidden[ins.slot] = [list(items), 0]  # type: ignore[attr-defined]
                frame.pc += 1
            elif kind is IEachNext:
                slot = frame.hidden[ins.slot]  # type: ignore[attr-defined]
                if slot[1] >= len(slot[0]):
                    del frame.hidden[ins.slot]  # type: ignore[attr-defined]
                    frame.pc = ins.to  # type: ignore[attr-defined]
                else:
                    self.assign(ins.var, slot[0][slot[1]])  # type: ignore[attr-defined]
                    slot[1] += 1
                    frame.pc += 1
            elif kind is IHear:
                if any(f.inline for f in self.frames):
                    raise Fault("HEAR cannot run in a FUNCTION called inside an expression; use CALL f or x = f(...)")
                budget.statements -= 1  # counted again when it resumes
                if ins.kind == "LOGIN":  # type: ignore[attr-defined]
                    await self._login_prompt(PROMPT)
                self.waiting = True
                return
            elif kind is ICall:
                args = [await self._value(a) for a in ins.args]  # type: ignore[attr-defined]
                self._push(ins.name, args)  # type: ignore[attr-defined]
            elif kind is IReturn:
                value = None if ins.value is None else await self._value(ins.value)  # type: ignore[attr-defined]
                await self._return(value, depth)
                if len(self.frames) < depth:
                    return
            elif kind is IEnd:
                if depth > 1:
                    raise Fault("END cannot run in a FUNCTION called inside an expression")
                del self.frames[1:]
                self.frame = self.frames[0]
                self.frame.pc = len(units[""])
                return
            elif kind is ITable:
                await declare_table(self.ctx, ins.name, ins.fields)  # type: ignore[attr-defined]
                frame.pc += 1
            else:  # pragma: no cover - the compiler makes only the instructions above
                raise Fault(f"unknown instruction {kind.__name__}")

    async def _keyword(self, ins: IKeyword) -> None:
        builtin = REGISTRY.get(ins.name)  # a statement's name may be an alias (SEND MAIL: sendMail, now sendEmail)
        assert builtin is not None, ins.name
        args = [await self._value(a) for a in ins.args]
        result = builtin.fn(self.ctx, *args)
        if builtin.is_async:
            result = await result
        if ins.setter is not None:
            await self._set(ins.setter, self.check(result))

    async def _return(self, value: Any, depth: int) -> None:
        done = self._pop()
        if done.inline:
            self.returned = value
            return
        caller = self.frame
        call = self.units[caller.unit][caller.pc]
        assert isinstance(call, ICall)
        if call.setter is not None:
            await self._set(call.setter, value)
        caller.pc += 1


async def converse(compiled: Compiled, ctx: Context, answers: list[Any]) -> Outcome:
    """Run a dialog to its end, giving it ``answers`` at its HEARs in order (authors' terminal runs, tests, docs).

    The state is saved and restored through JSON text at every HEAR, as the dialog engine
    does between two messages, so what works here works across a restart.
    """
    import json

    run = Run(compiled, ctx)
    outcome = await run.start()
    pending = list(answers)
    while outcome.status == "waiting" and pending:
        state = json.loads(json.dumps(outcome.state))
        run = Run.restore(compiled, ctx, state)
        outcome = await run.resume(pending.pop(0))
    return outcome


use_interpreter(Run)  # callVM (lib_system) runs other dialogs with this
