"""The interpreter: control flow, FUNCTIONs, HEAR suspension and resumption through JSON, errors."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import Run, StateError
from tests.bots.helpers import said, talk_with

ROOT = Path(__file__).resolve().parents[2]


async def test_assignment_arithmetic_and_text():
    assert await said('x = 7\ny = x \\ 2\nTALK x * 2 + 1, y, x MOD 4, 2 ^ 10, 7 / 2, "a" & 1 + 2') == [
        "15 3 3 1024 3.5 a3"
    ]
    assert await said('n = "5"\nTALK n + 1\nTALK "n=" + n\nTALK -n') == ["6", "n=5", "-5"]


async def test_if_elseif_else_and_one_line_if():
    source = (
        "FOR EACH x IN [1, 2, 3]\n"
        " IF x = 1 THEN\n"
        '  TALK "one"\n'
        " ELSEIF x = 2 THEN\n"
        '  TALK "two"\n'
        " ELSE\n"
        '  TALK "many"\n'
        " END IF\n"
        "NEXT\n"
        'IF 1 < 2 THEN TALK "yes" ELSE TALK "no"'
    )
    assert await said(source) == ["one", "two", "many", "yes"]


async def test_comparisons_ignore_case_and_accents_and_logic_short_circuits():
    assert await said('IF "São" = "sao" AND NOT ("a" <> "A") THEN TALK "same"') == ["same"]
    assert await said('IF TRUE OR 1 / 0 THEN TALK "short"') == ["short"]
    assert await said('IF 10 > "9" AND "b" > "A" AND 2 >= 2 AND 1 <= 1 THEN TALK "ok"') == ["ok"]


async def test_select_case():
    source = (
        'FOR EACH c IN ["red", "Blue", "x"]\n'
        " SELECT CASE c\n"
        '  CASE "red", "green"\n'
        '   TALK "warm"\n'
        '  CASE "blue"\n'
        '   TALK "cold"\n'
        "  CASE ELSE\n"
        '   TALK "?"\n'
        " END SELECT\n"
        "NEXT"
    )
    assert await said(source) == ["warm", "cold", "?"]


async def test_for_loops_with_steps_and_exits():
    assert await said("FOR i = 10 TO 1 STEP -3\n TALK i\nNEXT") == ["10", "7", "4", "1"]
    assert await said('FOR i = 1 TO 0\n TALK i\nNEXT\nTALK "after"') == ["after"]
    assert await said("FOR i = 1 TO 10\n IF i = 3 THEN EXIT FOR\n TALK i\nNEXT") == ["1", "2"]
    assert await said("FOR EACH p IN [[1, 2], [3]]\n FOR EACH q IN p\n  TALK q\n NEXT\nNEXT") == ["1", "2", "3"]


async def test_do_loops_and_while():
    assert await said("i = 0\nDO WHILE i < 3\n i = i + 1\nLOOP\nTALK i") == ["3"]
    assert await said("i = 0\nDO UNTIL i = 2\n i = i + 1\nLOOP\nTALK i") == ["2"]
    assert await said("i = 5\nDO\n i = i + 1\nLOOP WHILE i < 3\nTALK i") == ["6"]
    assert await said("i = 0\nDO\n i = i + 1\n IF i = 4 THEN EXIT DO\nLOOP\nTALK i") == ["4"]
    assert await said("i = 0\nWHILE i < 2\n i = i + 1\nWEND\nTALK i") == ["2"]


async def test_functions_parameters_recursion_and_shared_variables():
    source = """
FUNCTION fact(n)
  IF n <= 1 THEN RETURN 1
  RETURN n * fact(n - 1)
END FUNCTION
FUNCTION greet(who)
  greeted = who
  TALK "hi ${who}"
END FUNCTION
CALL greet("Ana")
TALK fact(5), greeted, who
x = fact(3)
TALK x
"""
    assert await said(source) == ["hi Ana", "120 Ana ", "6"]


async def test_exit_function_and_end():
    source = (
        "FUNCTION f(a)\n"
        " IF a THEN EXIT FUNCTION\n"
        ' TALK "not"\n'
        "END FUNCTION\n"
        "CALL f(TRUE)\n"
        'TALK "back"\n'
        "END\n"
        'TALK "never"'
    )
    assert await said(source) == ["back"]


async def test_objects_lists_indexes_and_members():
    source = """
