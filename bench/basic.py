"""Statements per second of GB BASIC: a CPU-bound dialog in gbmedia's two engines, beside CPython and Node.

The dialog is a loop of arithmetic, a comparison, a branch and assignments, run to the
end by ``gbmedia.bots.machine.Run`` (the interpreter the bots use, with its sandbox's
statement counting on). The same program written in Python runs in the same process
right after, so the two figures come from the same machine at the same moment. The
rate counts the statements the interpreter executed (its budget's counter), and the
Python figure is that same count over the Python function's time: "how many of these
statements per second".

The compiled engine runs second: the same dialog compiled to WebAssembly
(``gbmedia.bots.wasm_compiler``) and run by ``gbmedia.bots.wasm_engine.WasmRun`` in
wasmtime, with fuel metering and epoch interruption on (its sandbox). Its clock covers
the run only; compiling the module is outside it, as Node's compilation is. Its rate is
the interpreter's statement count over its time.

The old platform's approach runs third, in the same run: the dialog translated to
JavaScript statement for statement (``bench/basic_js/loop.js``, wrapped in the async main
the old translator emitted) and run by Node in a ``node:vm`` sandbox, a fresh context a
run, as the old server ran each dialog (``bench/basic_js/run.js``). Its clock covers the
loop only, as the other two do; Node's start and the script's compilation are outside
it. Its rate is the same statement count over its time. Node (Debian's ``nodejs``) must be
on the PATH: without it the benchmark fails rather than print two of the three figures.

Prints a table and JSON. Asserts nothing about time.

    python -m bench.basic [--iterations 300000] [--repeat 3] [--json out.json]
    python -m bench.basic --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.limits import Limits
from gbmedia.bots.machine import Run
from gbmedia.bots.wasm_engine import WasmRun, wasm_of

NODE_RUNNER = Path(__file__).resolve().parent / "basic_js" / "run.js"

DIALOG = """
total = 0
FOR i = 1 TO n
  IF i MOD 3 = 0 THEN
    total = total + i * 2
  ELSE
    total = total - 1
  END IF
NEXT
"""


# A text-handling loop, the other side of the compiled engine: each operation on text is a call
# from WebAssembly into Python, so here the interpreter may be the faster one.
TEXT_DIALOG = """
names = ["ana", "bo", "cy"]
out = ""
FOR i = 1 TO n
  who = names[i MOD 3]
  IF who = "bo" THEN
    out = "x" & i & who
  END IF
