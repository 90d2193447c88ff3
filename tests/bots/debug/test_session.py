"""Debug runs over both engines: breakpoints, stepping over, HEAR answers, stop, isolation.

The checks that make sense for any engine run over the interpreter (the reference) and
the compiled engine alike, with the same lines, variables and transcripts expected.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.debug.seam import LOOP_CHECK_SECONDS, Debuggable, InterpreterRun, Place, blocking_hook
from gbmedia.bots.debug.session import BREAK, RUNNING, STOPPED, DebugPort, DebugRun, DebugStateError
from gbmedia.bots.debug.wasm import WasmDebugRun, debug_module
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.limits import Limits
from gbmedia.bots.machine import Run
from gbmedia.bots.memory_tables import MemoryTables
from tests.rtc import wait_for

DIALOG = """total = 0
FOR EACH n IN [1, 2, 3]
    total = add(total, n)
NEXT
TALK "total is ${total}"
HEAR name
TALK "hello " + name
FUNCTION add(a, b)
    s = a + b
    RETURN s
END FUNCTION
"""


@pytest.fixture(params=["interp", "wasm"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine a test's debug runs use: each such test runs over both, expecting the same."""
    return request.param


_started: list[DebugRun] = []


@pytest.fixture(autouse=True)
async def _stop_debug_runs():
    """A test that leaves a run paused (most do) stops it, as the node does at shutdown."""
    yield
    while _started:
        await _started.pop().stop()


def debug_run(
    engine: str, source: str = DIALOG, breakpoints: tuple[int, ...] = (), limits: Limits | None = None
) -> DebugRun:
    compiled = load(source, "sums")
    port = MemoryPort()
    ctx = Context(port=port, tables=MemoryTables(), limits=limits or Limits())
    runner: Debuggable = (
        WasmDebugRun(debug_module(compiled), ctx) if engine == "wasm" else InterpreterRun(compiled, ctx)
    )
    run = DebugRun(uuid.uuid4(), "sums", source, runner, port, engine_name=engine)
    run.breakpoints.update(breakpoints)
    _started.append(run)
    return run


async def test_a_breakpoint_stops_at_its_line_with_the_variables_of_that_moment(engine: str):
    run = debug_run(engine, breakpoints=(3,))
    await run.start(stop_on_entry=False)
    context = run.context()
    assert (context["state"], context["line"], context["function"]) == (BREAK, 3, None)
    assert context["variables"] == {"TOTAL": 0, "N": 1}  # before line 3 ran
    await run.resume()
    context = run.context()
    assert (context["state"], context["line"], context["variables"]) == (BREAK, 3, {"TOTAL": 1, "N": 2, "S": 1})
    run.set_breakpoint(3, False)
    await run.resume()
    context = run.context()
    assert (context["state"], context["waiting_for_input"], context["line"]) == (RUNNING, True, 6)
    assert context["messages"] == ["total is 6"]
    assert run.context()["messages"] == []  # read once: "since the last call"


async def test_step_runs_one_statement_and_steps_over_a_function(engine: str):
    run = debug_run(engine)
    await run.start(stop_on_entry=True)
    assert (run.state, run.line) == (BREAK, 1)
    lines = []
    for _ in range(6):
        await run.step()
        lines.append(run.line)
    assert lines == [2, 3, 3, 3, 5, 6]  # FOR starts once; add() is stepped over, its lines never shown
    assert run.context()["variables"]["TOTAL"] == 6


async def test_a_breakpoint_inside_a_function_shows_its_parameters_and_step_stays_in_it(engine: str):
    run = debug_run(engine, breakpoints=(9,))
    await run.start(stop_on_entry=False)
    context = run.context()
    assert (context["line"], context["function"]) == (9, "ADD")
    assert context["variables"] == {"TOTAL": 0, "N": 1, "A": 0, "B": 1}  # the dialog's, and add's parameters
    await run.step()
    assert (run.line, run.function, run.context()["variables"]["S"]) == (10, "ADD", 1)
    await run.step()  # RETURN: back in the caller, at its next statement (the loop's body, for n = 2)
    assert (run.line, run.function, run.context()["variables"]["N"]) == (3, None, 2)


async def test_send_message_answers_the_hear_and_the_dialog_goes_on(engine: str):
    run = debug_run(engine)
    await run.start(stop_on_entry=False)
    assert run.waiting and run.state == RUNNING
    try:
        await run.step()
    except DebugStateError as exc:
        assert exc.code == "debug_run_waiting"
    else:
        raise AssertionError("step at a HEAR must be refused")
    await run.send_message("Ana")
    context = run.context()
    assert (context["state"], context["outcome"]) == (STOPPED, "done")
    assert context["messages"] == ["total is 6", "hello Ana"]
    assert context["variables"]["NAME"] == "Ana"
    for action in (run.step, run.resume, lambda: run.send_message("x")):
        try:
            await action()
        except DebugStateError as exc:
            assert exc.code == "debug_run_stopped"
        else:
            raise AssertionError("an ended run takes no more actions")