o = NEW OBJECT
o.name = "Ana"
o.Age = 30
l = NEW ARRAY
l[0] = o
l[1] = "x"
l[0].age = 31
TALK l[0].NAME, l[0].age, UBOUND(l), l.length, o["name"]
m = [3, 1, 2]
m[-1] = 9
TALK m
"""
    assert await said(source) == ["Ana 31 2 2 Ana", "[3, 1, 9]"]


async def test_select_from_a_list_with_where_and_order():
    source = """
people = [NEW OBJECT, NEW OBJECT, NEW OBJECT]
people[0].name = "Carla"
people[0].age = 40
people[1].name = "ana"
people[1].age = 17
people[2].name = "Bia"
people[2].age = 25
adults = SELECT name FROM people WHERE age >= 18 ORDER BY name
TALK adults
young = SELECT * FROM people WHERE name = "ANA"
TALK young
"""
    assert await said(source) == ['[{"name": "Bia"}, {"name": "Carla"}]', '[{"name": "ana", "age": 17}]']


async def test_interpolation_runs_expressions():
    assert await said('n = 2\nTALK "${n} x 3 = ${n * 3}; ${UCASE("ok")}"') == ["2 x 3 = 6; OK"]


async def test_hear_suspends_and_the_json_state_resumes_the_run():
    compiled = load(
        (
            'TALK "Name?"\n'
            "HEAR name AS NAME\n"
            "FOR i = 1 TO 2\n"
            ' TALK "Age ${i}?"\n'
            " HEAR age AS INTEGER\n"
            " total = total + age\n"
            "NEXT\n"
            "TALK name, total"
        ),
        "form",
    )
    port = MemoryPort()
    outcome = await Run(compiled, Context(port=port)).start()
    assert outcome.status == "waiting" and port.said == ["Name?"]
    state = json.loads(json.dumps(outcome.state))  # it is plain JSON
    assert state["dialog"] == "form" and state["waiting"] is True
    for answer in ["Ana Souza", "3", "4"]:
        run = Run.restore(compiled, Context(port=port), state)
        outcome = await run.resume(answer)
        state = json.loads(json.dumps(outcome.state)) if outcome.state else {}
    assert outcome.status == "done"
    assert port.said == ["Name?", "Age 1?", "Age 2?", "Ana Souza 7"]


async def test_a_run_resumes_in_another_process():
    """The state at a HEAR inside a FUNCTION, inside a FOR EACH, goes to a new Python process that finishes the run."""
    source = (
        "FUNCTION ask(q)\n"
        " TALK q\n"
        " HEAR a AS BOOLEAN\n"
        " RETURN a\n"
        "END FUNCTION\n"
        'FOR EACH q IN ["Tea?", "Coffee?"]\n'
        " r = ask(q)\n"
        " TALK q, r\n"
        "NEXT"
    )
    port = MemoryPort()
    run = Run(load(source, "drinks"), Context(port=port))
    outcome = await run.start()
    outcome = await run.resume("yes")
    assert outcome.status == "waiting" and port.said == ["Tea?", "Tea? true", "Coffee?"]
    script = (
        "import asyncio, json, sys\n"
        "from gbmedia.bots.compiler import load\n"
        "from gbmedia.bots.context import Context\n"
        "from gbmedia.bots.host import MemoryPort\n"
        "from gbmedia.bots.machine import Run\n"
        "async def main():\n"
        "    data = json.loads(sys.stdin.read())\n"
        "    port = MemoryPort()\n"
        "    run = Run.restore(load(data['source'], 'drinks'), Context(port=port), data['state'])\n"
        "    outcome = await run.resume('não')\n"
        "    print(json.dumps({'status': outcome.status, 'said': port.said}))\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(
        child.communicate(json.dumps({"source": source, "state": outcome.state}).encode()), 60
    )
    assert child.returncode == 0, err.decode()
    assert json.loads(out) == {"status": "done", "said": ["Coffee? false"]}


async def test_restore_refuses_a_changed_dialog_or_a_broken_state():
    compiled = load("HEAR x\nTALK x", "d")
    outcome = await Run(compiled, Context()).start()
    with pytest.raises(StateError, match="changed since"):
        Run.restore(load("HEAR x\nTALK x, x", "d"), Context(), outcome.state)
    with pytest.raises(StateError, match="not a run of this dialog"):
        Run.restore(load("HEAR x\nTALK x", "other"), Context(), outcome.state)
    with pytest.raises(StateError, match="points outside"):
        Run.restore(
            compiled, Context(), {**outcome.state, "frames": [{"unit": "", "pc": 99, "vars": {}, "hidden": {}}]}
        )
    with pytest.raises(StateError, match="malformed"):
        Run.restore(compiled, Context(), {**outcome.state, "frames": [{"unit": ""}]})
    with pytest.raises(StateError, match="not at a HEAR"):
        Run.restore(compiled, Context(), {**outcome.state, "frames": [{"unit": "", "pc": 1, "vars": {}, "hidden": {}}]})
    done = Run(load("TALK 1"), Context())
    await done.start()
    with pytest.raises(StateError, match="not waiting"):
        await done.resume("x")
    with pytest.raises(StateError, match="has ended"):
        await done.start()


async def test_an_invalid_answer_is_asked_again_in_the_users_language():
    outcome, port = await talk_with("HEAR d AS DATE\nTALK d", ["amanhã", "31/12/2026"], locale="pt")
    assert outcome.status == "done"
    assert port.said == ["Por favor, digite uma data, como 31/12/2026.", "2026-12-31"]


async def test_a_menu_takes_an_option_or_its_number():
    outcome, port = await talk_with(
        'options = ["Red", "Blue"]\nHEAR c AS "Pizza", "Pão"\nTALK c\nHEAR d AS options\nTALK d', ["burger", "pao", "2"]
    )
    assert outcome.status == "done"
    assert port.said == ["Please choose one of: Pizza, Pão.", "Pão", "Blue"]


async def test_hear_in_a_function_called_inside_an_expression_is_an_error():
    outcome, _ = await talk_with("FUNCTION f()\n HEAR x\n RETURN x\nEND FUNCTION\nTALK f() + 1")
    assert outcome.status == "failed"
    assert (
        outcome.error.line == 2 and "HEAR cannot run in a FUNCTION called inside an expression" in outcome.error.message
    )


async def test_a_runtime_error_names_dialog_and_line_and_the_user_gets_an_apology():
    outcome, port = await talk_with('TALK "a"\nx = 1 / 0', dialog="calc")
    assert outcome.status == "failed"
    assert str(outcome.error) == "calc: line 2: division by zero"
    assert port.said == ["a", "Sorry, something went wrong on my side and I had to stop. Please try again later."]
    assert port.logs == [("error", "calc: line 2: division by zero")]
    for source, message in [
        ("l = [1]\nTALK l[5]", "line 2: index 5 is outside the list (it has 1 items, from 0)"),
        ('x = "a"\nx.f = 1', "line 2: cannot set field f of a text (make it with NEW OBJECT)"),
        ("FOR EACH i IN 3\nNEXT", "line 1: FOR EACH goes over a list, not a number"),
        ("FOR i = 1 TO 2 STEP 0\nNEXT", "line 1: FOR ... STEP 0 never ends"),
        ('x = "abc" * 2', "line 1: 'abc' is not a number"),
        ('x = MID("abc", 0)', "line 1: MID's start counts from 1"),
    ]:
        outcome, _ = await talk_with(source)
        assert str(outcome.error).removeprefix("test: ") == message


async def test_go_to_ends_the_run_naming_the_next_dialog():
    outcome, port = await talk_with('TALK "a"\nGO TO "menu"\nTALK "b"')
    assert (outcome.status, outcome.goto, port.said) == ("goto", "menu", ["a"])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = nosuch(1)", "line 1, col 5: unknown function NOSUCH"),
        ('x = TALK("a")', "line 1, col 5: TALK is a statement and gives no value"),
        ("x = MID(1)", "line 1, col 5: MID takes 2 to 3 arguments (text, start, length?), got 1"),
        ("FUNCTION f(a)\nEND FUNCTION\nx = f(1, 2)", "line 3: FUNCTION F takes 1 argument, got 2"),
        ("CALL nosuch", "line 1: unknown FUNCTION NOSUCH"),
        ("EXIT FOR", "line 1: EXIT FOR outside a FOR loop"),
        ("EXIT FUNCTION", "line 1: EXIT FUNCTION outside a FUNCTION"),
        ("RETURN 1", "line 1: RETURN with a value outside a FUNCTION"),
        ("CALL MID 1", "line 1: MID takes 2 to 3 arguments (text, start, length?), got 1"),
    ],
)
async def test_compile_errors(source: str, message: str):
    with pytest.raises(BasicSyntaxError) as caught:
        load(source)
    assert str(caught.value) == f"dialog: {message}"


async def test_a_builtin_can_be_called_as_a_statement_and_zero_argument_ones_without_parentheses():
    assert await said('CALL LOG("x")\nid = UUID\nTALK LEN(id)') == ["36"]


async def test_deep_recursion_ends_the_run_with_a_message():
    source = "FUNCTION f(n)\n IF n = 0 THEN RETURN 0\n RETURN 1 + f(n - 1)\nEND FUNCTION\nTALK f(40)\nTALK f(500)"
    outcome, port = await talk_with(source)
    assert port.said[0] == "40"
    assert outcome.error.message == "FUNCTION calls inside expressions nested more than 50 deep"
    source = 'FUNCTION g(n)\n IF n > 0 THEN CALL g(n - 1)\nEND FUNCTION\nCALL g(150)\nTALK "ok"\nCALL g(1000)'
    outcome, port = await talk_with(source)
    assert port.said[0] == "ok" and outcome.error.message == "FUNCTION calls nested more than 200 deep"


async def test_numbers_cannot_grow_without_bound():
    assert await said("TALK 2 ^ 10, 2 ^ 100 > 1E30") == ["1024 true"]
    outcome, _ = await talk_with("x = 10 ^ 10 ^ 10")
    assert outcome.error.message == "number too large"
    outcome, _ = await talk_with("x = 3\nDO\n x = x * x\nLOOP")
    assert outcome.error.message == "number too large" and outcome.error.line == 3
    outcome, _ = await talk_with("x = 1E300\ny = x * 1E10")
    assert outcome.error.message == "number too large" and outcome.error.line == 2


async def test_a_builtin_failing_unexpectedly_ends_only_the_run():
    from gbmedia.bots.library import REGISTRY

    @REGISTRY.builtin("brokenForTest", "")
    def broken(ctx: object) -> None:
        raise KeyError("bug")

    try:
        outcome, port = await talk_with("x = BROKENFORTEST()")
    finally:
        del REGISTRY.entries["brokenForTest"], REGISTRY.by_key["BROKENFORTEST"]
    assert outcome.status == "failed" and outcome.error.message == "internal error (KeyError)"
    assert port.said[-1].startswith("Sorry")


async def test_expressions_that_call_functions_everywhere():
    """The compiled closures' awaiting forms: every kind of expression with a FUNCTION call inside."""
    source = """
FUNCTION one()
  RETURN 1
END FUNCTION
FUNCTION obj()
  o = NEW OBJECT
  o.name = "x"
  RETURN o
END FUNCTION
l = [NEW OBJECT, NEW OBJECT]
l[one()] = "second"
l[one() - 1].name = "first"
holder = NEW OBJECT
holder.items = [0, 0]
holder.items[one()] = 5
TALK l[one()], l[0].name, holder.items[1], "${one() + one()}", -one(), [one(), 2], NOT one()
IF one() AND one() = 1 THEN TALK "and"
IF FALSE OR one() THEN TALK "or"
IF one() = 2 OR FALSE THEN TALK "no" ELSE TALK "neither"
SELECT CASE 1
  CASE 5, one()
    TALK "case"
END SELECT
SELECT CASE 3
  CASE one()
    TALK "wrong"
END SELECT
TALK obj().name, UCASE(obj().name), MID("abc", one() + 1)
"""
    assert await said(source) == ["second first 5 2 -1 [1, 2] false", "and", "or", "neither", "case", "x X bc"]


async def test_errors_in_an_included_dialog_name_that_dialog_and_its_line():
    lib = {"lib": 'TALK "lib"\nFUNCTION half(n)\n  RETURN n / 0\nEND FUNCTION'}
    compiled = load('INCLUDE lib\nTALK "main"\nx = half(4)', "main", lib.__getitem__)
    outcome = await Run(compiled, Context()).start()
    assert str(outcome.error) == "lib: line 3: division by zero"
    with pytest.raises(BasicSyntaxError) as caught:
        load("TALK 1\nINCLUDE lib", "main", {"lib": "\nx = nosuch(1)"}.__getitem__)
    assert str(caught.value) == "lib: line 2, col 5: unknown function NOSUCH"
