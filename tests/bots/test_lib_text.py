"""Built-ins over text, numbers and lists, called from BASIC as a dialog calls them."""

from __future__ import annotations

import base64
import re

import pytest

from tests.bots.helpers import said, talk_with


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('LEN("héllo")', "5"),
        ("LEN([1, 2, 3])", "3"),
        ("COUNT([1])", "1"),
        ("UBOUND([1, 2])", "2"),
        ("UBOUND(nothing)", "0"),
        ('MID("abcdef", 2, 3)', "bcd"),
        ('MID("abcdef", 4)', "def"),
        ('LEFT("abcdef", 2)', "ab"),
        ('RIGHT("abcdef", 2)', "ef"),
        ('RIGHT("abc", 0)', ""),
        ('UCASE("ação")', "AÇÃO"),
        ('LCASE("ABC")', "abc"),
        ('TRIM("  a b  ")', "a b"),
        ('INSTR("Olá Mundo", "MUNDO")', "5"),
        ('INSTR("abc", "z")', "0"),
        ('REPLACE("a-b-c", "-", "+")', "a+b+c"),
        ('SPLIT("a, b,c")', '["a", "b", "c"]'),
        ('SPLIT("a;b", ";")', '["a", "b"]'),
        ('JOIN(["a", "b"], "/")', "a/b"),
        ('VAL("12.5") + 1', "13.5"),
        ('VAL("3,5")', "3.5"),
        ('STR(12) + "x"', "12x"),
        ("INT(7.9)", "7"),
        ("ABS(-3)", "3"),
        ("ROUND(2.5)", "3"),
        ("ROUND(1.005, 2)", "1.01"),
        ("ISARRAY([1])", "true"),
        ('ISARRAY("a")', "false"),
        ('ISEMPTY("")', "true"),
        ("ISEMPTY(NEW OBJECT)", "true"),
        ("ISEMPTY(0)", "false"),
        ('ISNUMBER("4.2")', "true"),
        ('ISNUMBER("x")', "false"),
        ('ISVALIDNUMBER("")', "false"),
        ('BASE64("olá")', base64.b64encode("olá".encode()).decode()),
        ('NUMBERONLY("+55 (11) 9999-0000")', "551199990000"),
        ("NUMBERTOLETTERS(0)", "A"),
        ("NUMBERTOLETTERS(25)", "Z"),
        ("NUMBERTOLETTERS(26)", "AA"),
        ("NUMBERTOLETTERS(701)", "ZZ"),
        ('JSON(["a", 1])', '["a", 1]'),
        ('PARSEJSON("{""a"": [1, 2]}").a[1]', "2"),
        ('TOLIST(["a", "b"])', "a, b"),
        ("APPEND([1], 2, [3, 4])", "[1, 2, 3, 4]"),
    ],
)
async def test_text_and_list_builtins(expr: str, expected: str):
    assert await said(f"TALK {expr}") == [expected]


async def test_flatten_json_tolist_and_sort_by_member():
    source = """
o = PARSEJSON("{""a"": {""b"": 1, ""c"": [2, 3]}, ""d"": ""x""}")
TALK FLATTENJSON(o)
people = PARSEJSON("[{""name"": ""bia"", ""age"": 30}, {""name"": ""Ana"", ""age"": 4}, {""name"": ""carl""}]")
TALK TOLIST(people, "name")
byname = SORT people BY "name"
TALK TOLIST(byname, "name")
SORT people BY "age"
TALK TOLIST(people, "NAME")
"""
    assert await said(source) == [
        '{"a_b": 1, "a_c_0": 2, "a_c_1": 3, "d": "x"}',
        "bia, Ana, carl",
        "Ana, bia, carl",
        "carl, Ana, bia",
    ]


async def test_random_ids_and_passwords():
    (uuid_text, rnd, dice, rid, pwd) = await said(
        "TALK UUID()\nTALK RANDOM()\nTALK RANDOM(1, 6)\nTALK GETRANDOMID(6)\nTALK GENERATEPASSWORD(16)"
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid_text)
    assert 0 <= float(rnd) < 1 and 1 <= int(dice) <= 6
    assert re.fullmatch(r"[A-HJ-NP-Z2-9]{6}", rid)
    assert len(pwd) == 16
    assert 1 <= int((await said("TALK RANDOM(3)"))[0]) <= 3


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("UBOUND(1)", "UBOUND takes a list, not number"),
        ('REPLACE("a", "", "b")', "REPLACE needs something to replace"),
        ('JOIN("a")', "JOIN takes a list, not text"),
        ("GETRANDOMID(0)", "an id has 1 to 64 characters"),
        ("GENERATEPASSWORD(4)", "a password has 8 to 128 characters"),
        ("NUMBERTOLETTERS(-1)", "column numbers start at 0"),
        ('PARSEJSON("{")', "not JSON"),
        ('TOLIST("a")', "TOLIST takes a list, not text"),
        ('APPEND("a", 1)', "APPEND adds to a list, not to text"),
        ('MID("a", 1.5)', "MID's start must be a whole number, not 1.5"),
    ],
)
async def test_bad_arguments_end_the_run_with_a_message(expr: str, message: str):
    outcome, _ = await talk_with(f"x = {expr}")
    assert outcome.status == "failed" and message in outcome.error.message


async def test_sort_by_refuses_a_text():
    outcome, _ = await talk_with('x = SORT "abc" BY "a"')
    assert "SORT takes a list, not text" in outcome.error.message
