"""The syntax tree flattened into instructions, so a run can stop at a HEAR and go on elsewhere.

A tree walk keeps its place on the Python stack, which cannot be saved; a list of
instructions with jumps keeps it in a program counter per frame, which can. So each
FUNCTION and the dialog's body become a list of instructions, loops keep their hidden
state (a FOR's end and step, a FOR EACH's items and position) in their frame's slots,
and a suspended run is a few integers and JSON values (``machine.Run.snapshot``).

Expressions cannot suspend, so they are compiled into Python closures (no ``eval``, no
text: functions built from the tree), plain functions where nothing in them awaits and
coroutine functions where something does (HTTP, tables, a FUNCTION's call).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gbmedia.bots.errors import BasicSyntaxError, Fault
from gbmedia.bots.lib_data import field_of
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.parser import Loader, parse
from gbmedia.bots.syntax import (
    Assign,
    Binary,
    Call,
    CallStmt,
    DoLoop,
    Exit,
    Expr,
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
    Program,
    Return,
    SelectCase,
    SelectFrom,
    Stmt,
    Table,
    Text,
    Unary,
)
from gbmedia.bots.values import arithmetic, compare, equal, kind_of, to_number, to_text, truthy

# An evaluator: (function of the machine, whether it is a coroutine function).
Ev = tuple[Callable[[Any], Any], bool]
Setter = tuple[Callable[[Any, Any], Any], bool]


@dataclass(slots=True)
class Ins:
    line: int
    dialog: str = field(default="", kw_only=True)  # where the statement was written: the dialog or an INCLUDEd one


@dataclass(slots=True)
class IAssign(Ins):
    value: Ev
    setter: Setter


@dataclass(slots=True)
class IKeyword(Ins):
    name: str
    args: list[Ev]
    setter: Setter | None


@dataclass(slots=True)
class IJump(Ins):
    to: int


@dataclass(slots=True)
class IJumpIf(Ins):
    cond: Ev
    to: int
    when: bool  # jump when the condition's truth is this


@dataclass(slots=True)
class IForStart(Ins):
    var: str
    start: Ev
    end: Ev
    step: Ev | None
    slot: str


@dataclass(slots=True)
class IForTest(Ins):
    var: str
    slot: str
    to: int  # the loop's exit


@dataclass(slots=True)
class IForStep(Ins):
    var: str
    slot: str
    to: int  # the loop's test


@dataclass(slots=True)
class IEachStart(Ins):
    items: Ev
    slot: str


@dataclass(slots=True)
class IEachNext(Ins):
    var: str
    slot: str
    to: int


@dataclass(slots=True)
class IHear(Ins):
    setter: Setter
    kind: str
    options: list[Ev]


@dataclass(slots=True)
class ICall(Ins):
    name: str
    args: list[Ev]
    setter: Setter | None


@dataclass(slots=True)
class IReturn(Ins):
    value: Ev | None


@dataclass(slots=True)
class IEnd(Ins):
    pass


@dataclass(slots=True)
class ITable(Ins):
    name: str
    fields: list[dict[str, Any]]


@dataclass
class Unit:
    name: str
    params: list[str]
    code: list[Ins]
    starts: frozenset[int] = frozenset()  # where each statement's first instruction is: a debugger's stopping points


@dataclass
class Compiled:
    """A dialog ready to run: its units (``""`` is the body), schedules, and a fingerprint of its code."""

    dialog: str
    units: dict[str, Unit]
    schedules: list[str]
    tables: list[str]
    fingerprint: str
    program: Program = field(repr=False)


def load(source: str, dialog: str = "dialog", loader: Loader | None = None) -> Compiled:
    """Parse and compile a dialog: syntax errors (BasicSyntaxError) come from here, before anything runs."""
    return compile_program(parse(source, dialog, loader))


def compile_program(program: Program) -> Compiled:
    compiler = _Compiler(program)
    units = {"": Unit("", [], compiler.unit(program.body, function=False), frozenset(compiler.starts))}
    for name, function in program.functions.items():
        code = compiler.unit(function.body, function=True)
        units[name] = Unit(name, function.params, code, frozenset(compiler.starts))
    fingerprint = hashlib.sha256(repr((program.body, sorted(program.functions.items()))).encode()).hexdigest()[:16]
    return Compiled(program.dialog, units, program.schedules, [t.name for t in program.tables], fingerprint, program)


def _sync(ev: Ev) -> Callable[[Any], Any]:
    return ev[0]


def _awaitable(ev: Ev) -> Callable[[Any], Any]:
    fn, is_async = ev
    if is_async:
        return fn

    async def wrapped(m: Any) -> Any:
        return fn(m)

    return wrapped


def get_index(container: Any, index: Any) -> Any:
    if isinstance(container, list):
        i = int(to_number(index, "a list index"))
        if not -len(container) <= i < len(container):
            raise Fault(f"index {i} is outside the list (it has {len(container)} items, from 0)")
        return container[i]
    if isinstance(container, dict):
        return field_of(container, to_text(index))
    if isinstance(container, str):
        i = int(to_number(index, "a text index"))
        if not 0 <= i < len(container):
            raise Fault(f"index {i} is outside the text")
        return container[i]
    if container is None:
        raise Fault("cannot take an item of an empty value")
    raise Fault(f"cannot take an item of a {kind_of(container)}")


def get_member(container: Any, name: str) -> Any:
    if isinstance(container, dict):
        return field_of(container, name)
    if isinstance(container, list) and name.upper() in ("LENGTH", "COUNT"):
        return len(container)
    if container is None:
        return None
    raise Fault(f"a {kind_of(container)} has no field {name}")


class _Compiler:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.code: list[Ins] = []
        self.loops: list[tuple[str, list[IJump]]] = []
        self.slots = 0
        self.in_function = False
        self.dialog = ""  # the dialog of the statement being compiled
        self.starts: set[int] = set()  # the current unit's statement starts

    def error(self, message: str, line: int, col: int | None = None) -> BasicSyntaxError:
        return BasicSyntaxError(message, line, col, self.dialog or self.program.dialog)

    def unit(self, body: list[Stmt], function: bool) -> list[Ins]:
        self.code, self.loops, self.slots, self.in_function = [], [], 0, function
        self.starts = set()
        self.block(body)
        return self.code

    def emit(self, ins: Ins) -> int:
        ins.dialog = self.dialog
        self.code.append(ins)
        return len(self.code) - 1

    def block(self, body: list[Stmt]) -> None:
        for stmt in body:
            outer, self.dialog = self.dialog, stmt.dialog or self.dialog
            self.starts.add(len(self.code))
            self.statement(stmt)
            self.dialog = outer

    def branches(self, line: int, tests: list[tuple[Callable[[], Ev], list[Stmt]]], otherwise: list[Stmt]) -> None:
        """IF/ELSEIF and SELECT CASE: the first branch whose test holds runs, else ``otherwise``.

        Each test is compiled where its branch starts (``tests`` holds makers, not conditions).
        """
        ends: list[IJump] = []
        for make_test, body in tests:
            test = IJumpIf(line, make_test(), -1, False)
            self.emit(test)
            self.block(body)
            jump = IJump(line, -1)
            self.emit(jump)
            ends.append(jump)
            test.to = len(self.code)
        self.block(otherwise)
        for jump in ends:
            jump.to = len(self.code)

    def slot(self) -> str:
        self.slots += 1
        return f"#{self.slots}"

    # --- statements -----------------------------------------------------------------

    def statement(self, stmt: Stmt) -> None:
        if isinstance(stmt, Assign):
            if isinstance(stmt.value, Call) and stmt.value.name in self.program.functions:
                self.emit(
                    ICall(stmt.line, stmt.value.name, [self.expr(a) for a in stmt.value.args], self.setter(stmt.target))
                )
                self.check_call(stmt.value.name, len(stmt.value.args), stmt.line)
                return
            self.emit(IAssign(stmt.line, self.expr(stmt.value), self.setter(stmt.target)))
        elif isinstance(stmt, Keyword):
            self.emit(
                IKeyword(
                    stmt.line,
                    stmt.name,
                    [self.expr(a) for a in stmt.args],
                    self.setter(stmt.target) if stmt.target else None,
                )
            )
        elif isinstance(stmt, If):
            self.branches(
                stmt.line, [(lambda c=cond: self.expr(c), body) for cond, body in stmt.branches], stmt.otherwise
            )
        elif isinstance(stmt, SelectCase):
            slot = self.slot()
            self.emit(IAssign(stmt.line, self.expr(stmt.subject), self.hidden_setter(slot)))
            cases = [(lambda v=values: self.case_test(slot, v), body) for values, body in stmt.cases]
            self.branches(stmt.line, cases, stmt.otherwise)
        elif isinstance(stmt, ForRange):
            slot = self.slot()
            self.emit(
                IForStart(
                    stmt.line,
                    stmt.var,
                    self.expr(stmt.start),
                    self.expr(stmt.end),
                    self.expr(stmt.step) if stmt.step else None,
                    slot,
                )
            )
            test = IForTest(stmt.line, stmt.var, slot, -1)
            test_at = self.emit(test)
            self.loop("FOR", stmt.body)
            self.emit(IForStep(stmt.line, stmt.var, slot, test_at))
            test.to = len(self.code)
            self.close_loop()
        elif isinstance(stmt, ForEach):
            slot = self.slot()
            self.emit(IEachStart(stmt.line, self.expr(stmt.iterable), slot))
            nxt = IEachNext(stmt.line, stmt.var, slot, -1)
            next_at = self.emit(nxt)
            self.loop("FOR", stmt.body)
            self.emit(IJump(stmt.line, next_at))
            nxt.to = len(self.code)
            self.close_loop()
        elif isinstance(stmt, DoLoop):
            top = len(self.code)
            test = None
            if stmt.cond is not None and not stmt.at_end:
                test = IJumpIf(stmt.line, self.expr(stmt.cond), -1, stmt.until)
                self.emit(test)
            self.loop("DO", stmt.body)
            if stmt.cond is not None and stmt.at_end:
                self.emit(IJumpIf(stmt.line, self.expr(stmt.cond), top, not stmt.until))
            else:
                self.emit(IJump(stmt.line, top))
            if test is not None:
                test.to = len(self.code)
            self.close_loop()
        elif isinstance(stmt, Exit):
            if stmt.what in ("FOR", "DO"):
                for kind, exits in reversed(self.loops):
                    if kind == stmt.what:
                        jump = IJump(stmt.line, -1)
                        self.emit(jump)
                        exits.append(jump)
                        return
                raise self.error(f"EXIT {stmt.what} outside a {stmt.what} loop", stmt.line)
            if stmt.what == "FUNCTION":
                if not self.in_function:
                    raise self.error("EXIT FUNCTION outside a FUNCTION", stmt.line)
                self.emit(IReturn(stmt.line, None))
            else:
                self.emit(IEnd(stmt.line))
        elif isinstance(stmt, Return):
            if self.in_function:
                self.emit(IReturn(stmt.line, self.expr(stmt.value) if stmt.value else None))
            elif stmt.value is not None:
                raise self.error("RETURN with a value outside a FUNCTION", stmt.line)
            else:
                self.emit(IEnd(stmt.line))
        elif isinstance(stmt, CallStmt):
            name = stmt.name.upper()
            if name not in self.program.functions:
                builtin = REGISTRY.get(name)
                if builtin is None:
                    raise self.error(f"unknown FUNCTION {stmt.name}", stmt.line)
                if not builtin.accepts(len(stmt.args)):
                    raise self.error(f"{name} takes {builtin.arity_text()}, got {len(stmt.args)}", stmt.line)
                self.emit(
                    IKeyword(
                        stmt.line,
                        builtin.name,
                        [self.expr(a) for a in stmt.args],
                        self.setter(stmt.target) if stmt.target else None,
                    )
                )
                return
            self.check_call(name, len(stmt.args), stmt.line)
            self.emit(
                ICall(
                    stmt.line,
                    name,
                    [self.expr(a) for a in stmt.args],
                    self.setter(stmt.target) if stmt.target else None,
                )
            )
        elif isinstance(stmt, Hear):
            self.emit(IHear(stmt.line, self.setter(stmt.target), stmt.kind, [self.expr(o) for o in stmt.options]))
        elif isinstance(stmt, Table):
            self.emit(ITable(stmt.line, stmt.name, [f.to_json() for f in stmt.fields]))
        else:  # pragma: no cover - every statement the parser makes is handled above
            raise self.error(f"cannot compile {type(stmt).__name__}", stmt.line)

    def check_call(self, name: str, n: int, line: int) -> None:
        params = self.program.functions[name].params
        if n != len(params):
            raise self.error(
                f"FUNCTION {name} takes {len(params)} argument{'s' if len(params) != 1 else ''}, got {n}", line
            )

    def loop(self, kind: str, body: list[Stmt]) -> None:
        self.loops.append((kind, []))
        self.block(body)

    def close_loop(self) -> None:
        _, exits = self.loops.pop()
        for jump in exits:
            jump.to = len(self.code)

    def case_test(self, slot: str, values: list[Expr]) -> Ev:
        evs = [self.expr(v) for v in values]
        if any(a for _, a in evs):
            fns = [_awaitable(e) for e in evs]

            async def test_async(m: Any) -> bool:
                subject = m.frame.hidden[slot]
                for fn in fns:
                    if equal(subject, await fn(m)):
                        return True
                return False

            return test_async, True
        sync = [f for f, _ in evs]
        return (lambda m: any(equal(m.frame.hidden[slot], f(m)) for f in sync)), False

    # --- targets --------------------------------------------------------------------

    def hidden_setter(self, slot: str) -> Setter:
        def set_hidden(m: Any, value: Any) -> None:
            m.frame.hidden[slot] = value

        return set_hidden, False

    def setter(self, target: Expr) -> Setter:
        if isinstance(target, Name):
            name = target.name
            return (lambda m, value: m.assign(name, value)), False
        if isinstance(target, Index):
            container, is_async = self.expr(target.target)
            index, index_async = self.expr(target.index)

            def put(holder: Any, key: Any, value: Any) -> None:
                if isinstance(holder, list):
                    i = int(to_number(key, "a list index"))
                    if i == len(holder):
                        holder.append(value)  # list[UBOUND(list)] = x adds at the end
                    elif -len(holder) <= i < len(holder):
                        holder[i] = value
                    else:
                        raise Fault(f"index {i} is outside the list (it has {len(holder)} items, from 0)")
                elif isinstance(holder, dict):
                    holder[to_text(key)] = value
                else:
                    raise Fault(f"cannot set an item of a {kind_of(holder)}")

            if is_async or index_async:
                c, k = _awaitable((container, is_async)), _awaitable((index, index_async))

                async def set_async(m: Any, value: Any) -> None:
                    put(await c(m), await k(m), value)

                return set_async, True
            return (lambda m, value: put(container(m), index(m), value)), False
        if isinstance(target, Member):
            container, is_async = self.expr(target.target)
            name = target.name

            def put_field(holder: Any, value: Any) -> None:
                if not isinstance(holder, dict):
                    raise Fault(f"cannot set field {name} of a {kind_of(holder)} (make it with NEW OBJECT)")
                existing = next((k for k in holder if str(k).casefold() == name.casefold()), name)
                holder[existing] = value

            if is_async:

                async def set_field_async(m: Any, value: Any) -> None:
                    put_field(await container(m), value)

                return set_field_async, True
            return (lambda m, value: put_field(container(m), value)), False
        raise self.error(
            "only a variable, an item or a field can be assigned", target.line, target.col
        )  # pragma: no cover

    # --- expressions ----------------------------------------------------------------

    def expr(self, e: Expr) -> Ev:
        if isinstance(e, Literal):
            value = e.value
            return (lambda m: value), False
        if isinstance(e, Name):
            name = e.name
            return (lambda m: m.lookup(name)), False
        if isinstance(e, Text):
            parts: list[Ev] = [((lambda m, s=p: s), False) if isinstance(p, str) else self.expr(p) for p in e.parts]
            if any(a for _, a in parts):
                fns = [_awaitable(p) for p in parts]

                async def text_async(m: Any) -> str:
                    return m.check("".join([to_text(await f(m)) for f in fns]))

                return text_async, True
            sync = [f for f, _ in parts]
            return (lambda m: m.check("".join([to_text(f(m)) for f in sync]))), False
        if isinstance(e, Index):
            return self.combine([e.target, e.index], lambda c, i: get_index(c, i))
        if isinstance(e, Member):
            name = e.name
            return self.combine([e.target], lambda c: get_member(c, name))
        if isinstance(e, Unary):
            if e.op == "NOT":
                return self.combine([e.operand], lambda v: not truthy(v))
            if e.op == "-":
                return self.combine([e.operand], lambda v: -to_number(v))
            return self.combine([e.operand], lambda v: to_number(v))
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, ListOf):
            return self.combine(e.items, lambda *items: list(items))
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, SelectFrom):
            return self.select_from(e)
        raise self.error(f"cannot compile {type(e).__name__}", e.line, e.col)  # pragma: no cover

    def combine(self, children: list[Expr], op: Callable[..., Any]) -> Ev:
        evs = [self.expr(c) for c in children]
        if any(a for _, a in evs):
            fns = [_awaitable(ev) for ev in evs]

            async def combined_async(m: Any) -> Any:
                return op(*[await f(m) for f in fns])

            return combined_async, True
        if len(evs) == 1:
            ((f0, _),) = evs
            return (lambda m: op(f0(m))), False
        if len(evs) == 2:
            (f0, _), (f1, _) = evs
            return (lambda m: op(f0(m), f1(m))), False
        sync = [f for f, _ in evs]
        return (lambda m: op(*[f(m) for f in sync])), False

    def binary(self, e: Binary) -> Ev:
        op = e.op
        if op in ("AND", "OR"):
            left, right = self.expr(e.left), self.expr(e.right)
            if left[1] or right[1]:
                lf, rf = _awaitable(left), _awaitable(right)
                if op == "AND":

                    async def and_async(m: Any) -> bool:
                        return truthy(await lf(m)) and truthy(await rf(m))

                    return and_async, True

                async def or_async(m: Any) -> bool:
                    return truthy(await lf(m)) or truthy(await rf(m))

                return or_async, True
            lf_s, rf_s = left[0], right[0]
            if op == "AND":
                return (lambda m: truthy(lf_s(m)) and truthy(rf_s(m))), False
            return (lambda m: truthy(lf_s(m)) or truthy(rf_s(m))), False
        if op in ("=", "<>", "<", ">", "<=", ">="):
            return self.combine([e.left, e.right], lambda a, b: compare(op, a, b))
        if op == "&":
            return self.combine([e.left, e.right], lambda a, b: to_text(a) + to_text(b))
        if op == "+":

            def plus(a: Any, b: Any) -> Any:
                if type(a) is int and type(b) is int:  # the loop counter's fast path
                    return a + b
                return arithmetic("+", a, b)

            return self.combine([e.left, e.right], plus)
        return self.combine([e.left, e.right], lambda a, b: arithmetic(op, a, b))

    def call(self, e: Call) -> Ev:
        name = e.name.upper()
        args = [self.expr(a) for a in e.args]
        if name in self.program.functions:
            self.check_call(name, len(args), e.line)
            fns = [_awaitable(a) for a in args]

            async def call_function(m: Any) -> Any:
                return await m.call_inline(name, [await f(m) for f in fns])

            return call_function, True
        builtin = REGISTRY.get(name)
        if builtin is None:
            raise self.error(f"unknown function {e.name}", e.line, e.col)
        if builtin.statement_only:
            raise self.error(f"{e.name} is a statement and gives no value", e.line, e.col)
        if not builtin.accepts(len(args)):
            raise self.error(f"{e.name} takes {builtin.arity_text()}, got {len(args)}", e.line, e.col)
        fn = builtin.fn
        if builtin.is_async or any(a for _, a in args):
            afns = [_awaitable(a) for a in args]

            async def call_async(m: Any) -> Any:
                values = [await f(m) for f in afns]
                result = fn(m.ctx, *values)
                if builtin.is_async:
                    result = await result
                return m.check(result)

            return call_async, True
        sync = [f for f, _ in args]
        return (lambda m: m.check(fn(m.ctx, *[f(m) for f in sync]))), False

    def select_from(self, e: SelectFrom) -> Ev:
        source = _awaitable(self.expr(e.source))
        where = _awaitable(self.expr(e.where)) if e.where is not None else None
        fields, order, descending = e.fields, e.order_by, e.descending

        async def query(m: Any) -> list[Any]:
            rows = await source(m)
            if rows is None:
                rows = []
            if not isinstance(rows, list):
                raise Fault(f"SELECT ... FROM takes a list, not {kind_of(rows)}")
            chosen = []
            for row in rows:
                if where is not None:
                    with m.row_scope(row):
                        if not truthy(await where(m)):
                            continue
                chosen.append(row)
            if order:
                chosen = REGISTRY.entries["sortBy"].fn(m.ctx, chosen, order)
                if descending:
                    chosen.reverse()
            if fields:
                chosen = [{f: field_of(row, f) for f in fields} for row in chosen]
            return m.check(chosen)

        return query, True