async def test_an_error_ends_the_run_at_its_line(engine: str):
    run = debug_run(engine, 'x = 1\nTALK "a"\ny = [1][5]\nTALK "never"')
    await run.start(stop_on_entry=False)
    context = run.context()
    assert (context["state"], context["outcome"], context["line"]) == (STOPPED, "failed", 3)
    assert context["error"]["line"] == 3 and "outside the list" in context["error"]["message"]
    inside = debug_run(engine, "x = 1\ny = f(2)\nTALK y\nFUNCTION f(a)\n    b = [1][a]\n    RETURN b\nEND FUNCTION")
    await inside.start(stop_on_entry=False)
    context = inside.context()
    assert (context["outcome"], context["line"], context["function"]) == ("failed", 5, "F")
    assert context["variables"] == {"X": 1, "A": 2}  # where it failed: the FUNCTION's parameters too


async def test_stop_ends_a_paused_run_and_a_busy_one(engine: str):
    paused = debug_run(engine, breakpoints=(1,))
    await paused.start(stop_on_entry=False)
    assert paused.state == BREAK
    await paused.stop()
    assert (paused.state, paused.outcome) == (STOPPED, "stopped")
    busy = debug_run(engine, "DO WHILE 1 = 1\n    x = 1\nLOOP", limits=Limits(max_statements=10**9, max_seconds=60))
    await busy.start(stop_on_entry=False, settle=0.05)
    assert busy.state == RUNNING and not busy.waiting  # still looping: the answer says so
    await busy.stop()
    assert busy.state == STOPPED
    if engine == "wasm":  # stop waited for the worker threads to leave their modules (paused and busy alike)
        assert paused.engine.run.outside.is_set() and busy.engine.run.outside.is_set()  # type: ignore[attr-defined]
    try:
        await busy.resume()
    except DebugStateError as exc:
        assert exc.code == "debug_run_stopped"


async def test_two_debug_runs_do_not_see_each_other(engine: str):
    first, second = debug_run(engine, breakpoints=(5,)), debug_run(engine, breakpoints=(3,))
    await asyncio.gather(first.start(False), second.start(False))
    assert (first.line, second.line) == (5, 3)
    assert first.context()["variables"]["TOTAL"] == 6 and second.context()["variables"]["TOTAL"] == 0
    await first.resume()
    assert first.context()["messages"] == ["total is 6"] and second.context()["messages"] == []
    await second.stop()
    await first.send_message("Bo")
    assert first.context()["messages"] == ["hello Bo"]


async def test_a_paused_run_does_not_spend_its_time_limit(engine: str):
    run = debug_run(engine, breakpoints=(2,), limits=Limits(max_seconds=0.2))
    await run.start(stop_on_entry=False)
    budget = run.engine.run.ctx.budget  # type: ignore[attr-defined]
    budget.deadline -= 10  # as if the operator had looked at the pause for a long time
    await run.resume()
    assert run.waiting  # the clock restarted when it went on


async def test_a_busy_run_under_the_debugger_still_meets_its_time_limit(engine: str):
    run = debug_run(engine, "DO WHILE 1 = 1\n    x = 1\nLOOP", limits=Limits(max_statements=10**9, max_seconds=0.2))
    await run.start(stop_on_entry=False, settle=30)
    context = run.context()
    assert (context["state"], context["outcome"]) == (STOPPED, "failed")
    assert "GBMEDIA_BOT_MAX_SECONDS" in context["error"]["message"]


async def test_a_runaway_loop_under_the_debugger_still_meets_its_statements_limit(engine: str):
    run = debug_run(engine, "n = 0\nDO\n    n = n + 1\nLOOP", limits=Limits(max_statements=300, max_seconds=60))
    await run.start(stop_on_entry=False, settle=30)
    context = run.context()
    assert (context["state"], context["outcome"]) == (STOPPED, "failed")
    assert context["error"]["line"] in (2, 3)  # in the loop (the engines count statements their own way)
    assert "GBMEDIA_BOT_MAX_STATEMENTS" in context["error"]["message"]
    assert 100 < context["variables"]["N"] < 300  # it ran, and stopped near the limit


async def test_without_a_debugger_the_interpreter_calls_no_hook():
    run = Run(load("x = 1\nTALK x"), Context())
    assert run.line_hook is None and (await run.start()).status == "done"


async def test_a_compiled_debug_run_with_its_hook_taken_off_runs_without_stopping():
    seen: list[Place] = []

    async def pause(place: Place) -> bool:
        seen.append(place)
        return False

    ctx = Context(port=MemoryPort())
    run = WasmDebugRun(debug_module(load("x = 1\nTALK x", "d")), ctx)
    run.set_pause_hook(pause)
    run.set_pause_hook(None)
    assert ctx.line_hook is None  # type: ignore[attr-defined]
    assert (await run.start()).status == "done" and seen == [] and run.variables() == {"X": 1}
    await run.close()  # nothing runs: nothing to wait for


