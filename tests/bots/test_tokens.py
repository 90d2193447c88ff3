"""The tokenizer: words, numbers, strings with ${...}, comments, line numbers, and its errors."""

from __future__ import annotations

import pytest

from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.tokens import EOF, NAME, NEWLINE, NUMBER, OP, STRING, Piece, tokenize


def kinds(source: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in tokenize(source) if t.kind not in (NEWLINE, EOF)]


def test_words_numbers_operators_with_positions():
    tokens = tokenize("x = 3.5 <> y")
    assert [(t.kind, t.text, t.line, t.col) for t in tokens[:5]] == [
        (NAME, "x", 1, 1),
        (OP, "=", 1, 3),
        (NUMBER, "3.5", 1, 5),
        (OP, "<>", 1, 9),
        (NAME, "y", 1, 12),
    ]
    assert tokens[0].upper == "X"


def test_keywords_are_words_compared_upper_cased():
    (token,) = [t for t in tokenize("tAlK") if t.kind == NAME]
    assert token.is_word("TALK")


def test_comments_rem_and_quote_are_dropped():
    assert kinds("TALK 1 ' a comment\nREM another\nremark = 2") == [
        (NAME, "TALK"),
        (NUMBER, "1"),
        (NAME, "remark"),
        (OP, "="),
        (NUMBER, "2"),
    ]


def test_a_leading_line_number_is_not_a_token():
    assert kinds("10 TALK 20\n20 x = 1") == [(NAME, "TALK"), (NUMBER, "20"), (NAME, "x"), (OP, "="), (NUMBER, "1")]


def test_strings_unescape_doubled_quotes_and_split_interpolations():
    (token,) = [t for t in tokenize('TALK "say ""hi"" ${name}!"') if t.kind == STRING]
    assert token.parts == ('say "hi" ', Piece("name", 1, 20), "!")


def test_an_interpolation_may_hold_a_string():
    (token,) = [t for t in tokenize('x = "a ${MID("}x", 1)} b"') if t.kind == STRING]
    assert token.parts[1] == Piece('MID("}x", 1)', 1, 10)


def test_line_continuation_joins_lines():
    assert kinds("TALK 1 + _\n 2") == [(NAME, "TALK"), (NUMBER, "1"), (OP, "+"), (NUMBER, "2")]


def test_not_equal_written_as_bang_equal_is_the_same_operator():
    assert kinds("a != b")[1] == (OP, "<>")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('x = 1\nTALK "abc', "line 2, col 6: unclosed string"),
        ('TALK "a ${x', "line 1, col 9: unclosed ${ in string"),
        ('TALK "a ${"b}', "line 1, col 11: unclosed string"),
        ("x = 1 ? 2", "line 1, col 7: unexpected character '?'"),
        ("x = 12ab", "line 1, col 5: bad number '12a'"),
    ],
)
def test_errors_name_line_and_column(source: str, message: str):
    with pytest.raises(BasicSyntaxError) as caught:
        tokenize(source)
    assert str(caught.value) == message
    assert (caught.value.line, caught.value.col) == tuple(
        int(n) for n in message.split(":")[0].replace("line ", "").split(", col ")
    )
