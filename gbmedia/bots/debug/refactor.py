"""Source transformations for the debugger's ``refactor``: rename a variable or FUNCTION, reformat.

Both work on tokens, never on the raw text with patterns: the tokenizer knows where
strings, comments and ``${...}`` interpolations are, so a string that contains the
name keeps it, a comment keeps its words, and a field after ``.`` (``item.total``)
is not the variable ``total``. Both keep every statement on its line, and both are
checked the strong way: the result is parsed again and its syntax tree must equal the
original's (with the name replaced, for a rename), ignoring only columns. A change
that would alter what the dialog does is refused instead of returned.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.parser import CLOSERS, SETTINGS, STATEMENTS, VALUE_FORMS, Loader, parse
from gbmedia.bots.syntax import Program
from gbmedia.bots.tokens import NAME, NEWLINE, OP, STRING, Piece, Token, tokenize

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
INDENT = "    "

# Words written upper-case by reformat: the language's keywords and statement words.
KEYWORDS = {
    *(w for words in (*STATEMENTS, *VALUE_FORMS, *SETTINGS, *CLOSERS) for w in words),
    *"IF THEN ELSE ELSEIF END FOR EACH IN TO STEP NEXT DO WHILE UNTIL LOOP WEND FUNCTION SUB RETURN".split(),
    *"CALL EXIT SELECT CASE HEAR INPUT AS AND OR NOT MOD NEW OBJECT ARRAY INCLUDE SET SCHEDULE TABLE".split(),
    *"SAVE SORT APPEND BY FROM WHERE ORDER DESC TRUE FALSE NULL".split(),
}
_OPENERS = {"FOR", "DO", "WHILE", "FUNCTION", "SUB", "TABLE"}
_CLOSERS = {("NEXT",), ("LOOP",), ("WEND",), ("END", "IF"), ("END", "FUNCTION"), ("END", "SUB"), ("END", "TABLE")}


class RefactorError(ValueError):
    """A refactoring that cannot be done safely (a name taken, or one the change would break)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the check: same tree, columns aside --------------------------------------------------


def shape(node: Any, renames: dict[str, str] | None = None) -> Any:
    """A syntax tree as plain tuples without columns; names in ``renames`` (upper-case) replaced."""
    renames = renames or {}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        kind = type(node).__name__
        out: list[Any] = [kind]
        for f in dataclasses.fields(node):
            if f.name == "col":
                continue
            value = getattr(node, f.name)
            if f.name in ("name", "var") and kind not in ("Member", "Table", "TableField") and isinstance(value, str):
                value = renames.get(value.upper(), value)
            elif f.name == "params" and isinstance(value, list):
                value = [renames.get(p.upper(), p) for p in value]
            elif f.name == "functions" and isinstance(value, dict):
                value = {renames.get(k, k): shape(v, renames) for k, v in value.items()}
                out.append(tuple(sorted(value.items())))
                continue
            out.append(shape(value, renames))
        return tuple(out)
    if isinstance(node, list | tuple):
        return tuple(shape(v, renames) for v in node)
    if isinstance(node, dict):
        return tuple(sorted((k, shape(v, renames)) for k, v in node.items()))
    return node


_NAMED = {"Name", "Call", "CallStmt", "ForRange", "ForEach", "Function"}


def _names_in(program: Program) -> set[str]:
    """Every variable and FUNCTION name the dialog uses (upper-case)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            kind = type(node).__name__
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if f.name in ("name", "var") and kind in (
                    "Name",
                    "Call",
                    "CallStmt",
                    "ForRange",
                    "ForEach",
                    "Function",
                ):
                    found.add(str(value).upper())
                elif f.name == "params" and kind == "Function":
                    found.update(p.upper() for p in value)
                else:
                    walk(value)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(program.body)
    walk(list(program.functions.values()))
    return found


# --- tokens with their places -------------------------------------------------------------


def _all_tokens(source: str, dialog: str) -> list[Token]:
    """The source's tokens, with each string's ``${...}`` expressions' tokens after the string."""
    out: list[Token] = []
    for token in tokenize(source, dialog=dialog):
        out.append(token)
        if token.kind == STRING:
            for part in token.parts:
                if isinstance(part, Piece):
                    out.extend(t for t in tokenize(part.source, part.line, part.col, dialog, fragment=True))
    return out


def _replace(source: str, edits: list[tuple[int, int, int, str]]) -> str:
    """Apply (line, col, length, text) edits; columns are 1-based as the tokenizer counts them."""
    lines = source.split("\n")
    for line, col, length, text in sorted(edits, reverse=True):
        row = lines[line - 1]
        lines[line - 1] = row[: col - 1] + text + row[col - 1 + length :]
    return "\n".join(lines)


