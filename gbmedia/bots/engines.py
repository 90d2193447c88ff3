"""Choosing the engine a run uses: the compiled one (WebAssembly in wasmtime) or the interpreter.

Both give the same transcripts (tests/bots/test_wasm_differential.py checks it over every
example, every fixture and generated programs), so the compiled engine is the default. A
dialog with a construct the compiler does not handle yet runs in the interpreter, and the
log says so; a saved run resumes in the engine that saved it (its state says which).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gbmedia.bots.compiler import Compiled
from gbmedia.bots.context import Context
from gbmedia.bots.machine import Run
from gbmedia.bots.wasm_compiler import NotCompiled
from gbmedia.bots.wasm_engine import WasmRun, wasm_of

log = logging.getLogger(__name__)

ENGINES = ("wasm", "interp")
DEFAULT_ENGINE = "wasm"

AnyRun = Run | WasmRun


async def _compiled_wasm(compiled: Compiled) -> Any:
    """The dialog's module (compiling it in a thread the first time: milliseconds of CPU), or None if refused."""
    if getattr(compiled, "_wasm", None) is None and getattr(compiled, "_not_compiled", None) is None:
        try:
            await asyncio.to_thread(wasm_of, compiled)
        except NotCompiled as exc:
            compiled._not_compiled = exc  # type: ignore[attr-defined]
        except Exception as exc:  # a compiler bug must not stop the dialog: the interpreter runs it
            log.exception("dialog %s failed to compile to WebAssembly", compiled.dialog)
            compiled._not_compiled = exc  # type: ignore[attr-defined]
    refused = getattr(compiled, "_not_compiled", None)
    if refused is not None:
        log.info("dialog %s runs in the interpreter: %s", compiled.dialog, refused, extra={"dialog": compiled.dialog})
        return None
    return compiled._wasm  # type: ignore[attr-defined]


async def new_run(compiled: Compiled, ctx: Context, engine: str = DEFAULT_ENGINE) -> AnyRun:
    """A fresh run of ``compiled`` in ``engine`` ("wasm" falls back to "interp" for a dialog it cannot compile)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    if engine == "wasm":
        dialog = await _compiled_wasm(compiled)
        if dialog is not None:
            return WasmRun(dialog, ctx)
    return Run(compiled, ctx)


async def restore_run(compiled: Compiled, ctx: Context, state: dict[str, Any]) -> AnyRun:
    """The saved run, in the engine that saved it (StateError when the state does not fit the dialog)."""
    if state.get("engine") == "wasm":
        dialog = await _compiled_wasm(compiled)
        if dialog is None:
            from gbmedia.bots.machine import StateError

            raise StateError(f"dialog {compiled.dialog} no longer compiles to WebAssembly")
        return WasmRun.restore(dialog, ctx, state)
    return Run.restore(compiled, ctx, state)