async def test_an_engine_running_in_a_thread_pauses_through_a_blocking_hook():
    """What the compiled engine plugs into: its worker thread waits while the debugger holds the pause."""
    seen: list[Place] = []
    release = asyncio.Event()

    async def pause(place: Place) -> bool:
        seen.append(place)
        if place.line == 2:
            await release.wait()
        return place.line == 2

    line_hook = blocking_hook(pause, asyncio.get_running_loop())
    done: list[int] = []

    def engine_thread() -> None:
        for line in (1, 2, 3):
            line_hook("sums", line)
            done.append(line)

    worker = asyncio.create_task(asyncio.to_thread(engine_thread))
    await wait_for(lambda: [p.line for p in seen] == [1, 2], within=10)
    assert done == [1]  # the thread waits at line 2 while the pause holds
    release.set()
    await worker
    assert done == [1, 2, 3] and seen[-1] == Place(3, "sums", 1, None)


async def test_what_would_leave_the_conversation_is_shown_as_logs():
    source = 'LOG "checking"\nSEND MAIL "ana@example.com", "Hi", "Body"\nTRANSFER TO "sales"\nTALK "done"'
    port = DebugPort()
    run = DebugRun(uuid.uuid4(), "d", source, InterpreterRun(load(source, "d"), Context(port=port)), port)
    await run.start(stop_on_entry=False)
    context = run.context()
    assert context["messages"] == ["done"] and context["outcome"] == "done"
    assert [(entry["level"], entry["text"]) for entry in context["logs"]] == [
        ("info", "checking"),
        ("send", 'mail to ana@example.com: {"subject": "Hi", "body": "Body"}'),
        ("transfer", "to sales"),
    ]


STEPPED = """count = 0
DO WHILE count < 2
    count = count + 1
    IF count = 1 THEN
        TALK "one"
    ELSE
        TALK "more"
    END IF
LOOP
FOR i = 1 TO 2
    SELECT CASE i
        CASE 1
            word = twice("a")
        CASE ELSE
            CALL greet(i)
    END SELECT
NEXT
x = twice("b") & twice("c")
DO
    count = count - 1
LOOP UNTIL count = 0
TALK word & x
FUNCTION twice(t)
    RETURN t & t
END FUNCTION
FUNCTION greet(who)
    HEAR answer
    TALK "hi " + answer + " " + who
END FUNCTION
"""


async def walk(engine: str, into: int) -> list[tuple[object, ...]]:
    """Step the dialog from its first statement to its end: where each step stopped and what it saw.

    ``into`` is a breakpoint inside a FUNCTION: a step over its call stops there, and steps go on from it.
    """
    run = debug_run(engine, STEPPED, breakpoints=(into,))
    await run.start(stop_on_entry=True)
    seen: list[tuple[object, ...]] = []
    while run.state != STOPPED:
        context = run.context()
        seen.append((context["state"], context["line"], context["function"], context["waiting_for_input"]))
        seen.append(tuple(sorted(context["variables"].items())))
        if run.waiting:
            await run.send_message("Ana")
        else:
            await run.step()  # over a FUNCTION call, unless it stops at the breakpoint inside; out of one at its end
    seen.append((run.outcome, tuple(run.port.said)))
    return seen


async def test_both_engines_step_through_the_same_lines_with_the_same_variables_and_transcript():
    """Loops, branches, FUNCTIONs inside expressions and as statements, a HEAR in a FUNCTION: the same walk."""
    for into in (24, 28):  # a breakpoint in the FUNCTION called inside expressions, then in the one with the HEAR
        interp, wasm = await walk("interp", into), await walk("wasm", into)
        assert wasm == interp
        assert interp[-1] == ("done", ("one", "more", "hi Ana 2", "aabbcc"))
        assert ("break", into, "TWICE" if into == 24 else "GREET", False) in interp


def _paused_on_a_loop_of_its_own() -> tuple[asyncio.AbstractEventLoop, DebugRun]:
    loop = asyncio.new_event_loop()
    run = debug_run("wasm", breakpoints=(3,))
    _started.remove(run)  # its loop is the test's own
    loop.run_until_complete(run.start(stop_on_entry=False))
    assert run.state == BREAK and not run.engine.run.outside.is_set()  # type: ignore[attr-defined]
    return loop, run


def test_a_run_paused_when_its_event_loop_ends_lets_its_worker_thread_go():
    """No debugger will ever answer a pause whose loop is gone: the engine halts rather than hold its thread."""
    loop, cancelled = _paused_on_a_loop_of_its_own()
    tasks = asyncio.all_tasks(loop)  # the hook's task among them, as a loop shutting down cancels them
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
    assert cancelled.engine.run.outside.wait(10 * LOOP_CHECK_SECONDS)  # type: ignore[attr-defined]

    loop, closed = _paused_on_a_loop_of_its_own()
    loop.close()  # its tasks left pending, never to run again
    assert closed.engine.run.outside.wait(10 * LOOP_CHECK_SECONDS)  # type: ignore[attr-defined]
