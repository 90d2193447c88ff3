"""The compiled engine's runtime: a dialog's WebAssembly module run in wasmtime, suspending at HEAR.

One :class:`WasmRun` per run, with the interpreter's interface (``start``, ``resume``,
``snapshot``, ``restore``) and its outcomes, so the dialog engine, the scheduler and the
terminal choose an engine and otherwise do not care.

- Limits: the statements limit is wasmtime *fuel* (``FUEL_PER_STATEMENT`` units per
  statement the limit allows; the fuel spent is charged back to the run's budget, which
  persists across HEARs); the seconds limit is wasmtime *epoch interruption* (a ticker
  thread advances the engine's epoch); the module's linear memory is a fixed shadow
  stack (no growth) and the host table of values is collected between statements and
  capped. Value sizes, HTTP calls and bytes are checked by the same host code as the
  interpreter's.
- HEAR: the module unwinds to the host, each frame saving its block and its slots
  (``spill``); the run's state is those frames and the dialog's variables as JSON. A
  restored run re-enters the module with ``resume=1`` and each frame reloads itself
  (``frame``), so a node's restart resumes at the HEAR.
- The module runs in a worker thread: CPU work stays off the event loop, and a built-in
  that awaits (TALK, HTTP, tables) is run on the loop with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import wasmtime

from gbmedia.bots.compiler import Compiled, get_index, get_member
from gbmedia.bots.context import Context
from gbmedia.bots.errors import BasicError, Fault, PoliteStop
from gbmedia.bots.hear import options_of, prepare, reask_message, validate
from gbmedia.bots.lib_data import declare_table
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.limits import Budget, OverLimit
from gbmedia.bots.machine import Outcome, StateError, run_failed
from gbmedia.bots.values import arithmetic, compare, kind_of, to_number, to_text, truthy
from gbmedia.bots.wasm_compiler import (
    BINARY_OPS,
    COMPARE_OPS,
    IMPORTS,
    INT_LIMIT,
    MISFIT,
    STACK_BASE,
    WasmDialog,
    compile_wasm,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
FUEL_PER_STATEMENT = 50  # wasmtime fuel (about one unit per instruction) a statement of the limit buys
EPOCH_TICK = 0.05  # seconds between two epochs of the shared engine
GC_START = 4096  # host values before the first collection
MAX_VALUES = 1_000_000  # host values alive at once: past this the run fails (memory cap)

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
# The threads modules run in: their own pool, not the loop's default executor, because a run
# waiting for a built-in on the loop holds its thread, and that built-in may itself need a
# thread of the default executor (files): sharing one pool could let runs starve it.
_runs = ThreadPoolExecutor(max_workers=32, thread_name_prefix="gbmedia-wasm")


def engine() -> wasmtime.Engine:
    """The process's wasmtime engine (fuel and epochs on), with its epoch ticker thread."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            config.epoch_interruption = True
            _engine = wasmtime.Engine(config)
            eng = _engine

            def tick() -> None:
                while True:
                    time.sleep(EPOCH_TICK)
                    eng.increment_epoch()

            threading.Thread(target=tick, name="gbmedia-wasm-epoch", daemon=True).start()
        return _engine


@lru_cache(maxsize=256)
def _module(wasm: bytes) -> wasmtime.Module:
    return wasmtime.Module(engine(), wasm)


def wasm_of(compiled: Compiled) -> WasmDialog:
    """The dialog compiled to WebAssembly, once per compiled dialog (kept on it); NotCompiled when it cannot be.

    CPU work of tens of milliseconds the first time: the engine calls it in a thread (engines.new_run).
    """
    cached = getattr(compiled, "_wasm", None)
    if cached is None:
        cached = compile_wasm(compiled)
        _module(cached.wasm)  # Cranelift's compilation (tens of ms) here, in the caller's thread, not at the run
        compiled._wasm = cached  # type: ignore[attr-defined]
    return cached


