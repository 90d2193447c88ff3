"""refactor: renames over tokens that keep strings, comments and fields; reformat by blocks; both run the same."""

from __future__ import annotations

import pytest

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.debug.refactor import RefactorError, reformat, rename
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import converse

SOURCE = """' total: the sum of what the user gives
total = 0
item = NEW OBJECT
item.total = 5
label = "total is ${total}"
for each n in [1, 2, 3]
  total = add(total, n) ' add total and n
next
function add(a, b)
return a + b
end function
if total > item.total then
talk "total " & label
elseif total = 0 then
talk "none"
else
talk add(total, 1)
end if
select case total
case 6
hear answer
talk "you said ${answer} for total ${total}"
case else
talk "other"
end select
"""


async def run_dialog(source: str, answers: list[str]) -> list[str]:
    port = MemoryPort()
    outcome = await converse(load(source, "d"), Context(port=port), answers)
    assert outcome.status == "done", outcome.error
    return port.said


async def test_rename_changes_the_variable_everywhere_and_nothing_else():
    renamed = rename(SOURCE, "total", "sum", "d")
    assert "sum = add(sum, n) ' add total and n" in renamed  # the comment keeps its words
    assert "item.total = 5" in renamed and "item.total then" in renamed  # a field is not the variable
    assert 'label = "total is ${sum}"' in renamed  # a string keeps its text, its ${...} is renamed
    assert 'talk "you said ${answer} for total ${sum}"' in renamed
    assert rename(renamed, "sum", "total", "d") == SOURCE  # and back: every renamed place was the variable
    assert await run_dialog(renamed, ["yes"]) == await run_dialog(SOURCE, ["yes"])


async def test_rename_a_function_and_it_still_runs_the_same():
    renamed = rename(SOURCE, "ADD", "plus", "d")
    assert "function plus(a, b)" in renamed and "total = plus(total, n)" in renamed and "talk plus(total, 1)" in renamed
    assert await run_dialog(renamed, ["ok"]) == await run_dialog(SOURCE, ["ok"])


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ("total", "label", "refactor_name_taken"),  # another variable's name
        ("total", "talk", "refactor_name_taken"),  # a keyword
        ("total", "ubound", "refactor_name_taken"),  # a built-in
        ("nothing", "x", "refactor_name_unknown"),
        ("total", "9lives", "refactor_invalid_name"),
    ],
)
def test_rename_refuses_what_would_change_the_dialog(old: str, new: str, code: str):
    with pytest.raises(RefactorError) as caught:
        rename(SOURCE, old, new, "d")
    assert caught.value.code == code


def test_a_name_that_is_also_a_keyword_somewhere_is_not_renamed_blindly():
    source = "email = 1\nHEAR x AS EMAIL\nTALK email"
    with pytest.raises(RefactorError) as caught:
        rename(source, "email", "mail_address", "d")
    assert caught.value.code == "refactor_unsafe"


def test_a_source_that_does_not_parse_is_not_refactored():
    with pytest.raises(BasicSyntaxError):
        rename('x = "open', "x", "y")
    with pytest.raises(BasicSyntaxError):
        reformat("IF x THEN\nTALK 1")


async def test_reformat_upper_cases_keywords_and_indents_blocks_and_runs_the_same():
    formatted = reformat(SOURCE, "d")
    assert formatted.splitlines()[5:12] == [
        "FOR EACH n IN [1, 2, 3]",
        "    total = add(total, n) ' add total and n",
        "NEXT",
        "FUNCTION add(a, b)",
        "    RETURN a + b",
        "END FUNCTION",
        "IF total > item.total THEN",
    ]
    assert formatted.splitlines()[12:24] == [
        '    TALK "total " & label',
        "ELSEIF total = 0 THEN",
        '    TALK "none"',
        "ELSE",
        "    TALK add(total, 1)",
        "END IF",
        "SELECT CASE total",
        "    CASE 6",
        "        HEAR answer",
        '        TALK "you said ${answer} for total ${total}"',
        "    CASE ELSE",
        '        TALK "other"',
    ]
    assert formatted.splitlines()[24] == "END SELECT"
    assert "item.total = 5" in formatted  # a field keeps its case
    assert reformat(formatted, "d") == formatted  # a fixed point
    assert await run_dialog(formatted, ["si"]) == await run_dialog(SOURCE, ["si"])


def test_reformat_keeps_table_fields_and_continued_lines_as_written():
    source = 'table people\nname string(50)\nend table\ntalk "a", _\n"b"\ndo while false\nloop'
    formatted = reformat(source)
    assert formatted.splitlines() == [
        "TABLE people",
        "    name string(50)",
        "END TABLE",
        'TALK "a", _',
        '    "b"',
        "DO WHILE FALSE",
        "LOOP",
    ]
