"""The GB BASIC tokenizer: source text to a list of tokens with line and column.

Lines matter in BASIC (a statement ends at the end of its line), so newlines are
tokens. Keywords are not reserved here: a word is a ``NAME`` and the parser decides,
comparing upper-cased text, so keywords are case-insensitive. A string keeps its raw
text; the parser splits its ``${expr}`` parts, re-tokenizing each at its own position.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbmedia.bots.errors import BasicSyntaxError

NAME, NUMBER, STRING, OP, NEWLINE, EOF = "NAME", "NUMBER", "STRING", "OP", "NEWLINE", "EOF"

_TWO_CHAR_OPS = {"<>", "<=", ">=", "!="}
_ONE_CHAR_OPS = set("=<>+-*/\\^&(),.[]:;#{}%")


@dataclass(frozen=True, slots=True)
class Piece:
    """The source of one ``${expr}`` inside a string, and where it starts."""

    source: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str  # for NAME: as written; for STRING: the content between the quotes, unescaped
    line: int
    col: int  # 1-based
    upper: str = ""  # NAME and OP: the text upper-cased, what the parser compares
    parts: tuple[str | Piece, ...] = ()  # STRING: its text and its ${...} expressions

    def is_word(self, *words: str) -> bool:
        return self.kind == NAME and self.upper in words

    def is_op(self, *ops: str) -> bool:
        return self.kind == OP and self.text in ops


def tokenize(
    source: str, line: int = 1, col: int = 1, dialog: str | None = None, fragment: bool = False
) -> list[Token]:
    """Split ``source`` into tokens; ``line``/``col`` place a ``fragment`` (an interpolation) in its file."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    line_start = i - (col - 1)
    at_line_start = not fragment

    def error(message: str, at: int) -> BasicSyntaxError:
        return BasicSyntaxError(message, line, at - line_start + 1, dialog)

    while i < n:
        ch = source[i]
        c = i - line_start + 1
        if ch == "\n":
            tokens.append(Token(NEWLINE, "\n", line, c))
            i += 1
            line += 1
            line_start = i
            at_line_start = True
            continue
        if ch in " \t\r\ufeff":
            i += 1
            continue
        if ch == "'":  # comment to the end of the line
            while i < n and source[i] != "\n":
                i += 1
            continue
        if ch == "_" and source[i + 1 : i + 2] in ("\n", "\r") and tokens and tokens[-1].kind != NEWLINE:
            # a line continuation: " _" at the end of a line joins the next one
            i += 1
            while i < n and source[i] != "\n":
                i += 1
            i += 1
            line += 1
            line_start = i
            continue
        if ch.isdigit() or (ch == "." and source[i + 1 : i + 2].isdigit()):
            start = i
            while i < n and source[i].isdigit():
                i += 1
            if i < n and source[i] == "." and source[i + 1 : i + 2].isdigit():
                i += 1
                while i < n and source[i].isdigit():
                    i += 1
            if i < n and source[i] in "eE" and (source[i + 1 : i + 2].isdigit() or source[i + 1 : i + 3][1:].isdigit()):
                i += 2 if source[i + 1] in "+-" else 1
                while i < n and source[i].isdigit():
                    i += 1
            if i < n and (source[i].isalpha() or source[i] == "_"):
                raise error(f"bad number {source[start : i + 1]!r}", start)
            text = source[start:i]
            if at_line_start and "." not in text and "e" not in text.lower():
                at_line_start = False
                continue  # an optional leading line number: not part of the statement
            tokens.append(Token(NUMBER, text, line, c))
            at_line_start = False
            continue
        at_line_start = False
        if ch.isalpha() or ch == "_" or ch == "$":
            start = i
            while i < n and (source[i].isalnum() or source[i] in "_$"):
                i += 1
            text = source[start:i]
            upper = text.upper()
            if upper == "REM" and (i >= n or not (source[i].isalnum() or source[i] == "_")):
                while i < n and source[i] != "\n":
                    i += 1
                continue
            tokens.append(Token(NAME, text, line, c, upper))
            continue
        if ch == '"':
            start = i
            i += 1
            chars: list[str] = []
            parts: list[str | Piece] = []
            while True:
                if i >= n or source[i] == "\n":
                    raise error("unclosed string", start)
                cur = source[i]
                if cur == '"':
                    if source[i + 1 : i + 2] == '"':
                        chars.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                if cur == "$" and source[i + 1 : i + 2] == "{":
                    if chars:
                        parts.append("".join(chars))
                        chars = []
                    expr_start = i + 2
                    i = expr_start
                    while True:  # the expression runs to its "}"; strings inside it are copied whole
                        if i >= n or source[i] == "\n":
                            raise error("unclosed ${ in string", expr_start - 2)
                        if source[i] == "}":
                            break
                        if source[i] == '"':
                            end = source.find('"', i + 1)
                            if end < 0 or "\n" in source[i:end]:
                                raise error("unclosed string", i)
                            i = end + 1
                            continue
                        i += 1
                    parts.append(Piece(source[expr_start:i], line, expr_start - line_start + 1))
                    i += 1
                    continue
                chars.append(cur)
                i += 1
            if chars or not parts:
                parts.append("".join(chars))
            text = "".join(p if isinstance(p, str) else "${" + p.source + "}" for p in parts)
            tokens.append(Token(STRING, text, line, c, "", tuple(parts)))
            continue
        two = source[i : i + 2]
        if two in _TWO_CHAR_OPS:
            tokens.append(Token(OP, "<>" if two == "!=" else two, line, c, two))
            i += 2
            continue
        if ch in _ONE_CHAR_OPS:
            tokens.append(Token(OP, ch, line, c, ch))
            i += 1
            continue
        raise error(f"unexpected character {ch!r}", i)
    tokens.append(Token(NEWLINE, "\n", line, i - line_start + 1))
    tokens.append(Token(EOF, "", line, i - line_start + 1))
    return tokens