def rename(source: str, old: str, new: str, dialog: str = "dialog", loader: Loader | None = None) -> str:
    """Rename the variable or FUNCTION ``old`` to ``new`` everywhere it is one; the new source."""
    if not IDENTIFIER.fullmatch(old) or not IDENTIFIER.fullmatch(new):
        raise RefactorError("refactor_invalid_name", "a name is a letter or _ then letters, digits or _")
    before = parse(source, dialog, loader)
    names = _names_in(before)
    old_u, new_u = old.upper(), new.upper()
    if old_u not in names:
        raise RefactorError("refactor_name_unknown", f"the dialog has no variable or FUNCTION {old}")
    if new_u != old_u and (new_u in names or new_u in KEYWORDS or REGISTRY.get(new_u) is not None):
        raise RefactorError("refactor_name_taken", f"{new} is already a name in this dialog or of the language")
    tokens = _all_tokens(source, dialog)
    edits = []
    for i, token in enumerate(tokens):
        if token.kind != NAME or token.upper != old_u:
            continue
        if i > 0 and tokens[i - 1].kind == OP and tokens[i - 1].text == "." and tokens[i - 1].line == token.line:
            continue  # a field: item.old is not the variable old
        edits.append((token.line, token.col, len(token.text), new))
    result = _replace(source, edits)
    try:
        after = parse(result, dialog, loader)
    except BasicSyntaxError as exc:  # the name was also a keyword somewhere
        raise RefactorError("refactor_unsafe", f"renaming {old} would break the dialog: {exc}") from None
    if shape(after) != shape(before, {old_u: new_u}):
        raise RefactorError("refactor_unsafe", f"{old} is also used as something else than a name; rename it by hand")
    return result


# --- reformat -----------------------------------------------------------------------------


def _line_words(tokens: list[Token]) -> list[str]:
    return [t.upper for t in tokens if t.kind == NAME]


def _indent_change(tokens: list[Token]) -> tuple[int, int]:
    """How a line moves the indentation: (before it, after it)."""
    words = _line_words(tokens)
    if not tokens or not words or tokens[0].kind != NAME:
        return 0, 0
    first = tokens[0].upper
    pair = tuple(words[:2])
    if pair in _CLOSERS or (first,) in _CLOSERS:
        return -1, 0
    if pair == ("END", "SELECT"):
        return -2, 0
    if first in ("ELSE", "ELSEIF"):
        return -1, 1
    if first == "CASE":
        return -1, 1
    if pair == ("SELECT", "CASE"):
        return 0, 2  # its CASE lines one deeper, their statements two
    if first == "IF":
        return 0, 1 if tokens[-1].kind == NAME and tokens[-1].upper == "THEN" else 0
    if first in _OPENERS and not (len(tokens) > 1 and tokens[1].kind == OP and tokens[1].text in ("=", "[", ".")):
        return 0, 1  # FOR, DO, WHILE, FUNCTION, SUB, TABLE
    return 0, 0


def reformat(source: str, dialog: str = "dialog", loader: Loader | None = None) -> str:
    """Keywords upper-case, each line indented by its block; comments, strings and line breaks kept."""
    before = parse(source, dialog, loader)  # a dialog that does not parse is not reformatted
    tokens = tokenize(source, dialog=dialog)
    by_line: dict[int, list[Token]] = {}
    for token in tokens:
        if token.kind not in (NEWLINE, "EOF"):
            by_line.setdefault(token.line, []).append(token)
    lines = source.split("\n")
    cased = _case_keywords(source, tokens).split("\n")
    indents: list[int] = []
    level, continued = 0, False
    for number, raw in enumerate(lines, start=1):
        if continued:
            indents.append(level + 1)
        else:
            before_delta, after_delta = _indent_change(by_line.get(number, []))
            level = max(0, level + before_delta)
            indents.append(level)
            level += after_delta
        continued = raw.rstrip().endswith("_") and bool(by_line.get(number))

    def lay_out(texts: list[str]) -> str:
        return "\n".join(INDENT * n + t.strip() if t.strip() else "" for n, t in zip(indents, texts, strict=True))

    result = lay_out(cased)
    try:
        same = shape(parse(result, dialog, loader)) == shape(before)
    except BasicSyntaxError:  # a keyword word that was a name somewhere
        same = False
    return result if same else lay_out(lines)  # whitespace at a line's start never changes a statement


def _case_keywords(source: str, tokens: list[Token]) -> str:
    """Keywords upper-cased, except a field after ``.`` and the lines inside TABLE ... END TABLE."""
    edits = []
    in_table = False
    for i, token in enumerate(tokens):
        if token.kind != NAME:
            continue
        at_line_start = i == 0 or tokens[i - 1].kind == NEWLINE
        if at_line_start and token.upper == "TABLE":
            in_table = True
        elif at_line_start and token.upper == "END" and tokens[i + 1].upper == "TABLE":
            in_table = False
        elif in_table:
            continue  # a field's name and type are as written
        if token.upper not in KEYWORDS or token.text == token.upper:
            continue
        if i > 0 and tokens[i - 1].kind == OP and tokens[i - 1].text == ".":
            continue
        edits.append((token.line, token.col, len(token.text), token.upper))
    return _replace(source, edits)
