"""The parser: every statement of GB BASIC makes its tree, and every mistake its message."""

from __future__ import annotations

from typing import Any

import pytest

from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.parser import parse
from gbmedia.bots.syntax import (
    Assign,
    Binary,
    Call,
    CallStmt,
    DoLoop,
    ForEach,
    ForRange,
    Hear,
    If,
    Index,
    Keyword,
    ListOf,
    Literal,
    Member,
    Name,
    Return,
    SelectCase,
    SelectFrom,
    Table,
    Text,
    Unary,
)


def one(source: str) -> Any:
    (stmt,) = parse(source).body
    return stmt


def keyword(source: str) -> tuple[str, int]:
    stmt = one(source)
    assert isinstance(stmt, Keyword)
    return stmt.name, len(stmt.args)


@pytest.mark.parametrize(
    ("source", "name", "nargs"),
    [
        ('TALK "hi"', "talk", 1),
        ('talk "a", b', "talk", 2),
        ('PRINT "hi"', "talk", 1),
        ('TALK TO "+5511999", "hi"', "talkTo", 2),
        ('SEND SMS TO "+5511999", "code 1"', "sendSms", 2),
        ('SEND MAIL "a@b.c", "subject", "body"', "sendMail", 3),
        ('SEND MAIL TO "a@b.c", "subject", "body"', "sendMail", 3),
        ('SEND FILE "report.txt"', "sendFile", 1),
        ('SEND FILE TO "+5511", "report.txt", "here"', "sendFileTo", 3),
        ('TRANSFER TO "agent@x.com"', "transferTo", 1),
        ("TRANSFER", "transferTo", 0),
        ('GO TO "menu"', "gotoDialog", 1),
        ("GOTO menu", "gotoDialog", 1),
        ("WAIT 2", "wait", 1),
        ('LOG "x"', "log", 1),
        ('DEBUG "x"', "debug", 1),
        ('ALLOW ROLE "admin"', "allowRole", 1),
        ('CREATE FOLDER "reports"', "createFolder", 1),
        ('COPY "a.txt", "b.txt"', "copyFile", 2),
        ('DELETE "a.txt"', "delete", 1),
        ('DELETE "people", "name=Ana"', "delete", 2),
        ('MERGE "people" WITH rows BY "email"', "merge", 3),
        ('SAVE "people", name, email', "save", 3),
        ('SAVE report AS "report.txt"', "saveFile", 2),
        ('SET HEADER "Authorization" AS "Bearer x"', "setHeader", 2),
        ('SET PARAM "color" AS "blue"', "setParam", 2),
        ('SET LANGUAGE "pt"', "set", 2),
        ("SET FILTER x", "set", 2),
        ("SET MAX LINES 10", "set", 2),
        ("SET MAX COLUMNS 3", "set", 2),
        ("SET OUTPUT ARRAY", "set", 2),
        ('SET PAGE MODE "none"', "set", 2),
        ('SET THEME "dark"', "set", 2),
        ("SET WHOLE WORD TRUE", "set", 2),
        ("SET TRANSLATOR FALSE", "set", 2),
        ('SET HTTP USERNAME = "u"', "set", 2),
        ('SET HTTP PASSWORD AS "p"', "set", 2),
        ('SORT people BY "name"', "sortBy", 2),
        ("APPEND names, name", "append", 2),
    ],
)
def test_statements_calling_a_builtin(source: str, name: str, nargs: int):
    assert keyword(source) == (name, nargs)


def test_set_keeps_the_settings_name():
    stmt = one("SET MAX LINES 10")
    assert stmt.args[0] == Literal(1, 1, "MAX LINES") and stmt.args[1].value == 10


def test_sort_and_append_change_their_variable_in_place():
    assert one('SORT people BY "name"').target == Name(1, 6, "PEOPLE")
    assert one("APPEND names, x").target == Name(1, 8, "NAMES")