NEXT
"""


async def text_once(n: int, engine: str) -> tuple[float, float, int, str]:
    """One run of the text loop in one engine: wall and CPU seconds, statements (the interpreter's), the text made."""
    compiled = load(f"n = {n}\n" + TEXT_DIALOG, "text")
    ctx = Context(limits=Limits(max_statements=10**10, max_seconds=3600))
    run: Run | WasmRun = Run(compiled, ctx) if engine == "interp" else WasmRun(wasm_of(compiled), ctx)
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = await run.start()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if outcome.status != "done":
        raise RuntimeError(f"the text dialog failed in {engine}: {outcome.error}")
    return wall, cpu, ctx.budget.statements, run.globals["OUT"]


def same_in_python(n: int) -> int:
    """The dialog above, statement for statement."""
    total = 0
    for i in range(1, n + 1):
        if i % 3 == 0:
            total = total + i * 2
        else:
            total = total - 1
    return total


async def basic_once(n: int) -> tuple[float, float, int, int]:
    """One run of the dialog: wall seconds, CPU seconds, statements executed, the total it computed."""
    compiled = load(f"n = {n}\n" + DIALOG, "bench")
    ctx = Context(limits=Limits(max_statements=10**10, max_seconds=3600))
    run = Run(compiled, ctx)
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = await run.start()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if outcome.status != "done":
        raise RuntimeError(f"the benchmark dialog failed: {outcome.error}")
    return wall, cpu, ctx.budget.statements, run.globals["TOTAL"]


async def compiled_once(n: int) -> tuple[float, float, int]:
    """One run of the dialog in the compiled engine: wall seconds, CPU seconds, the total it computed."""
    compiled = load(f"n = {n}\n" + DIALOG, "bench")
    dialog = wasm_of(compiled)  # compiled before the clock starts, like Node's script
    run = WasmRun(dialog, Context(limits=Limits(max_statements=10**10, max_seconds=3600)))
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = await run.start()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if outcome.status != "done":
        raise RuntimeError(f"the benchmark dialog failed compiled: {outcome.error}")
    return wall, cpu, run.globals["TOTAL"]


def python_once(n: int) -> tuple[float, int]:
    wall = time.perf_counter()
    total = same_in_python(n)
    return time.perf_counter() - wall, total


async def node_best(n: int, repeat: int) -> tuple[float, int, str]:
    """The translated dialog in Node: the fastest run's seconds, the total it computed, Node's version."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise RuntimeError("node is not installed (Debian package nodejs): the old platform's figure needs it")
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_RUNNER), str(n), str(repeat), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"node exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    result = json.loads(out)
    return float(result["seconds"]), int(result["total"]), str(result["node"])


async def measure(n: int, repeat: int) -> dict[str, object]:
    basic = [await basic_once(n) for _ in range(repeat)]
    compiled = [await compiled_once(n) for _ in range(repeat)]
    python = [python_once(n) for _ in range(repeat)]
    node_seconds, node_total, node_version = await node_best(n, repeat)
    text_n = max(1, n // 15)  # the text loop is slower per turn: fewer turns, the same order of time
    text_interp = min([await text_once(text_n, "interp") for _ in range(repeat)])
    text_compiled = min([await text_once(text_n, "wasm") for _ in range(repeat)])
    if text_interp[3] != text_compiled[3]:
        raise RuntimeError(f"the engines disagree on the text loop: {text_interp[3]!r}, {text_compiled[3]!r}")
    best_basic = min(basic, key=lambda r: r[0])
    best_python = min(python, key=lambda r: r[0])
    best_compiled = min(compiled, key=lambda r: r[0])
    statements = best_basic[2]
    if not best_basic[3] == best_compiled[2] == best_python[1] == node_total:
        raise RuntimeError(
            f"the programs disagree: BASIC {best_basic[3]}, compiled {best_compiled[2]}, Python {best_python[1]},"
            f" JavaScript {node_total}"
        )
    basic_rate = statements / best_basic[0]
    compiled_rate = statements / best_compiled[0]
    python_rate = statements / best_python[0]
    node_rate = statements / node_seconds
    return {
        "iterations": n,
        "repeat": repeat,
        "statements": statements,
        "result": best_python[1],
        "gbmedia_basic": {
            "seconds": round(best_basic[0], 4),
            "cpu_seconds": round(best_basic[1], 4),
            "statements_per_s": round(basic_rate),
        },
        "gbmedia_compiled": {
            "seconds": round(best_compiled[0], 4),
            "cpu_seconds": round(best_compiled[1], 4),
            "statements_per_s": round(compiled_rate),
        },
        "cpython": {"seconds": round(best_python[0], 4), "statements_per_s": round(python_rate)},
        "node_translation": {
            "seconds": round(node_seconds, 4),
            "statements_per_s": round(node_rate),
            "node": node_version,
        },
        "compiled_over_basic": round(compiled_rate / basic_rate, 1),
        "cpython_over_basic": round(python_rate / basic_rate, 1),
        "node_over_basic": round(node_rate / basic_rate, 1),
        "text_loop": {
            "iterations": text_n,
            "statements": text_interp[2],
            "interpreter_statements_per_s": round(text_interp[2] / text_interp[0]),
            "compiled_statements_per_s": round(text_interp[2] / text_compiled[0]),
            "compiled_over_interpreter": round(text_interp[0] / text_compiled[0], 2),
            "interpreter_cpu_seconds": round(text_interp[1], 4),
            "compiled_cpu_seconds": round(text_compiled[1], 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the JSON; ``--smoke`` runs a short loop once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300_000, help="loop iterations (default 300,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each program; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="quick check: 3,000 iterations once: does it run?")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.repeat = 3_000, 1
    result = asyncio.run(measure(args.iterations, args.repeat))
    rows = [
        ("gbmedia interpreter", result["gbmedia_basic"]),
        ("gbmedia compiled (wasm)", result["gbmedia_compiled"]),
        ("CPython (same program)", result["cpython"]),
        ("Node (JS translation)", result["node_translation"]),
    ]
    print(f"GB BASIC CPU-bound loop: {args.iterations:,} iterations, {result['statements']:,} statements")
    print(f"{'runtime':<24}{'seconds':>10}{'statements/s':>16}")
    for name, row in rows:
        print(f"{name:<24}{row['seconds']:>10.4f}{row['statements_per_s']:>16,}")  # type: ignore[index]
    print(
        f"CPU seconds: interpreter {result['gbmedia_basic']['cpu_seconds']}, "  # type: ignore[index]
        f"compiled {result['gbmedia_compiled']['cpu_seconds']}"  # type: ignore[index]
    )
    print(
        f"The compiled engine is {result['compiled_over_basic']}x the interpreter; "
        f"CPython is {result['cpython_over_basic']}x the interpreter; Node running the old platform's "
        f"translation ({result['node_translation']['node']}) is {result['node_over_basic']}x"  # type: ignore[index]
    )
    text = result["text_loop"]
    print(
        f"Text loop ({text['iterations']:,} iterations, every operation an import): interpreter "  # type: ignore[index]
        f"{text['interpreter_statements_per_s']:,} statements/s, compiled {text['compiled_statements_per_s']:,} "  # type: ignore[index]
        f"({text['compiled_over_interpreter']}x); CPU seconds {text['interpreter_cpu_seconds']} and "  # type: ignore[index]
        f"{text['compiled_cpu_seconds']}"  # type: ignore[index]
    )
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