class WasmRun:
    """One run of a compiled dialog in one conversation."""

    def __init__(self, dialog: WasmDialog, ctx: Context) -> None:
        self.dialog = dialog
        self.meta = dialog.meta
        self.ctx = ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self.values: list[Any] = [None, False, True, None, *self.meta["consts"]]
        self.base = len(self.values)
        self.gc_at = self.base + GC_START
        self.builtins = [REGISTRY.entries[name] for name in self.meta["builtins"]]
        self.args: list[Any] = []
        self.frames_out: list[dict[str, Any]] = []  # frames saved while unwinding (innermost first)
        self.frames_in: list[dict[str, Any]] = []  # frames to reload on resume (outermost first)
        self.pending_globals: dict[str, Any] = {}
        self.answer: Any = None
        self.waiting = False
        self.finished = False
        self.at: tuple[int, int, int] | None = None  # debug modules: the statement's unit, call depth, frame address
        self.failed = False  # ended by an error (its frames are where it failed)
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=65536 * 4, table_elements=0, instances=1, tables=0, memories=1)
        self.instance = wasmtime.Instance(self.store, _module(dialog.wasm), self._imports())
        self.exports = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = self.exports["stack"]  # type: ignore[assignment]
        # the memory never grows (its minimum is its maximum), so its address stays put
        self.result = ctypes.cast(self.memory.data_ptr(self.store), ctypes.POINTER(ctypes.c_int64))
        self.globals_ = [self.exports[f"g{i}"] for i in range(len(self.meta["names"]))]
        ctx.dialog = dialog.dialog

    # --- values ------------------------------------------------------------------------------

    def enc(self, value: Any) -> int:
        if type(value) is int and -INT_LIMIT <= value < INT_LIMIT:
            return value << 1
        if value is None:
            return 1
        if value is True:
            return 5
        if value is False:
            return 3
        self.values.append(value)
        if len(self.values) >= self.gc_at:
            self.exports["gcflag"].set_value(self.store, wasmtime.Val.i32(1))  # type: ignore[union-attr]
        return ((len(self.values) - 1) << 1) | 1

    def dec(self, x: int) -> Any:
        if not x & 1:
            return x >> 1
        return self.values[x >> 1]

    @property
    def globals(self) -> dict[str, Any]:
        """The dialog's variables that are set (as the interpreter's ``Run.globals``)."""
        out = {}
        for name, g in zip(self.meta["names"], self.globals_, strict=True):
            raw = g.value(self.store)  # type: ignore[union-attr]
            if raw != 7:
                out[name] = self.dec(raw)
        return out

    def locals(self) -> dict[str, Any]:
        """The FUNCTION's own variables (its parameters) where the run stands: none in the dialog's body.

        At a statement of a debug module they are in the frame the ``line`` import named (a
        failed run's too: the statement that failed); at a HEAR, in the innermost frame saved
        while unwinding; a run that ended well stands in the dialog's body.
        """
        units = self.meta["units"]
        if self.waiting:
            if len(self.frames_out) < 2:
                return {}
            frame = self.frames_out[0]
            return dict(zip(units[frame["unit"]]["params"], frame["vals"], strict=False))
        if self.at is None or (self.finished and not self.failed):
            return {}
        unit, _, fp = self.at
        params = units[unit]["params"]
        return dict(zip(params, self._read_slots(fp, len(params)), strict=True))

    # --- the imports -------------------------------------------------------------------------

    def _await(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _call(self, bid: int, args: list[Any]) -> int:
        builtin = self.builtins[bid >> 1]
        result = builtin.fn(self.ctx, *args)
        if builtin.is_async:
            before = self.ctx.budget.statements
            result = self._await(result)
            self._charge(self.ctx.budget.statements - before)
        if bid & 1:
            result = self.ctx.budget.check_value(result)
        return self.enc(result)

    def _charge(self, statements: int) -> None:
        """Statements a built-in ran (callVM's dialog, in the interpreter) come out of this run's fuel.

        They were counted in the budget; the fuel spent is added to it when the run leaves the
        module (``_enter``), so they move from the one to the other rather than counting twice.
        """
        if statements <= 0:
            return
        self.ctx.budget.statements -= statements
        left = self.store.get_fuel() - statements * FUEL_PER_STATEMENT
        if left < 0:
            raise OverLimit("statements", self.ctx.limits.max_statements)
        self.store.set_fuel(left)

    def _imports(self) -> list[wasmtime.Func]:
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        store, budget = self.store, lambda: self.ctx.budget

        def plus(a: Any, b: Any) -> Any:
            if type(a) is int and type(b) is int:
                return a + b
            return arithmetic("+", a, b)

        def h_bin(op: int, a: int, b: int) -> int:
            x, y = self.dec(a), self.dec(b)
            name = BINARY_OPS[op]
            if name == "+":
                return self.enc(plus(x, y))
            if name == "&":
                return self.enc(to_text(x) + to_text(y))
            return self.enc(arithmetic(name, x, y))

        def h_cmp(op: int, a: int, b: int) -> int:
            return int(compare(COMPARE_OPS[op], self.dec(a), self.dec(b)))

        def h_un(op: int, a: int) -> int:
            return self.enc(-to_number(self.dec(a)))

        def h_num(a: int, step: int) -> int:
            n = to_number(self.dec(a))
            if step and n == 0:
                raise Fault("FOR ... STEP 0 never ends")
            return self.enc(n)

        def h_truthy(a: int) -> int:
            return int(truthy(self.dec(a)))

        def h_check(a: int) -> None:
            budget().check_value(self.dec(a))

        def h_unset(n: int) -> int:
            builtin = REGISTRY.get(self.meta["names"][n])
            if builtin is not None and builtin.min_args == 0 and not builtin.is_async and not builtin.statement_only:
                return self.enc(builtin.fn(self.ctx))  # TODAY, NOW, UUID, RANDOM without parentheses
            return 1

        def h_join(a: int, b: int) -> int:
            return self.enc(to_text(self.dec(a)) + to_text(self.dec(b)))

        def h_text(a: int) -> int:
            return self.enc(to_text(self.dec(a)))

        def h_index(c: int, i: int) -> int:
            return self.enc(get_index(self.dec(c), self.dec(i)))

        def h_member(c: int, name: int) -> int:
            return self.enc(get_member(self.dec(c), self.meta["consts"][name]))

        def h_setindex(c: int, k: int, v: int) -> None:
            holder, key, value = self.dec(c), self.dec(k), self.dec(v)
            if isinstance(holder, list):
                i = int(to_number(key, "a list index"))
                if i == len(holder):
                    holder.append(value)
                elif -len(holder) <= i < len(holder):
                    holder[i] = value
                else:
                    raise Fault(f"index {i} is outside the list (it has {len(holder)} items, from 0)")
            elif isinstance(holder, dict):
                holder[to_text(key)] = value
            else:
                raise Fault(f"cannot set an item of a {kind_of(holder)}")

        def h_setmember(c: int, name_id: int, v: int) -> None:
            holder, name = self.dec(c), self.meta["consts"][name_id]
            if not isinstance(holder, dict):
                raise Fault(f"cannot set field {name} of a {kind_of(holder)} (make it with NEW OBJECT)")
            existing = next((k for k in holder if str(k).casefold() == name.casefold()), name)
            holder[existing] = self.dec(v)

        def h_newlist() -> int:
            return self.enc([])

        def h_push(lst: int, v: int) -> None:
            self.dec(lst).append(self.dec(v))

        def h_arg(v: int) -> None:
            self.args.append(self.dec(v))

        def h_call0(bid: int) -> int:
            return self._call(bid, [])

        def h_call1(bid: int, a: int) -> int:
            return self._call(bid, [self.dec(a)])

        def h_call2(bid: int, a: int, b: int) -> int:
            return self._call(bid, [self.dec(a), self.dec(b)])

        def h_call3(bid: int, a: int, b: int, c: int) -> int:
            return self._call(bid, [self.dec(a), self.dec(b), self.dec(c)])

        def h_calln(bid: int, n: int) -> int:
            args = self.args[-n:]
            del self.args[-n:]
            return self._call(bid, args)

        def h_fortest(c: int, e: int, s: int) -> int:
            current, end, step = to_number(self.dec(c)), self.dec(e), self.dec(s)
            return int((step >= 0 and current > end) or (step < 0 and current < end))

        def h_forstep(c: int, s: int) -> int:
            return self.enc(to_number(self.dec(c)) + self.dec(s))

        def h_each(v: int) -> int:
            items = self.dec(v)
            if items is None:
                items = []
            elif isinstance(items, dict):
                items = [items]  # FIND gives one row as an object: a loop over it runs once
            elif not isinstance(items, list):
                raise Fault(f"FOR EACH goes over a list, not a {kind_of(items)}")
            return self.enc(list(items))

        def h_len(v: int) -> int:
            return len(self.dec(v)) << 1

        def h_item(v: int, i: int) -> int:
            return self.enc(self.dec(v)[i >> 1])

        def h_table(t: int) -> None:
            name, fields = self.meta["tables"][t]
            self._await(declare_table(self.ctx, name, fields))

        def h_hear(hid: int, opts: int) -> int:
            kind = self.meta["hears"][hid]
            raw = self.dec(opts)
            options = options_of(raw if isinstance(raw, list) else [])
            answer = (
                self._await(prepare(kind, self.answer, self.ctx)) if kind == "QRCODE" else self.answer
            )  # the code it shows
            ok, value = validate(kind, answer, options, self.ctx.language)
            if not ok:
                self._await(self.ctx.port.talk(reask_message(kind, options, self.ctx.language)))
                return MISFIT
            return self.enc(budget().check_value(value))

        def h_fault(code: int) -> None:
            raise Fault(self.meta["faults"][code])

        def h_spill(unit: int, pc: int, fp: int, slots: int) -> None:
            self.frames_out.append({"unit": unit, "pc": pc, "vals": self._read_slots(fp, slots)})

        def h_frame(unit: int, fp: int, slots: int) -> int:
            if not self.frames_in or self.frames_in[0]["unit"] != unit:
                raise Fault("the saved run does not match the dialog's calls")
            frame = self.frames_in.pop(0)
            vals = frame["vals"]
            if len(vals) != slots:
                raise Fault("the saved run does not match the dialog's frames")
            data = b"".join((self.enc(v) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") for v in vals)
            if data:
                self.memory.write(store, data, fp)
            return int(frame["pc"])

        def h_gc() -> None:
            self._collect()

        def h_line(sid: int, unit: int, depth: int, fp: int) -> None:
            hook = getattr(self.ctx, "line_hook", None)
            if hook is not None:
                self.at = (unit, depth, fp)
                dialog, line = self.meta["lines"][sid]
                hook(dialog, line)

        here = locals()
        types = {"i32": i32, "i64": i64}
        funcs = []
        for name, params, result in IMPORTS:
            fn = here[f"h_{name}"]
            if result is not None:
                fn = self._to_memory(fn)  # its result goes to address 0 (see wasm_compiler.IMPORTS)
            funcs.append(wasmtime.Func(store, wasmtime.FuncType([types[t] for t in params], []), fn))
        return funcs

    def _to_memory(self, fn: Callable[..., int]) -> Callable[..., None]:
        def returns_through_memory(*args: int) -> None:
            self.result[0] = fn(*args)

        return returns_through_memory

    def _read_slots(self, fp: int, slots: int) -> list[Any]:
        raw = self.memory.read(self.store, fp, fp + slots * 8)
        return [self.dec(int.from_bytes(raw[i * 8 : i * 8 + 8], "little", signed=True)) for i in range(slots)]

    def _collect(self) -> None:
        """Drop host values no variable or loop refers to any more (between two statements: no temporaries)."""
        self.exports["gcflag"].set_value(self.store, wasmtime.Val.i32(0))  # type: ignore[union-attr]
        sp = self.exports["sp"].value(self.store)  # type: ignore[union-attr]
        raw = self.memory.read(self.store, STACK_BASE, sp) if sp > STACK_BASE else b""
        slots = [int.from_bytes(raw[i : i + 8], "little", signed=True) for i in range(0, len(raw), 8)]
        gvals = [g.value(self.store) for g in self.globals_]  # type: ignore[union-attr]
        keep = self.values[: self.base]
        moved: dict[int, int] = {}

        def remap(x: int) -> int:
            if not x & 1 or (x >> 1) < self.base:
                return x
            old = x >> 1
            if old not in moved:
                moved[old] = len(keep)
                keep.append(self.values[old])
            return (moved[old] << 1) | 1

        new_slots = [remap(x) for x in slots]
        new_globals = [remap(x) for x in gvals]
        self.values = keep
        if len(keep) > MAX_VALUES:
            raise Fault(f"the run keeps more than {MAX_VALUES} values alive")
        self.gc_at = max(self.base + GC_START, 2 * len(keep))
        if new_slots:
            data = b"".join((x & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") for x in new_slots)
            self.memory.write(self.store, data, STACK_BASE)
        for g, x in zip(self.globals_, new_globals, strict=True):
            g.set_value(self.store, wasmtime.Val.i64(x))  # type: ignore[union-attr]

    # --- the outside: start, resume, snapshot, restore ---------------------------------------------

    async def start(self) -> Outcome:
        return await self._go(resume=False)

    async def resume(self, answer: Any) -> Outcome:
        """Give the user's answer to the HEAR the run waits at; a misfit answer is re-asked."""
        if not self.waiting:
            raise StateError("this run is not waiting for an answer")
        self.ctx.budget.restart_clock()
        self.answer = answer
        self.waiting = False  # running again (a debugger reading locals() meanwhile reads the live frame)
        return await self._go(resume=True)

    def snapshot(self) -> dict[str, Any]:
        units = self.meta["units"]
        return {
            "v": STATE_VERSION,
            "engine": "wasm",
            "dialog": self.dialog.dialog,
            "fingerprint": self.dialog.fingerprint,
            "frames": [
                {"unit": units[f["unit"]]["name"], "pc": f["pc"], "vals": f["vals"]} for f in reversed(self.frames_out)
            ],
            "globals": self.globals,
            "settings": self.ctx.settings,
            "budget": self.ctx.budget.to_json(),
            "waiting": self.waiting,
        }

    @classmethod
    def restore(cls, dialog: WasmDialog, ctx: Context, state: dict[str, Any]) -> WasmRun:
        if state.get("v") != STATE_VERSION or state.get("engine") != "wasm" or state.get("dialog") != dialog.dialog:
            raise StateError("the saved run is not a compiled run of this dialog")
        if state.get("fingerprint") != dialog.fingerprint:
            raise StateError(f"dialog {dialog.dialog} changed since this run was saved")
        run = cls(dialog, ctx)
        unit_ids = {u["name"]: i for i, u in enumerate(run.meta["units"])}
        try:
            run.frames_in = [
                {"unit": unit_ids[f["unit"]], "pc": int(f["pc"]), "vals": list(f["vals"])} for f in state["frames"]
            ]
            for frame in run.frames_in:
                unit = run.meta["units"][frame["unit"]]
                if not 0 <= frame["pc"] < unit["blocks"] or len(frame["vals"]) != unit["slots"]:
                    raise StateError("the saved run points outside the dialog")
            names = {n: i for i, n in enumerate(run.meta["names"])}
            for name, value in dict(state["globals"]).items():
                if name not in names:
                    raise StateError(f"the saved run has a variable {name} the dialog does not")
                run.globals_[names[name]].set_value(run.store, wasmtime.Val.i64(run.enc(value)))  # type: ignore[union-attr]
            budget = state["budget"]
            ctx.budget = Budget(
                ctx.limits, int(budget["statements"]), int(budget["http_calls"]), int(budget["http_bytes"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed saved run: {exc}") from None
        if not run.frames_in or run.frames_in[0]["unit"] != 0:
            raise StateError("malformed saved run: no frames")
        ctx.settings.update(state.get("settings") or {})
        run.waiting = bool(state.get("waiting"))
        return run

    # --- running --------------------------------------------------------------------------------

    def _enter(self, resume: bool) -> int:
        """Run the module (in a worker thread) until it ends or unwinds at a HEAR: its ``run`` export's status."""
        budget = self.ctx.budget
        left = max(0, budget.limits.max_statements - budget.statements)
        fuel = left * FUEL_PER_STATEMENT
        self.store.set_fuel(fuel)
        self.store.set_epoch_deadline(max(1, math.ceil(budget.remaining_seconds() / EPOCH_TICK)))
        self.frames_out = []
        try:
            return int(self.exports["run"](self.store, 1 if resume else 0))  # type: ignore[operator]
        finally:
            spent = fuel - self.store.get_fuel()
            budget.statements += math.ceil(spent / FUEL_PER_STATEMENT)

    async def _go(self, resume: bool) -> Outcome:
        if self.finished:
            raise StateError("this run has ended")
        try:
            return await self._go_on(resume)
        finally:  # ended, failed or waiting at a HEAR: its browser pages do not outlive this call (as Run's)
            await self.ctx.release()

    async def _go_on(self, resume: bool) -> Outcome:
        self.loop = asyncio.get_running_loop()
        try:
            status = await self.loop.run_in_executor(_runs, self._enter, resume)
        except wasmtime.Trap as trap:
            if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                return await self._failed(OverLimit("statements", self.ctx.limits.max_statements))
            if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
                return await self._failed(OverLimit("seconds", self.ctx.limits.max_seconds))
            if trap.trap_code == wasmtime.TrapCode.STACK_OVERFLOW:
                return await self._failed(Fault("FUNCTION calls nested too deep"))
            log.error("compiled dialog %s trapped: %s", self.dialog.dialog, trap)
            return await self._failed(Fault(f"internal error (trap {trap.trap_code})"))
        except (Fault, BasicError, PoliteStop) as exc:
            return await self._failed(exc)
        except StateError:
            raise
        except Exception as exc:  # a built-in's bug must end this run, not reach the caller
            log.exception("bot built-in failed unexpectedly in %s", self.dialog.dialog)
            return await self._failed(Fault(f"internal error ({type(exc).__name__})"))
        if status == 1:
            self.waiting = True
            # the frames to reload if this same object resumes (a debug run stays in memory): innermost saved first
            self.frames_in = list(reversed(self.frames_out))
            return Outcome("waiting", self.snapshot())
        self.waiting = False
        self.finished = True
        if self.ctx.goto:
            return Outcome("goto", goto=self.ctx.goto)
        return Outcome("done")

    def line(self) -> tuple[str, int]:
        """The dialog and line of the statement running (or last run): from the module's line map."""
        sid = self.exports["stmt"].value(self.store)  # type: ignore[union-attr]
        lines = self.meta["lines"]
        if not lines:
            return self.dialog.dialog, 0
        dialog, line = lines[sid]
        return dialog or self.dialog.dialog, line

    async def _failed(self, exc: BaseException) -> Outcome:
        self.finished = self.failed = True
        self.waiting = False
        dialog, line = self.line()
        if isinstance(exc, PoliteStop):
            await self.ctx.port.talk(str(exc))
            return Outcome("stopped")
        return await run_failed(self.ctx, exc, dialog, line)