@pytest.mark.parametrize(
    ("source", "name", "nargs"),
    [
        ('x = FIND "people", "age>=18", "city=Rio"', "find", 3),
        ('x = GET "https://example.com"', "getHttp", 1),
        ('x = GET CONFIG "color"', "getConfig", 1),
        ('x = POST "https://example.com", data', "postHttp", 2),
        ('x = PUT "https://example.com", data', "putHttp", 2),
        ('x = DIR "reports"', "dirFolder", 1),
        ("x = UPLOAD file", "uploadFile", 1),
        ('x = FILL "t.txt" WITH data', "fill", 2),
        ('x = USER OF "Ana"', "userOf", 1),
        ('x = SORT people BY "age"', "sortBy", 2),
        ('x = MERGE "t" WITH rows BY "id"', "merge", 3),
        ('x = DELETE "t", "a=1"', "delete", 2),
        ('x = FORMAT d, "dd/MM/yyyy"', "format", 2),
        ('x = DATEADD d, "day", 3', "dateAdd", 3),
        ('x = DATEDIFF a, b, "day"', "getDateDiff", 3),  # the keyword API's name (docs/keywords.md)
        ('x = FORMAT(d, "dd")', "FORMAT", 2),
        ("x = UBOUND(list)", "UBOUND", 1),
        ('x = MID("abc", 2, 1)', "MID", 3),
    ],
)
def test_value_forms_on_the_right_of_an_assignment(source: str, name: str, nargs: int):
    stmt = one(source)
    assert isinstance(stmt, Assign) and isinstance(stmt.value, Call)
    assert (stmt.value.name, len(stmt.value.args)) == (name, nargs)


def test_new_object_and_array_members_and_indexes():
    body = parse('o = NEW OBJECT\no.name = "x"\nl = NEW ARRAY\nl[0] = o.name\nx = l[0].name').body
    assert body[0].value == Call(1, 5, "newObject", [])
    assert isinstance(body[1].target, Member) and body[1].target.name == "name"
    assert body[2].value == ListOf(3, 5, [])
    assert isinstance(body[3].target, Index) and isinstance(body[3].value, Member)
    assert isinstance(body[4].value, Member) and isinstance(body[4].value.target, Index)


def test_expressions_follow_precedence():
    value = one('x = NOT a = 1 OR b AND -c ^ 2 + 3 * 4 MOD 5 & "s"').value
    assert isinstance(value, Binary) and value.op == "OR"
    assert isinstance(value.left, Unary) and value.left.op == "NOT"
    right = value.right
    assert right.op == "AND" and right.right.op == "&"
    plus = right.right.left
    assert plus.op == "+" and plus.left.op == "-" and plus.left.operand.op == "^"
    assert plus.right.op == "MOD" and plus.right.left.op == "*"


def test_literals_lists_and_interpolation():
    value = one('x = [1, 2.5, TRUE, NULL, "a ${name} b"]').value
    assert [type(i) for i in value.items] == [Literal, Literal, Literal, Literal, Text]
    assert [i.value for i in value.items[:4]] == [1, 2.5, True, None]
    assert value.items[4].parts == ["a ", Name(1, 31, "NAME"), " b"]


def test_select_from_a_list():
    value = one("x = SELECT name, age FROM people WHERE age > 18 ORDER BY name DESC").value
    assert isinstance(value, SelectFrom)
    assert value.fields == ["name", "age"] and value.order_by == "name" and value.descending
    assert one("x = SELECT * FROM people").value.fields == []


def test_if_elseif_else_blocks_and_one_line_if():
    stmt = one("IF a THEN\n TALK 1\nELSEIF b THEN\n TALK 2\nELSE IF c THEN\n TALK 3\nELSE\n TALK 4\nEND IF")
    assert isinstance(stmt, If) and len(stmt.branches) == 3 and len(stmt.otherwise) == 1
    line = one("IF a > 1 THEN TALK 1 ELSE x = 2")
    assert isinstance(line.branches[0][1][0], Keyword) and isinstance(line.otherwise[0], Assign)


