"""The compiled engine's runtime: wasmtime's limits, HEAR across a JSON round trip, the fallback, the CLI.

The transcripts themselves are compared with the interpreter's in test_wasm_differential.py;
this is what only the compiled engine has: fuel, epochs, the value table's collection,
the module's sections and line hook, the saved state's checks, ``gbmedia bot compile``.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from gbmedia.bots import wasm_engine
from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.engines import new_run, restore_run
from gbmedia.bots.errors import LimitExceeded
from gbmedia.bots.limits import Limits
from gbmedia.bots.machine import Run, StateError
from gbmedia.bots.terminal import TerminalOptions, compile_to_file, run_file
from gbmedia.bots.wasm_compiler import NotCompiled, _custom_section, compile_wasm, load_wasm, read_custom_sections
from gbmedia.bots.wasm_engine import WasmRun, wasm_of
from tests.bots.terminal import EXAMPLES, bot_run
from tests.helpers import run_apart


def compiled_run(source: str, limits: Limits | None = None, dialog: str = "d") -> tuple[WasmRun, Context]:
    ctx = Context(limits=limits or Limits())
    return WasmRun(wasm_of(load(source, dialog)), ctx), ctx


def said(ctx: Context) -> list[str]:
    return ctx.port.said  # type: ignore[attr-defined]


async def test_fuel_stops_a_runaway_loop_naming_dialog_line_and_limit():
    run, ctx = compiled_run('TALK "go"\nDO\n  x = x + 1\nLOOP\n', Limits(max_statements=5000), "spin")
    outcome = await run.start()
    assert outcome.status == "failed"
    assert isinstance(outcome.error, LimitExceeded)
    assert outcome.error.dialog == "spin" and outcome.error.line == 3
    assert "GBMEDIA_BOT_MAX_STATEMENTS" in str(outcome.error)
    assert said(ctx)[0] == "go" and said(ctx)[-1].startswith("Sorry")
    assert 5000 <= ctx.budget.statements <= 5000 + 5000 // 10  # the fuel spent, charged back as statements


async def test_the_fuel_spent_before_a_hear_is_still_spent_after_it():
    source = "FOR i = 1 TO 300\n  x = i\nNEXT\nHEAR a\nFOR i = 1 TO 300\n  x = i\nNEXT\nTALK x\n"
    limits = Limits(max_statements=1000)
    run, _ = compiled_run(source, limits)
    waiting = await run.start()
    assert waiting.status == "waiting" and 600 <= waiting.state["budget"]["statements"] < 1000
    state = json.loads(json.dumps(waiting.state))
    outcome = await WasmRun.restore(run.dialog, Context(limits=limits), state).resume("go")
    assert outcome.status == "failed" and "GBMEDIA_BOT_MAX_STATEMENTS" in str(outcome.error)


async def test_an_epoch_deadline_stops_a_loop_that_runs_too_long():
    run, _ = compiled_run("DO\n  x = 1\nLOOP\n", Limits(max_statements=10**9, max_seconds=0.2))
    outcome = await run.start()
    assert outcome.status == "failed" and "GBMEDIA_BOT_MAX_SECONDS" in str(outcome.error)
    assert outcome.error is not None and outcome.error.line in (1, 2)  # the loop's lines: DO, or its body


async def test_dead_values_are_collected_between_statements(monkeypatch: pytest.MonkeyPatch):
    source = 'keep = "kept"\nFOR i = 1 TO 20000\n  s = "x" & i\nNEXT\nTALK keep & " " & s\n'
    run, ctx = compiled_run(source)
    assert (await run.start()).status == "done"
    assert said(ctx) == ["kept x20000"]
    assert len(run.values) < 10_000  # 40,000 texts were made: the table holds the live ones and the last few

    monkeypatch.setattr(wasm_engine, "MAX_VALUES", 3)
    monkeypatch.setattr(wasm_engine, "GC_START", 1)
    run, _ = compiled_run('a = "1" & 1\nb = "2" & 2\nc = "3" & 3\nd = "4" & 4\nTALK a\n')
    outcome = await run.start()
    assert outcome.status == "failed" and "values alive" in str(outcome.error)


async def test_collections_between_statements_keep_every_live_value_of_frames_loops_and_variables(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(wasm_engine, "GC_START", 4)  # a collection every few values: every statement, nearly
    source = """
FUNCTION label(word, n)
  out = ""
  FOR EACH part IN [word, "-", n]
    out = out & part
  NEXT
  RETURN out
END FUNCTION
words = ["ana", "bo", "cy"]
all = NEW ARRAY
FOR EACH w IN words
  FOR i = 1 TO 30
    text = label(w, i)
  NEXT
  all[UBOUND(all)] = text & "!"
  HEAR again
  TALK again & ":" & text
