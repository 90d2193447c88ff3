"""The GB BASIC syntax tree: plain dataclasses, one per expression and statement kind.

The parser builds it, the compiler flattens it into instructions; nothing here runs.
Every node keeps its source line (and expressions their column) for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- expressions ---------------------------------------------------------------------


@dataclass(slots=True)
class Expr:
    line: int
    col: int


@dataclass(slots=True)
class Literal(Expr):
    value: Any  # None, bool, int, float or str


@dataclass(slots=True)
class Text(Expr):
    """A string with ``${expr}`` parts: the parts are strings and expressions, in order."""

    parts: list[str | Expr]


@dataclass(slots=True)
class Name(Expr):
    name: str  # upper-cased: variables are case-insensitive like keywords


@dataclass(slots=True)
class Index(Expr):
    target: Expr
    index: Expr


@dataclass(slots=True)
class Member(Expr):
    target: Expr
    name: str  # as written: object fields keep their case


@dataclass(slots=True)
class Unary(Expr):
    op: str  # "-", "+", "NOT"
    operand: Expr


@dataclass(slots=True)
class Binary(Expr):
    op: str  # + - * / \ ^ MOD & = <> < > <= >= AND OR
    left: Expr
    right: Expr


@dataclass(slots=True)
class Call(Expr):
    """A built-in or a FUNCTION of the dialog, called by name with arguments."""

    name: str  # upper-cased
    args: list[Expr]


@dataclass(slots=True)
class ListOf(Expr):
    items: list[Expr]


@dataclass(slots=True)
class SelectFrom(Expr):
    """``SELECT a, b FROM list [WHERE cond] [ORDER BY field [DESC]]``: a query over a list of objects."""

    fields: list[str]  # empty: every field (``*``)
    source: Expr
    where: Expr | None
    order_by: str | None
    descending: bool


# --- statements ----------------------------------------------------------------------


@dataclass(slots=True)
class Stmt:
    line: int
    dialog: str = field(default="", kw_only=True)  # the dialog the statement was written in (INCLUDEs differ)


@dataclass(slots=True)
class Assign(Stmt):
    target: Expr  # Name, Index or Member
    value: Expr


@dataclass(slots=True)
class Keyword(Stmt):
    """A statement that calls a built-in: ``TALK x``, ``SAVE "t", a, b``, ``SET HEADER k AS v``.

    ``target``, when set, receives the built-in's result (``x = FIND ...`` is an Assign of a
    Call instead; this is for statements that change a variable in place, like ``SORT``).
    """

    name: str  # the built-in's registry name
    args: list[Expr]
    target: Expr | None = None


@dataclass(slots=True)
class If(Stmt):
    branches: list[tuple[Expr, list[Stmt]]]  # IF and each ELSEIF
    otherwise: list[Stmt]


@dataclass(slots=True)
class SelectCase(Stmt):
    subject: Expr
    cases: list[tuple[list[Expr], list[Stmt]]]
    otherwise: list[Stmt]


@dataclass(slots=True)
class ForRange(Stmt):
    var: str
    start: Expr
    end: Expr
    step: Expr | None
    body: list[Stmt]


@dataclass(slots=True)
class ForEach(Stmt):
    var: str
    iterable: Expr
    body: list[Stmt]


@dataclass(slots=True)
class DoLoop(Stmt):
    """``DO [WHILE|UNTIL c] ... LOOP [WHILE|UNTIL c]``: ``until`` negates the condition."""

    cond: Expr | None
    until: bool
    at_end: bool  # the condition is tested after the body (``LOOP WHILE c``)
    body: list[Stmt]


@dataclass(slots=True)
class Exit(Stmt):
    what: str  # "FOR", "DO", "FUNCTION" or "" (the dialog)


@dataclass(slots=True)
class Return(Stmt):
    value: Expr | None


@dataclass(slots=True)
class CallStmt(Stmt):
    """``CALL f(a, b)`` or ``x = f(a)`` at the start of a statement: a FUNCTION that may HEAR."""

    name: str
    args: list[Expr]
    target: Expr | None = None


@dataclass(slots=True)
class Hear(Stmt):
    target: Expr
    kind: str  # "" (any text), "EMAIL", "INTEGER", ... or "MENU" (options) or "LIST" (options from a value)
    options: list[Expr] = field(default_factory=list)


@dataclass(slots=True)
class TableField:
    name: str
    type: str  # string, integer, number, double, date, boolean, guid, or another table's name
    size: int | None = None
    required: bool = False
    key: bool = False
    unique: bool = False
    auto: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "required": self.required,
            "key": self.key,
            "unique": self.unique,
            "auto": self.auto,
        }


@dataclass(slots=True)
class Table(Stmt):
    name: str
    fields: list[TableField]


@dataclass(slots=True)
class Function:
    name: str
    params: list[str]
    body: list[Stmt]
    line: int
    dialog: str = ""


@dataclass(slots=True)
class Program:
    """A parsed dialog: its statements, its FUNCTIONs, its ``SET SCHEDULE`` lines, the files it INCLUDEd."""

    dialog: str
    body: list[Stmt]
    functions: dict[str, Function]
    schedules: list[str]
    includes: list[str]
    tables: list[Table]