def test_select_case():
    stmt = one('SELECT CASE x\n CASE 1, 2\n  TALK "a"\n CASE "b"\n  TALK "b"\n CASE ELSE\n  TALK "c"\nEND SELECT')
    assert isinstance(stmt, SelectCase) and [len(v) for v, _ in stmt.cases] == [2, 1] and len(stmt.otherwise) == 1


def test_loops():
    stmt = one("FOR i = 1 TO 10 STEP 2\n TALK i\nNEXT i")
    assert isinstance(stmt, ForRange) and stmt.var == "I" and stmt.step.value == 2
    stmt = one("for each item in list\n talk item\nnext")
    assert isinstance(stmt, ForEach) and stmt.var == "ITEM"
    stmt = one("DO WHILE x < 3\n x = x + 1\nLOOP")
    assert isinstance(stmt, DoLoop) and not stmt.until and not stmt.at_end
    stmt = one("DO\n x = x + 1\nLOOP UNTIL x > 3")
    assert stmt.until and stmt.at_end
    stmt = one("WHILE x < 3\n x = x + 1\nWEND")
    assert isinstance(stmt, DoLoop) and stmt.cond is not None


def test_exit_end_return_call():
    body = parse("EXIT FOR\nEXIT DO\nEXIT\nEND\nRETURN\nCALL f(1, 2)\nCALL g 3\nf(1)").body
    assert [b.what for b in body[:4]] == ["FOR", "DO", "", ""]
    assert isinstance(body[4], Return) and body[4].value is None
    assert [(c.name, len(c.args)) for c in body[5:]] == [("F", 2), ("G", 1), ("F", 1)]
    assert all(isinstance(c, CallStmt) for c in body[5:])


def test_hear_forms_and_input():
    assert one("HEAR x") == Hear(1, Name(1, 6, "X"), "", dialog="dialog")
    assert one("HEAR x AS EMAIL").kind == "EMAIL"
    menu = one('HEAR x AS "Yes", "No", "Maybe"')
    assert menu.kind == "MENU" and len(menu.options) == 3
    assert one("HEAR x AS options").kind == "LIST"
    talk, hear = parse('INPUT "Your age?", age AS INTEGER').body
    assert talk.name == "talk" and hear.kind == "INTEGER" and hear.target == Name(1, 20, "AGE")
    (hear,) = parse("INPUT age").body
    assert isinstance(hear, Hear)


def test_function_table_schedule_and_include():
    sources = {"lib": 'FUNCTION double(x)\n RETURN x * 2\nEND FUNCTION\nSET SCHEDULE "0 9 * * 1"\nTALK "lib"'}
    program = parse(
        "INCLUDE lib\nTABLE people\n id integer key auto\n name * string(80) unique\n born date\nEND TABLE\n"
        'SET SCHEDULE "*/5 * * * *"\nx = double(2)',
        "main",
        sources.__getitem__,
    )
    assert set(program.functions) == {"DOUBLE"} and program.functions["DOUBLE"].params == ["X"]
    assert program.schedules == ["0 9 * * 1", "*/5 * * * *"] and program.includes == ["lib"]
    table = program.body[1]
    assert isinstance(table, Table) and [f.name for f in table.fields] == ["id", "name", "born"]
    assert table.fields[0].key and table.fields[0].auto and table.fields[1].required and table.fields[1].unique
    assert table.fields[1].size == 80 and table.fields[2].type == "date"
    assert isinstance(program.body[0], Keyword)  # the included dialog's TALK runs where it was included


def test_keywords_case_insensitive_and_line_numbers():
    program = parse('10 If x Then\n20 Talk "a"\n30 End If')
    assert isinstance(program.body[0], If)


