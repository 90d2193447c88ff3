"""The compiled engine gives the interpreter's transcripts: every example, every fixture, generated programs.

Each dialog runs twice in the terminal's conversation (in-process, stdin scripted), once
per engine, and what the bot said (stdout), what the operator saw (stderr: errors with
their lines, SEND, LOG) and the exit status must be the same. The compiled run must
really be compiled: a dialog the compiler refuses would silently compare the
interpreter with itself, so each one is compiled first.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gbmedia.bots.limits import Limits
from gbmedia.bots.terminal import TerminalOptions, compile_file, run_file
from gbmedia.bots.wasm_engine import wasm_of
from tests.bots.terminal import EXAMPLES
from tests.bots.test_examples import VISIT
from tests.helpers import run_apart

FIXTURES = Path(__file__).resolve().parent / "dialogs"

# The examples with the answers a person gives (the README's and docs' visits).
EXAMPLE_ANSWERS = {
    "start": VISIT,
    "expense": ["bo@example.com", "2026-12-01", "10", "Lunch"],
    "expense_table": [],  # only its TABLE: it says nothing, and must fail nothing
    "report": [],
    "media": [],  # a media bot: in a terminal it has no rooms, so both engines end it the same way
}


def fixture_answers(path: Path) -> list[str]:
    """A fixture's first line: ``' answers: a | b | c``."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("' answers:"), path
    return [a.strip() for a in first.removeprefix("' answers:").split("|") if a.strip()]