NEXT
TALK all
"""
    compiled = load(source, "gc")
    transcripts = []
    for engine in ("wasm", "interp"):
        ctx = Context()
        run = await new_run(compiled, ctx, engine)
        outcome = await run.start()
        for answer in ["x", "y", "z"]:
            state = json.loads(json.dumps(outcome.state))
            outcome = await (await restore_run(compiled, ctx, state)).resume(answer)
        assert outcome.status == "done"
        transcripts.append(said(ctx))
    assert transcripts[0] == transcripts[1]
    assert transcripts[0][-1] == '["ana-30!", "bo-30!", "cy-30!"]'


async def test_a_hear_deep_in_function_calls_resumes_through_json():
    source = """
FUNCTION ask(q, times)
  FOR EACH n IN [1, 2]
    TALK q & " " & n & "/" & times
    HEAR a AS INTEGER
    total = total + a
  NEXT
  RETURN total
END FUNCTION
total = 0
x = ask("number", 2)
TALK "sum ${x}"
"""
    run, ctx = compiled_run(source)
    outcome = await run.start()
    for answer in ["3", "no", "4"]:
        assert outcome.status == "waiting"
        state = json.loads(json.dumps(outcome.state))
        assert [f["unit"] for f in state["frames"]] == ["", "ASK"]
        restored = await restore_run(load(source, "d"), ctx, state)
        assert isinstance(restored, WasmRun)
        outcome = await restored.resume(answer)
    assert outcome.status == "done"
    assert said(ctx) == ["number 1/2", "number 2/2", "Please type a whole number.", "sum 7"]


async def test_a_saved_state_is_checked_before_it_runs():
    source = "HEAR a\nTALK a\n"
    run, _ = compiled_run(source)
    state = (await run.start()).state
    assert state is not None
    dialog = run.dialog
    with pytest.raises(StateError, match="not waiting"):
        await WasmRun(dialog, Context()).resume("x")
    with pytest.raises(StateError, match="changed"):
        WasmRun.restore(dialog, Context(), {**state, "fingerprint": "other"})
    with pytest.raises(StateError, match="not a compiled run"):
        WasmRun.restore(dialog, Context(), {**state, "engine": "interp"})
    with pytest.raises(StateError, match="outside"):
        WasmRun.restore(dialog, Context(), {**state, "frames": [{"unit": "", "pc": 99, "vals": []}]})
    with pytest.raises(StateError, match="variable"):
        WasmRun.restore(dialog, Context(), {**state, "globals": {"NOPE": 1}})
    with pytest.raises(StateError, match="malformed"):
        WasmRun.restore(dialog, Context(), {**state, "frames": [{"unit": "missing"}]})
    with pytest.raises(StateError, match="no frames"):
        WasmRun.restore(dialog, Context(), {**state, "frames": []})
    done = WasmRun.restore(dialog, Context(), state)
    assert (await done.resume("hi")).status == "done"
    with pytest.raises(StateError, match="ended"):
        await done.start()


async def test_an_interpreter_state_resumes_in_the_interpreter():
    compiled = load("HEAR a\nTALK a\n", "d")
    ctx = Context()
    state = (await Run(compiled, ctx).start()).state
    assert state is not None and "engine" not in state
    run = await restore_run(compiled, ctx, state)
    assert isinstance(run, Run) and (await run.resume("hi")).status == "done"


async def test_a_dialog_the_compiler_refuses_runs_in_the_interpreter_and_the_log_says_so(caplog):
    source = "rows = [NEW OBJECT]\nx = SELECT * FROM rows\nTALK UBOUND(x)\n"
    compiled = load(source, "query")
    with pytest.raises(NotCompiled, match=r"SELECT \.\.\. FROM") as refused:
        compile_wasm(compiled)
    assert refused.value.line == 2
    with caplog.at_level(logging.INFO, logger="gbmedia.bots.engines"):
        run = await new_run(compiled, Context(), "wasm")
        again = await new_run(compiled, Context(), "wasm")  # refused once: not compiled again
    assert isinstance(run, Run) and isinstance(again, Run)
    assert "query runs in the interpreter" in caplog.text and "SELECT ... FROM" in caplog.text
    assert isinstance(await new_run(load("TALK 1\n", "d"), Context(), "interp"), Run)
    with pytest.raises(ValueError, match="unknown engine"):
        await new_run(compiled, Context(), "jit")
    state = {"v": 1, "engine": "wasm", "dialog": "query", "frames": []}
    with pytest.raises(StateError, match="no longer compiles"):
        await restore_run(compiled, Context(), state)


async def test_a_dialog_too_big_to_compile_or_one_the_compiler_fails_on_runs_in_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, caplog
):
    big = load("".join(f"HEAR a{i}\n" for i in range(300)), "big")
    with pytest.raises(NotCompiled, match="more than 256 blocks"):
        compile_wasm(big)
    assert isinstance(await new_run(big, Context()), Run)

    def broken(compiled: object, debug: bool = False) -> None:
        raise RuntimeError("a bug in the compiler")

    monkeypatch.setattr(wasm_engine, "compile_wasm", broken)
    with caplog.at_level(logging.INFO, logger="gbmedia.bots.engines"):
        run = await new_run(load("TALK 1\n", "buggy"), Context())
    assert isinstance(run, Run) and "buggy failed to compile" in caplog.text
    assert (await run.start()).status == "done"


async def test_the_module_carries_its_line_map_and_calls_the_line_hook_in_debug_mode():
    source = "x = 1\nIF x = 1 THEN\n  TALK x\nEND IF\n"
    compiled = load(source, "d")
    module = compile_wasm(compiled, debug=True)
    sections = read_custom_sections(module.wasm)
    assert json.loads(sections["gbmedia.lines"]) == [["d", 1], ["d", 2], ["d", 3]]
    assert json.loads(sections["gbmedia.meta"])["debug"] is True
    assert load_wasm(module.wasm).meta["lines"] == module.meta["lines"]
    ctx = Context()
    seen: list[tuple[str, int]] = []
    ctx.line_hook = lambda dialog, line: seen.append((dialog, line))  # type: ignore[attr-defined]
    assert (await WasmRun(module, ctx).start()).status == "done"
    assert seen == [("d", 1), ("d", 2), ("d", 3)]
    # the hook's run knows the statement's unit, call depth and frame: a FUNCTION's parameters by name
    source = "x = 1\nCALL f(x + 1)\nFUNCTION f(a)\n  TALK a\nEND FUNCTION\n"
    ctx = Context()
    run = WasmRun(compile_wasm(load(source, "d"), debug=True), ctx)
    places: list[tuple[int, int, dict]] = []
    ctx.line_hook = lambda dialog, line: places.append((line, run.at[1], run.locals()))  # type: ignore[attr-defined,index]
    assert (await run.start()).status == "done"
    assert places == [(1, 1, {}), (2, 1, {}), (4, 2, {"A": 2})]
    # a module of the format before the line import took its frame is refused, not run wrong
    meta = {k: v for k, v in module.meta.items() if k != "lines"}
    lines = _custom_section("gbmedia.lines", json.dumps(module.meta["lines"], separators=(",", ":")).encode())
    sections = _custom_section("gbmedia.meta", json.dumps(meta, separators=(",", ":")).encode()) + lines
    assert module.wasm.endswith(sections)
    stale = module.wasm[: -len(sections)] + _custom_section("gbmedia.meta", json.dumps({**meta, "format": 1}).encode())
    with pytest.raises(ValueError, match="another version"):
        load_wasm(stale + lines)
    with pytest.raises(ValueError, match="not a WebAssembly module"):
        load_wasm(b"nope")
    with pytest.raises(ValueError, match=r"no gbmedia\.meta"):
        load_wasm(bytes(compile_wasm(compiled).wasm[:8]))


def test_bot_compile_writes_a_module_that_bot_run_runs_and_refuses_what_it_cannot(tmp_path: Path):
    out = tmp_path / "expense.wasm"
    done = subprocess.run(
        [sys.executable, "-m", "gbmedia", "bot", "compile", str(EXAMPLES / "expense.bas"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "bytes" in done.stderr and out.read_bytes()[:4] == b"\x00asm"
    module = load_wasm(out.read_bytes())
    assert module.dialog == "expense" and module.meta["hears"] == ["EMAIL", "DATE", "MONEY", ""]
    # the compiled file runs without its source (the tables live in memory: one expense)
    run = bot_run(out, ["bo@example.com", "2026-12-01", "10", "Lunch"])
    assert run.code == 0, run.err
    assert run.said[-1] == "Saved: 10.00 on 2026-12-01. You have 1 expense(s) registered."

    query = tmp_path / "query.bas"
    query.write_text("rows = []\nx = SELECT * FROM rows\n", encoding="utf-8")
    err = io.StringIO()
    assert compile_to_file(query, None, False, err) == 2
    assert "line 2" in err.getvalue() and "SELECT ... FROM is not compiled yet" in err.getvalue()
    assert not query.with_suffix(".wasm").exists()
    assert compile_to_file(tmp_path / "none.bas", None, False, err) == 2 and "cannot read" in err.getvalue()
    (tmp_path / "bad.bas").write_text('TALK "open\n', encoding="utf-8")
    assert compile_to_file(tmp_path / "bad.bas", None, False, err) == 2
    (tmp_path / "latin.bas").write_bytes(b'TALK "\xe9"\n')
    assert compile_to_file(tmp_path / "latin.bas", None, False, err) == 2 and "UTF-8" in err.getvalue()
    code, _, said_err = terminal(query, [])
    assert code == 0 and "query runs in the interpreter" in said_err
    not_ours = tmp_path / "other.wasm"
    not_ours.write_bytes(b"\x00asm\x01\x00\x00\x00")
    code, _, said_err = terminal(not_ours, [])
    assert code == 2 and "not a compiled GB BASIC dialog" in said_err


def terminal(file: Path, answers: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO("".join(f"{a}\n" for a in answers))
    code = run_apart(run_file(TerminalOptions(file=file), stdin, out, err))
    return code, out.getvalue(), err.getvalue()