def test_statements_separated_by_colon():
    assert len(parse("x = 1 : y = 2").body) == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\nNEXT", "line 2: NEXT without FOR"),
        ("LOOP", "line 1: LOOP without DO"),
        ("WEND", "line 1: WEND without WHILE"),
        ("ELSE", "line 1: ELSE without IF"),
        ("END IF", "line 1: END IF without IF"),
        ("CASE 1", "line 1: CASE without SELECT CASE"),
        ("END SELECT", "line 1: END SELECT without SELECT CASE"),
        ("END FUNCTION", "line 1: END FUNCTION without FUNCTION"),
        ("END TABLE", "line 1: END TABLE without TABLE"),
        ("FOR i = 1 TO 2\n TALK i\nEND IF", "line 3: END IF without IF"),
        ("IF x THEN\n TALK 1", "line 1: IF without END IF"),
        ("FOR i = 1 TO 2\n TALK i", "line 1: FOR without NEXT"),
        ("DO\n x = 1", "line 1: DO without LOOP"),
        ("WHILE x\n x = 1", "line 1: WHILE without WEND"),
        ("SELECT CASE x\n CASE 1\n TALK 1", "line 1: SELECT CASE without END SELECT"),
        ("SELECT CASE x\n TALK 1", "line 2: expected CASE after SELECT CASE"),
        ("FUNCTION f\n TALK 1", "line 1: FUNCTION without END FUNCTION"),
        ("TABLE t\n a string", "line 1: TABLE without END TABLE"),
        ("TABLE t\nEND TABLE", "line 1: TABLE t has no fields"),
        ("TABLE t\n a string bogus\nEND TABLE", "line 2, col 11: unknown field option bogus"),
        ("FOR i = 1 TO 3\nNEXT j", "line 2: NEXT j does not match FOR I"),
        ("IF x\n TALK 1\nEND IF", "line 1, col 5: expected THEN after the IF condition, found the end of the line"),
        ("FOR i 1 TO 3\nNEXT", "line 1, col 7: expected '=' after the FOR variable, found the number 1"),
        ("x = ", "line 1, col 5: expected an expression, found the end of the line"),
        ("x = (1 + 2", "line 1, col 11: expected ')' to close the parenthesis, found the end of the line"),
        ("x = [1, 2", "line 1, col 10: expected ']' to close the list, found the end of the line"),
        ("x = a[1", "line 1, col 8: expected ']' to close the index, found the end of the line"),
        ("x = 1 2", "line 1, col 7: unexpected the number 2 after the statement"),
        ("frobnicate 1", "line 1, col 1: unknown statement FROBNICATE"),
        ("1 + 2", "line 1, col 3: expected a statement, found '+'"),
        ('TALK TO "x"', "line 1, col 1: TALK TO takes 2 arguments (to, text), got 1"),
        ('SEND MAIL "a", "b"', "line 1, col 1: SEND MAIL takes 3 arguments (to, subject, body), got 2"),
        ('x = DATEADD "a"', "line 1, col 5: DATEADD takes 3 arguments (date, unit, amount), got 1"),
        ('SAVE "t"', 'line 1, col 1: SAVE takes a table and its values (SAVE "table", a, b) or data AS "file"'),
        ("APPEND x", "line 1, col 1: APPEND takes a list and what to add (APPEND list, item)"),
        (
            "SET SCHEDULE x",
            'line 1, col 14: SET SCHEDULE takes a cron expression in quotes, like SET SCHEDULE "0 8 * * *"',
        ),
        ('SET SCHEDULE "* *"', "line 1, col 14: SET SCHEDULE needs 5 or 6 cron fields, got 2"),
        ("SET COLOR 1", "line 1, col 5: unknown setting SET COLOR"),
        ("HEAR 1", "line 1, col 6: expected a variable after HEAR, found the number 1"),
        ('INPUT "a" b', "line 1, col 11: expected ',' or ';' between the INPUT prompt and its variable"),
        (
            "IF x THEN FOR i = 1 TO 2",
            "line 1, col 11: FOR cannot follow THEN on the same line; start a block on the next line",
        ),
        (
            "IF x THEN\n FUNCTION f\n END FUNCTION\nEND IF",
            "line 2: FUNCTION must be at the top of the dialog, not inside a block",
        ),
        ("FUNCTION f\nEND FUNCTION\nFUNCTION F\nEND FUNCTION", "line 3: FUNCTION F is defined twice"),
        ("FUNCTION mid(a)\nEND FUNCTION", "line 1: FUNCTION MID has the name of a built-in"),
        ("INCLUDE other", "line 1: INCLUDE is not available here (no dialogs to include from)"),
        ("x = NEW THING", "line 1, col 9: NEW makes an OBJECT or an ARRAY, not THING"),
        ('x = "a ${} b"', "line 1, col 8: empty ${} in string"),
        ('x = "a ${1 +} b"', "line 1, col 13: expected an expression, found the end of the line"),
        ('x = "a ${1 2} b"', "line 1, col 12: unexpected the number 2 in ${...}"),
        ("DO WHILE x\nLOOP WHILE y", "line 2, col 6: a DO loop has its condition after DO or after LOOP, not both"),
        ("END 1", "line 1, col 5: unexpected the number 1 after END"),
        ("x.+ = 2", "line 1, col 3: expected a field name after '.', found '+'"),
        ("CALL 1", "line 1, col 6: expected a FUNCTION name after CALL, found the number 1"),
        ("FUNCTION f(1)\nEND FUNCTION", "line 1, col 12: expected a parameter name, found the number 1"),
        ("TABLE t\n a string(x)\nEND TABLE", "line 2, col 11: expected a size in the field's parentheses"),
        ("x = SELECT a FROM", "line 1, col 18: expected an expression, found the end of the line"),
        ("x = SELECT a b", "line 1, col 14: expected FROM after the SELECT fields, found 'b'"),
    ],
)
def test_error_messages(source: str, message: str):
    with pytest.raises(BasicSyntaxError) as caught:
        parse(source)
    assert str(caught.value) == f"dialog: {message}"