def converse(file: Path, answers: list[str], engine: str, tables: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO("".join(f"{a}\n" for a in answers))
    options = TerminalOptions(file=file, engine=engine, tables=tables, limits=Limits(max_statements=200_000))
    code = run_apart(run_file(options, stdin, out, err))
    return code, out.getvalue(), err.getvalue()


def both(file: Path, answers: list[str], tmp_path: Path) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    wasm_of(compile_file(file))  # compiles: a refusal fails here instead of comparing the interpreter with itself
    compiled = converse(file, answers, "wasm", tmp_path / "wasm.json")
    interpreted = converse(file, answers, "interp", tmp_path / "interp.json")
    return compiled, interpreted


@pytest.mark.parametrize("name", sorted(EXAMPLE_ANSWERS))
def test_every_example_gives_the_same_transcript_compiled_and_interpreted(name: str, tmp_path: Path) -> None:
    assert sorted(EXAMPLE_ANSWERS) == sorted(p.stem for p in EXAMPLES.glob("*.bas"))  # none left out
    compiled, interpreted = both(EXAMPLES / f"{name}.bas", EXAMPLE_ANSWERS[name], tmp_path)
    assert compiled == interpreted
    assert compiled[1].strip() or name == "expense_table"  # the comparison is not of two empty runs


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.bas")), ids=lambda p: p.stem)
def test_every_fixture_gives_the_same_transcript_compiled_and_interpreted(path: Path, tmp_path: Path) -> None:
    compiled, interpreted = both(path, fixture_answers(path), tmp_path)
    assert compiled == interpreted
    assert compiled[1].strip()


# --- generated programs ----------------------------------------------------------------------

VARS = ["a", "b", "c", "s", "d"]  # s starts as text ("7": a number to arithmetic), d as a fraction
NUMBERS = st.one_of(
    st.integers(-12, 12),
    st.sampled_from([2**31 - 1, 2**53 + 1, 2**62 - 1, -(2**62), 10**20, 0.5, 1.25, -2.5]),
)
ARITH = ["+", "-", "*", "/", "\\", "MOD"]
COMPARE = ["=", "<>", "<", ">", "<=", ">="]


@st.composite
def number_expr(draw: st.DrawFn, depth: int = 2) -> str:
    choice = draw(st.integers(0, 4 if depth > 0 else 1))
    if choice == 0:
        value = draw(NUMBERS)
        return f"({value})" if isinstance(value, int | float) and value < 0 else str(value)
    if choice == 1:
        return draw(st.sampled_from([*VARS, "f(1)"]))
    if choice == 2:
        return f"-{draw(number_expr(depth - 1))}"
    if choice == 3:
        return f"({draw(number_expr(depth - 1))} {draw(st.sampled_from(ARITH))} {draw(number_expr(depth - 1))})"
    return f"f({draw(number_expr(depth - 1))})"


@st.composite
def condition(draw: st.DrawFn) -> str:
    test = f"{draw(number_expr(1))} {draw(st.sampled_from(COMPARE))} {draw(number_expr(1))}"
    join = draw(st.sampled_from(["", " AND ", " OR "]))
    if join:
        test = f"({test}){join}NOT ({draw(number_expr(1))} > {draw(number_expr(0))})"
    return test


@st.composite
def statements(draw: st.DrawFn, depth: int, loop: int) -> list[str]:
    out: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 8 if depth > 0 else 3))
        if kind == 0:
            out.append(f"{draw(st.sampled_from(VARS))} = {draw(number_expr())}")
        elif kind == 1:
            out.append(f"TALK {draw(number_expr())}, {draw(st.sampled_from(VARS))}")
        elif kind == 2:
            out.append(f'TALK "v=${{{draw(number_expr(1))}}}" & {draw(st.sampled_from(VARS))}')
        elif kind == 3:
            out.append(f"HEAR {draw(st.sampled_from(VARS))} AS {draw(st.sampled_from(['INTEGER', 'NUMBER']))}")
        elif kind == 4:
            body = draw(statements(depth - 1, loop))
            other = draw(statements(depth - 1, loop))
            out += [f"IF {draw(condition())} THEN", *body, "ELSE", *other, "END IF"]
        elif kind == 5:
            var = f"i{loop}"
            start, end, step = draw(st.integers(-3, 3)), draw(st.integers(-3, 4)), draw(st.sampled_from([1, 2, -1]))
            out += [f"FOR {var} = {start} TO {end} STEP {step}", *draw(statements(depth - 1, loop + 1)), "NEXT"]
            out.append(f"TALK {var}")
        elif kind == 7:  # a FUNCTION called as a statement that waits at a HEAR: frames saved and restored
            out.append(f"CALL g({draw(number_expr(1))})")
        elif kind == 8:
            out.append(f"{draw(st.sampled_from(VARS))} = h({draw(number_expr(1))}, {draw(st.sampled_from(VARS))})")
        else:
            var = f"k{loop}"
            out += [f"{var} = 0", f"DO WHILE {var} < 3", f"{var} = {var} + 1"]
            out += [*draw(statements(depth - 1, loop + 1)), "LOOP"]
    return out


@st.composite
def programs(draw: st.DrawFn) -> tuple[str, list[str]]:
    lines = ["FUNCTION f(x)", "  RETURN x * 2 + a", "END FUNCTION"]
    lines += ["FUNCTION g(y)", "  HEAR c AS INTEGER", '  TALK "g " & (y + c)', "END FUNCTION"]
    lines += [
        "FUNCTION h(n, m)",
        "  FOR j = 1 TO 2",
        "    HEAR b",
        "    n = n & b",
        "  NEXT",
        "  RETURN n & m",
        "END FUNCTION",
    ]
    lines += ["a = 1", "b = 2", "c = 3", 's = "7"', "d = 0.5"]
    lines += draw(statements(2, 0))
    answers = draw(st.lists(st.sampled_from(["5", "-3", "x", "2.5", "4611686018427387904"]), max_size=10))
    return "\n".join(lines) + "\n", answers


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same programs every run: no flaky test; the source is in the failure
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its program at once
    suppress_health_check=[HealthCheck.too_slow],
)
@given(program=programs())
def test_generated_programs_give_the_same_transcript_compiled_and_interpreted(
    program: tuple[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    source, answers = program
    folder = tmp_path_factory.mktemp("gen")
    path = folder / "gen.bas"
    path.write_text(source, encoding="utf-8")
    compiled, interpreted = both(path, answers, folder)
    assert compiled == interpreted, source