def test_include_errors_name_missing_dialogs_and_cycles():
    sources = {"a": "INCLUDE b", "b": "INCLUDE a"}
    with pytest.raises(BasicSyntaxError, match=r"b: line 1: INCLUDE cycle: main -> a -> b -> a"):
        parse("INCLUDE a", "main", sources.__getitem__)
    with pytest.raises(BasicSyntaxError, match="main: line 1: INCLUDE nope: no such dialog"):
        parse('INCLUDE "nope.bas"', "main", sources.__getitem__)
    with pytest.raises(BasicSyntaxError, match="FUNCTION F of lib is already defined"):
        parse("FUNCTION f\nEND FUNCTION\nINCLUDE lib", "main", {"lib": "FUNCTION f\nEND FUNCTION"}.__getitem__)


def test_an_error_carries_line_column_and_dialog():
    with pytest.raises(BasicSyntaxError) as caught:
        parse('x = 1\nTALK "abc', "greeting")
    error = caught.value
    assert (error.line, error.col, error.dialog) == (2, 6, "greeting")
    assert error.to_json() == {"dialog": "greeting", "line": 2, "col": 6, "message": "unclosed string"}
    assert str(error) == "greeting: line 2, col 6: unclosed string"


def test_nesting_is_bounded_without_a_python_recursion_error():
    with pytest.raises(BasicSyntaxError, match="expressions nested more than 32 deep"):
        parse("x = " + "(" * 150 + "1" + ")" * 150)
    with pytest.raises(BasicSyntaxError, match="signs nested more than 32 deep"):
        parse("x = " + "-" * 500 + "1")
    with pytest.raises(BasicSyntaxError, match="NOTs nested more than 32 deep"):
        parse("x = " + "NOT " * 500 + "1")
    with pytest.raises(BasicSyntaxError, match="nested more than 32 deep"):
        parse("IF x THEN\n" * 150 + "END IF\n" * 150)
    assert parse("x = " + "(" * 25 + "1" + ")" * 25).body
