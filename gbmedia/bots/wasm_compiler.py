"""GB BASIC's syntax tree compiled to a WebAssembly module: the compiled engine's compiler.

The module is written as WebAssembly text and assembled by wasmtime's own assembler
(``wasmtime.wat2wasm``). Its design, documented for authors in docs/bots.md ("Compiled
engine"):

- Values are one ``i64`` each. An even number is a whole number ``n`` stored as
  ``n << 1`` (|n| < 2^62); an odd number is a handle ``h << 1 | 1`` into the run's host
  table of Python values (text, fractions, lists, objects, dates as text, bigger whole
  numbers). Handles 0..3 are empty, false, true and "never assigned"; the dialog's
  constants follow. Whole-number arithmetic and comparisons run in WebAssembly, with
  an overflow check that hands the rare overflow to the host, which computes it as the
  interpreter does (Python's unbounded integers); everything else is an import.
- Every built-in and keyword is reached through a few imports that take the
  registry's index of the built-in: the one registry the interpreter uses.
- The dialog's variables are WebAssembly globals; a FUNCTION's parameters and every
  loop's hidden state live in a shadow stack in linear memory, so the host can read
  them to persist a run at a HEAR, and to collect dead handles between statements.
- A unit (the body, each FUNCTION) is a dispatch loop over blocks, ``$pc`` choosing the
  block: HEAR and a FUNCTION called as a statement start a block, so a run can stop
  there and be re-entered there. Statements with no HEAR and no such call inside
  (loops, IFs) compile to plain structured WebAssembly, the fast path.
- The statement being run is the global ``stmt``: the custom section ``gbmedia.lines``
  maps it to the source line (and dialog) for errors, and with ``debug=True`` each
  statement also calls the ``line`` import (a debugger's hook) with its unit, the call
  depth (1 in the body, 2 in a FUNCTION it called, ...) and the unit's frame address in
  the shadow stack, where a FUNCTION's parameters are (their names: the meta's units).

What is not compiled yet (``SELECT ... FROM``, whose WHERE sees a row's fields as
variables) is refused with :class:`NotCompiled` naming the line and construct: the
engine then runs that dialog in the interpreter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from gbmedia.bots.compiler import Compiled
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.library import REGISTRY
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
    Return,
    SelectCase,
    SelectFrom,
    Stmt,
    Table,
    Text,
    Unary,
)

FORMAT = 2  # the meta section's format: a .wasm file from another version is refused (2: the line import's frame)
NONE, FALSE, TRUE, UNSET = 1, 3, 5, 7  # encoded handles 0..3
FIRST_CONST = 4  # the first constant's handle index
INT_LIMIT = 1 << 62  # whole numbers with |n| < 2^62 are unboxed
MISFIT = -1  # what the hear import gives when the answer is re-asked
MAX_BLOCKS = 256  # resume points in one unit: more is refused (Cranelift's time grows fast with them)
STACK_PAGES = 4  # the shadow stack's linear memory: 256 KiB, fixed (the store's memory cap)
FAULTS = [
    "FUNCTION calls nested more than 200 deep",
    "FUNCTION calls inside expressions nested more than 50 deep",
    "HEAR cannot run in a FUNCTION called inside an expression; use CALL f or x = f(...)",
    "END cannot run in a FUNCTION called inside an expression",
    "FOR ... STEP 0 never ends",
    "FUNCTION calls nested too deep",
]
BINARY_OPS = ["+", "-", "*", "/", "\\", "MOD", "^", "&"]
COMPARE_OPS = ["=", "<>", "<", ">", "<=", ">="]
_CMP_NAME = {"=": "eq", "<>": "ne", "<": "lt", ">": "gt", "<=": "le", ">=": "ge"}
_ARITH_NAME = {"+": "add", "-": "sub", "*": "mul", "/": "div", "\\": "idiv", "MOD": "mod"}


_LABEL = re.compile(r"@L(\d+)@")


class NotCompiled(BasicSyntaxError):
    """A construct the compiled engine does not handle yet: the dialog runs in the interpreter instead."""


@dataclass
class WasmDialog:
    """A compiled dialog: the module's bytes and what its host needs (also stored in the module itself)."""

    dialog: str
    fingerprint: str
    wasm: bytes
    meta: dict[str, Any]
    wat: str = field(repr=False, default="")


def _custom_section(name: str, data: bytes) -> bytes:
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = leb(len(name.encode())) + name.encode() + data
    return b"\x00" + leb(len(body)) + body


def read_custom_sections(wasm: bytes) -> dict[str, bytes]:
    """The custom sections of a module (name → bytes): how a .wasm file carries its meta and line map."""
    out: dict[str, bytes] = {}
    if wasm[:4] != b"\x00asm":
        raise ValueError("not a WebAssembly module")
    i = 8
    while i < len(wasm):
        section = wasm[i]
        i += 1
        size, shift = 0, 0
        while True:
            byte = wasm[i]
            i += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = i + size
        if section == 0:
            n, shift, j = 0, 0, i
            while True:
                byte = wasm[j]
                j += 1
                n |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            out[wasm[j : j + n].decode()] = wasm[j + n : end]
        i = end
    return out


def compile_wasm(compiled: Compiled, debug: bool = False) -> WasmDialog:
    """Compile a loaded dialog (its syntax tree) to a module; :class:`NotCompiled` when a construct is not handled."""
    import wasmtime

    gen = _Module(compiled, debug)
    wat = gen.build()
    wasm = bytes(wasmtime.wat2wasm(wat))
    meta = gen.meta()
    lines = json.dumps(gen.lines, separators=(",", ":")).encode()
    wasm += _custom_section("gbmedia.meta", json.dumps(meta, separators=(",", ":")).encode())
    wasm += _custom_section("gbmedia.lines", lines)
    return WasmDialog(compiled.dialog, compiled.fingerprint, wasm, {**meta, "lines": gen.lines}, wat)


def load_wasm(wasm: bytes) -> WasmDialog:
    """A module written by :func:`compile_wasm` (``gbmedia bot compile``), its meta read back from its sections."""
    sections = read_custom_sections(wasm)
    if "gbmedia.meta" not in sections or "gbmedia.lines" not in sections:
        raise ValueError("not a compiled GB BASIC dialog (no gbmedia.meta section)")
    meta = json.loads(sections["gbmedia.meta"])
    if meta.get("format") != FORMAT:
        raise ValueError("compiled by another version of gbmedia: compile the dialog again")
    lines = json.loads(sections["gbmedia.lines"])
    return WasmDialog(meta["dialog"], meta["fingerprint"], wasm, {**meta, "lines": lines})


# --- the module ------------------------------------------------------------------------------

# The host's imports: (name, parameter types, result type). One with a result is imported without
# it and wrapped: the host writes the result at address 0 of the linear memory and the wrapper
# loads it. wasmtime's Python binding converts a callback's result slowly (it builds type objects
# at every call); writing 8 bytes through a pointer is cheap, and the shadow stack starts at 16.
IMPORTS: list[tuple[str, tuple[str, ...], str | None]] = [
    ("bin", ("i32", "i64", "i64"), "i64"),
    ("cmp", ("i32", "i64", "i64"), "i32"),
    ("un", ("i32", "i64"), "i64"),
    ("num", ("i64", "i32"), "i64"),
    ("truthy", ("i64",), "i32"),
    ("check", ("i64",), None),
    ("unset", ("i32",), "i64"),
    ("join", ("i64", "i64"), "i64"),
    ("text", ("i64",), "i64"),
    ("index", ("i64", "i64"), "i64"),
    ("member", ("i64", "i32"), "i64"),
    ("setindex", ("i64", "i64", "i64"), None),
    ("setmember", ("i64", "i32", "i64"), None),
    ("newlist", (), "i64"),
    ("push", ("i64", "i64"), None),
    ("arg", ("i64",), None),
    ("call0", ("i32",), "i64"),
    ("call1", ("i32", "i64"), "i64"),
    ("call2", ("i32", "i64", "i64"), "i64"),
    ("call3", ("i32", "i64", "i64", "i64"), "i64"),
    ("calln", ("i32", "i32"), "i64"),
    ("fortest", ("i64", "i64", "i64"), "i32"),
    ("forstep", ("i64", "i64"), "i64"),
    ("each", ("i64",), "i64"),
    ("len", ("i64",), "i64"),
    ("item", ("i64", "i64"), "i64"),
    ("table", ("i32",), None),
    ("hear", ("i32", "i64"), "i64"),
    ("fault", ("i32",), None),
    ("spill", ("i32", "i32", "i32", "i32"), None),
    ("frame", ("i32", "i32", "i32"), "i32"),
    ("gc", (), None),
    ("line", ("i32", "i32", "i32", "i32"), None),  # statement, unit, call depth, frame address
]
RESULT_ADDRESS = 0
STACK_BASE = 16


def _imports_text() -> str:
    imports, wrappers = [], []  # every import comes before the module's first function
    for name, params, result in IMPORTS:
        ps = f" (param {' '.join(params)})" if params else ""
        if result is None:
            imports.append(f'(import "h" "{name}" (func $h_{name}{ps}))')
            continue
        imports.append(f'(import "h" "{name}" (func $x_{name}{ps}))')
        args = " ".join(f"(local.get {i})" for i in range(len(params)))
        load = "(i64.load (i32.const 0))" if result == "i64" else "(i32.wrap_i64 (i64.load (i32.const 0)))"
        wrappers.append(f"(func $h_{name}{ps} (result {result}) (call $x_{name} {args}) {load})")
    return "\n".join(imports + wrappers)


_HELPERS = """
(func $both (param $a i64) (param $b i64) (result i32)
  (i64.eqz (i64.and (i64.or (local.get $a) (local.get $b)) (i64.const 1))))
(func $truthy (param $v i64) (result i32)
  (if (result i32) (i64.eqz (i64.and (local.get $v) (i64.const 1)))
    (then (i64.ne (local.get $v) (i64.const 0)))
    (else (if (result i32) (i64.le_u (local.get $v) (i64.const 5))
      (then (i64.eq (local.get $v) (i64.const 5)))
      (else (call $h_truthy (local.get $v)))))))
(func $chk (param $v i64) (result i64)
  (if (i32.and (i32.wrap_i64 (local.get $v)) (i64.gt_u (local.get $v) (i64.const 7)))
    (then (call $h_check (local.get $v))))
  (local.get $v))
(func $getg (param $v i64) (param $n i32) (result i64)
  (if (result i64) (i64.eq (local.get $v) (i64.const 7))
    (then (call $h_unset (local.get $n))) (else (local.get $v))))
(func $num (param $v i64) (result i64)
  (if (result i64) (i64.eqz (i64.and (local.get $v) (i64.const 1)))
    (then (local.get $v)) (else (call $h_num (local.get $v) (i32.const 0)))))
(func $numstep (param $v i64) (result i64)
  (if (i64.eqz (i64.and (local.get $v) (i64.const 1)))
    (then (if (i64.eqz (local.get $v)) (then (call $h_fault (i32.const 4)))) (return (local.get $v))))
  (call $h_num (local.get $v) (i32.const 1)))
(func $neg (param $v i64) (result i64)
  (if (i32.and (i64.eqz (i64.and (local.get $v) (i64.const 1)))
               (i64.ne (local.get $v) (i64.const 0x8000000000000000)))
    (then (return (i64.sub (i64.const 0) (local.get $v)))))
  (call $h_un (i32.const 0) (local.get $v)))
(func $add (param $a i64) (param $b i64) (result i64) (local $r i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $r (i64.add (local.get $a) (local.get $b)))
    (if (i64.ge_s (i64.and (i64.xor (local.get $a) (local.get $r))
                          (i64.xor (local.get $b) (local.get $r))) (i64.const 0))
      (then (return (local.get $r))))))
  (call $h_bin (i32.const 0) (local.get $a) (local.get $b)))
(func $sub (param $a i64) (param $b i64) (result i64) (local $r i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $r (i64.sub (local.get $a) (local.get $b)))
    (if (i64.ge_s (i64.and (i64.xor (local.get $a) (local.get $b))
                          (i64.xor (local.get $a) (local.get $r))) (i64.const 0))
      (then (return (local.get $r))))))
  (call $h_bin (i32.const 1) (local.get $a) (local.get $b)))
(func $mul (param $a i64) (param $b i64) (result i64) (local $x i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $x (i64.shr_s (local.get $a) (i64.const 1)))
    (if (i32.and (i64.lt_u (i64.add (local.get $x) (i64.const 0x80000000)) (i64.const 0x100000000))
                 (i64.lt_u (i64.add (local.get $b) (i64.const 0x100000000)) (i64.const 0x200000000)))
      (then (return (i64.mul (local.get $x) (local.get $b)))))))
  (call $h_bin (i32.const 2) (local.get $a) (local.get $b)))
(func $div (param $a i64) (param $b i64) (result i64) (local $x i64) (local $y i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $x (i64.shr_s (local.get $a) (i64.const 1)))
    (local.set $y (i64.shr_s (local.get $b) (i64.const 1)))
    (if (i32.and (i32.and (i64.ne (local.get $y) (i64.const 0))
                          (i64.lt_u (i64.add (local.get $x) (i64.const 0x20000000000000)) (i64.const 0x40000000000000)))
                 (i64.lt_u (i64.add (local.get $y) (i64.const 0x20000000000000)) (i64.const 0x40000000000000)))
      (then (if (i64.eqz (i64.rem_s (local.get $x) (local.get $y)))
        (then (return (i64.shl (i64.div_s (local.get $x) (local.get $y)) (i64.const 1)))))))))
  (call $h_bin (i32.const 3) (local.get $a) (local.get $b)))
(func $idiv (param $a i64) (param $b i64) (result i64) (local $x i64) (local $y i64) (local $q i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $x (i64.shr_s (local.get $a) (i64.const 1)))
    (local.set $y (i64.shr_s (local.get $b) (i64.const 1)))
    (if (i64.ne (local.get $y) (i64.const 0)) (then
      (local.set $q (i64.div_s (local.get $x) (local.get $y)))
      (if (i32.and (i64.ne (i64.rem_s (local.get $x) (local.get $y)) (i64.const 0))
                   (i64.lt_s (i64.xor (local.get $x) (local.get $y)) (i64.const 0)))
        (then (local.set $q (i64.sub (local.get $q) (i64.const 1)))))
      (return (i64.shl (local.get $q) (i64.const 1)))))))
  (call $h_bin (i32.const 4) (local.get $a) (local.get $b)))
(func $mod (param $a i64) (param $b i64) (result i64) (local $x i64) (local $y i64) (local $r i64)
  (if (call $both (local.get $a) (local.get $b)) (then
    (local.set $x (i64.shr_s (local.get $a) (i64.const 1)))
    (local.set $y (i64.shr_s (local.get $b) (i64.const 1)))
    (if (i64.ne (local.get $y) (i64.const 0)) (then
      (local.set $r (i64.rem_s (local.get $x) (local.get $y)))
      (if (i32.and (i64.ne (local.get $r) (i64.const 0))
                   (i64.lt_s (i64.xor (local.get $r) (local.get $y)) (i64.const 0)))
        (then (local.set $r (i64.add (local.get $r) (local.get $y)))))
      (return (i64.shl (local.get $r) (i64.const 1)))))))
  (call $h_bin (i32.const 5) (local.get $a) (local.get $b)))
(func $fortest (param $c i64) (param $e i64) (param $s i64) (result i32)
  (if (result i32) (i32.and (call $both (local.get $c) (local.get $e)) (i64.eqz (i64.and (local.get $s) (i64.const 1))))
    (then (if (result i32) (i64.ge_s (local.get $s) (i64.const 0))
      (then (i64.gt_s (local.get $c) (local.get $e))) (else (i64.lt_s (local.get $c) (local.get $e)))))
    (else (call $h_fortest (local.get $c) (local.get $e) (local.get $s)))))
(func $forstep (param $c i64) (param $s i64) (result i64) (local $r i64)
  (if (call $both (local.get $c) (local.get $s)) (then
    (local.set $r (i64.add (local.get $c) (local.get $s)))
    (if (i64.ge_s (i64.and (i64.xor (local.get $c) (local.get $r))
                          (i64.xor (local.get $s) (local.get $r))) (i64.const 0))
      (then (return (local.get $r))))))
  (call $h_forstep (local.get $c) (local.get $s)))
(func $enter
  (if (i32.ge_u (global.get $frames) (i32.const 200)) (then (call $h_fault (i32.const 0))))
  (global.set $frames (i32.add (global.get $frames) (i32.const 1))))
(func $leave (global.set $frames (i32.sub (global.get $frames) (i32.const 1))))
(func $ienter
  (if (i32.ge_u (global.get $inline) (i32.const 50)) (then (call $h_fault (i32.const 1))))
  (call $enter)
  (global.set $inline (i32.add (global.get $inline) (i32.const 1))))
(func $ileave
  (global.set $inline (i32.sub (global.get $inline) (i32.const 1)))
  (call $leave))
(func $alloc (param $n i32) (result i32) (local $fp i32)
  (local.set $fp (global.get $sp))
  (global.set $sp (i32.add (local.get $fp) (i32.shl (local.get $n) (i32.const 3))))
  (if (i32.gt_u (global.get $sp) (i32.const STACK_BYTES)) (then (call $h_fault (i32.const 5))))
  (local.get $fp))
"""


def _cmp_helpers() -> str:
    out = []
    for i, op in enumerate(COMPARE_OPS):
        name = _CMP_NAME[op]
        fast = {"eq": "i64.eq", "ne": "i64.ne", "lt": "i64.lt_s", "gt": "i64.gt_s", "le": "i64.le_s", "ge": "i64.ge_s"}
        out.append(
            f"(func ${name} (param $a i64) (param $b i64) (result i32)\n"
            f"  (if (result i32) (call $both (local.get $a) (local.get $b))\n"
            f"    (then ({fast[name]} (local.get $a) (local.get $b)))\n"
            f"    (else (call $h_cmp (i32.const {i}) (local.get $a) (local.get $b)))))"
        )
    return "\n".join(out)


def _has_resume_point(stmts: list[Stmt], functions: dict[str, Any]) -> bool:
    """Whether a HEAR or a FUNCTION called as a statement is inside: such code needs the dispatch loop."""
    for s in stmts:
        if isinstance(s, Hear):
            return True
        if isinstance(s, CallStmt) and s.name.upper() in functions:
            return True
        if isinstance(s, Assign) and isinstance(s.value, Call) and s.value.name in functions:
            return True
        if isinstance(s, If):
            if any(_has_resume_point(b, functions) for _, b in s.branches) or _has_resume_point(s.otherwise, functions):
                return True
        elif isinstance(s, SelectCase):
            if any(_has_resume_point(b, functions) for _, b in s.cases) or _has_resume_point(s.otherwise, functions):
                return True
        elif isinstance(s, ForRange | ForEach | DoLoop) and _has_resume_point(s.body, functions):
            return True
    return False


class _Module:
    def __init__(self, compiled: Compiled, debug: bool) -> None:
        self.compiled = compiled
        self.program = compiled.program
        self.debug = debug
        self.consts: list[Any] = []
        self.const_index: dict[tuple[str, Any], int] = {}
        self.names: list[str] = []  # the dialog's variables: one WebAssembly global each
        self.name_index: dict[str, int] = {}
        self.builtins: list[str] = []
        self.builtin_index: dict[str, int] = {}
        self.lines: list[list[Any]] = []  # statement id → [dialog, line]
        self.hears: list[str] = []
        self.tables: list[list[Any]] = []  # TABLE statements: [name, fields]
        self.unit_names = ["", *self.program.functions]
        self.units: list[dict[str, Any]] = []

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dialog": self.compiled.dialog,
            "fingerprint": self.compiled.fingerprint,
            "consts": self.consts,
            "names": self.names,
            "builtins": self.builtins,
            "hears": self.hears,
            "tables": self.tables,
            "units": self.units,
            "faults": FAULTS,
            "debug": self.debug,
        }

    # --- tables of the module ----------------------------------------------------------------

    def const(self, value: Any) -> int:
        key = (type(value).__name__, value)
        if key not in self.const_index:
            self.const_index[key] = len(self.consts)
            self.consts.append(value)
        return self.const_index[key]

    def const_handle(self, value: Any) -> int:
        return (FIRST_CONST + self.const(value)) * 2 + 1

    def name(self, name: str) -> int:
        if name not in self.name_index:
            self.name_index[name] = len(self.names)
            self.names.append(name)
        return self.name_index[name]

    def builtin(self, name: str) -> int:
        if name not in self.builtin_index:
            self.builtin_index[name] = len(self.builtins)
            self.builtins.append(name)
        return self.builtin_index[name]

    def build(self) -> str:
        funcs = []
        for i, unit_name in enumerate(self.unit_names):
            if unit_name == "":
                funcs.append(_Unit(self, 0, "", [], self.program.body, self.program.dialog).build())
            else:
                fn = self.program.functions[unit_name]
                funcs.append(_Unit(self, i, unit_name, fn.params, fn.body, fn.dialog or self.program.dialog).build())
        # every variable any unit reads or writes has a global, made while the units compiled
        globals_ = "\n".join(
            f'(global $g{i} (export "g{i}") (mut i64) (i64.const {UNSET}))' for i in range(len(self.names))
        )
        helpers = _HELPERS.replace("STACK_BYTES", str(STACK_PAGES * 65536))
        return "\n".join(
            [
                "(module",
                _imports_text(),
                f'(memory (export "stack") {STACK_PAGES} {STACK_PAGES})',
                '(global $stmt (export "stmt") (mut i32) (i32.const 0))',
                '(global $unwind (export "unwind") (mut i32) (i32.const 0))',
                "(global $frames (mut i32) (i32.const 1))",
                '(global $inline (export "inline") (mut i32) (i32.const 0))',
                f'(global $sp (export "sp") (mut i32) (i32.const {STACK_BASE}))',
                '(global $gcflag (export "gcflag") (mut i32) (i32.const 0))',
                globals_,
                helpers,
                _cmp_helpers(),
                *funcs,
                '(func (export "run") (param $resume i32) (result i32)',
                "  (global.set $frames (i32.const 1)) (global.set $inline (i32.const 0))",
                f"  (global.set $unwind (i32.const 0)) (global.set $sp (i32.const {STACK_BASE}))",
                "  (drop (call $u0 (local.get $resume) ))",
                "  (global.get $unwind))",
                ")",
            ]
        )


@dataclass(eq=False)  # labels are told apart by identity: two not yet placed are not the same label
class _Label:
    index: int  # its number in the unit's labels: "@L<index>@" in the text until the blocks are numbered
    block: int = -1


class _Unit:
    """One unit (the body or a FUNCTION) as a WebAssembly function."""

    def __init__(self, mod: _Module, uid: int, name: str, params: list[str], body: list[Stmt], dialog: str) -> None:
        self.mod = mod
        self.uid = uid
        self.name = name
        self.params = [p.upper() for p in params]
        self.body = body
        self.dialog = dialog
        self.slots = len(self.params)  # shadow-stack slots: params, then hidden loop state
        self.temps = 0
        self.blocks: list[list[str]] = [[]]
        self.labels: list[_Label] = []
        self.loops: list[tuple[str, str, Any]] = []  # (kind, "br" | "jump", label name or _Label)
        self.uniq = 0
        self.sid = 0  # the statement being compiled: a FUNCTION's call sets it back on return
        self.first_line = body[0].line if body else 0

    # --- bookkeeping -----------------------------------------------------------------------

    def error(self, message: str, line: int, col: int | None = None) -> BasicSyntaxError:
        return BasicSyntaxError(message, line, col, self.dialog)

    def emit(self, code: str) -> None:
        self.blocks[-1].append(code)

    def slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def temp(self) -> str:
        self.temps += 1
        return f"$t{self.temps - 1}"

    def fresh(self, prefix: str) -> str:
        self.uniq += 1
        return f"${prefix}{self.uniq}"

    def new_label(self) -> _Label:
        label = _Label(len(self.labels))
        self.labels.append(label)
        return label

    def place(self, label: _Label) -> None:
        """Start a new block here and make ``label`` name it."""
        self.blocks.append([])
        label.block = len(self.blocks) - 1

    def jump(self, label: _Label) -> str:
        return f"(local.set $pc (i32.const @L{label.index}@)) (br $dispatch)"

    def sload(self, i: int) -> str:
        return f"(i64.load offset={i * 8} (local.get $fp))"

    def sstore(self, i: int, value: str) -> str:
        return f"(i64.store offset={i * 8} (local.get $fp) {value})"

    # --- the function ------------------------------------------------------------------------

    def build(self) -> str:
        self.block(self.body)
        code_blocks = []

        def block_of(match: re.Match[str]) -> str:
            return str(self.labels[int(match.group(1))].block)

        for blk in self.blocks:
            text = _LABEL.sub(block_of, "\n".join(blk))
            code_blocks.append(text.replace("@SLOTS@", str(self.slots)))
        n = len(code_blocks)
        if n > MAX_BLOCKS:
            raise NotCompiled(
                f"{self.name or 'the dialog'} needs more than {MAX_BLOCKS} blocks (a block per HEAR, per FUNCTION"
                " called as a statement and per loop or branch around them): too many for the compiled engine",
                self.first_line,
                None,
                self.dialog,
            )
        names = " ".join(f"$b{i}" for i in range(n))
        # (loop (block $b{n-1} ... (block $b1 (block $b0 (br_table ...)) code0) code1 ...) code{n-1}): built as a
        # list, not by wrapping a string n times (that is quadratic in the dialog's size)
        parts = ["(loop $dispatch ", *(f"(block $b{i} " for i in range(n - 1, 0, -1))]
        parts.append(f"(block $b0 (br_table {names} (local.get $pc)))")
        parts += [f"\n{code})" for code in code_blocks]
        dispatch = "".join(parts)
        params = " ".join(f"(param $p{i} i64)" for i in range(len(self.params)))
        temps = " ".join(f"(local $t{i} i64)" for i in range(self.temps))
        copy_params = " ".join(self.sstore(i, f"(local.get $p{i})") for i in range(len(self.params)))
        self.mod.units.append({"name": self.name, "params": self.params, "slots": self.slots, "blocks": n})
        return (
            f"(func $u{self.uid} (param $resume i32) {params} (result i64)\n"
            f"(local $pc i32) (local $resuming i32) (local $fp i32) {temps}\n"
            f"(local.set $fp (call $alloc (i32.const {self.slots})))\n"
            f"{copy_params}\n"
            f"(if (local.get $resume) (then (local.set $pc (call $h_frame (i32.const {self.uid}) (local.get $fp)"
            f" (i32.const {self.slots}))) (local.set $resuming (i32.const 1))))\n"
            f"{dispatch}\n"
            f"(global.set $sp (local.get $fp))\n"
            f"(i64.const {NONE}))"
        )

    def ret(self, value: str) -> str:
        return f"(global.set $sp (local.get $fp)) (return {value})"

    def spill(self, label: _Label) -> str:
        """Leave the run here: the host saves this frame (its block, its slots) and every caller does the same."""
        return (
            f"(call $h_spill (i32.const {self.uid}) (i32.const @L{label.index}@) (local.get $fp)"
            f" (i32.const @SLOTS@)) (global.set $unwind (i32.const 1)) {self.ret(f'(i64.const {NONE})')}"
        )

    def mark(self, stmt: Stmt, hook: bool = True) -> None:
        sid = self.sid = len(self.mod.lines)
        self.mod.lines.append([stmt.dialog or self.dialog, stmt.line])
        gc = "(if (i32.and (global.get $gcflag) (i32.eqz (global.get $inline))) (then (call $h_gc)))"
        self.emit(f"(global.set $stmt (i32.const {sid})) {gc}")
        if hook:
            self.emit(self.line_call(sid))

    def line_call(self, sid: int) -> str:
        """Debug modules: the ``line`` import, before statement ``sid`` (not when re-entering it to resume it)."""
        if not self.mod.debug:
            return ""
        return (
            f"(if (i32.eqz (local.get $resuming)) (then (call $h_line (i32.const {sid}) (i32.const {self.uid})"
            " (global.get $frames) (local.get $fp))))"
        )

    # --- statements ----------------------------------------------------------------------------

    def block(self, body: list[Stmt]) -> None:
        for stmt in body:
            outer, self.dialog = self.dialog, stmt.dialog or self.dialog
            self.statement(stmt)
            self.dialog = outer

    def flat(self, stmts: list[Stmt]) -> bool:
        return not _has_resume_point(stmts, self.mod.program.functions)

    def statement(self, stmt: Stmt) -> None:
        functions = self.mod.program.functions
        if isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name in functions:
            self.call_statement(stmt, stmt.value.name, stmt.value.args, stmt.target)
            return
        if isinstance(stmt, CallStmt) and stmt.name.upper() in functions:
            self.call_statement(stmt, stmt.name.upper(), stmt.args, stmt.target)
            return
        if isinstance(stmt, Hear):
            self.hear(stmt)
            return
        self.mark(stmt, hook=not isinstance(stmt, DoLoop))  # a DO calls it at each test: see do_loop
        if isinstance(stmt, Assign):
            self.emit(self.store(stmt.target, self.expr(stmt.value)))
        elif isinstance(stmt, Keyword):
            self.keyword(stmt, stmt.name, stmt.args, stmt.target)
        elif isinstance(stmt, CallStmt):
            builtin = REGISTRY.get(stmt.name.upper())
            if builtin is None:
                raise self.error(f"unknown FUNCTION {stmt.name}", stmt.line)
            self.keyword(stmt, builtin.name, stmt.args, stmt.target)
        elif isinstance(stmt, If):
            self.if_(stmt)
        elif isinstance(stmt, SelectCase):
            self.select_case(stmt)
        elif isinstance(stmt, ForRange):
            self.for_range(stmt)
        elif isinstance(stmt, ForEach):
            self.for_each(stmt)
        elif isinstance(stmt, DoLoop):
            self.do_loop(stmt)
        elif isinstance(stmt, Exit):
            self.exit(stmt)
        elif isinstance(stmt, Return):
            if self.name:
                value = self.expr(stmt.value) if stmt.value is not None else f"(i64.const {NONE})"
                self.emit(self.ret(value))
            else:
                self.emit(self.end())
        elif isinstance(stmt, Table):
            self.mod.tables.append([stmt.name, [f.to_json() for f in stmt.fields]])
            self.emit(f"(call $h_table (i32.const {len(self.mod.tables) - 1}))")
        else:  # pragma: no cover - every statement the parser makes is handled above
            raise NotCompiled(f"{type(stmt).__name__} is not compiled yet", stmt.line, None, self.dialog)

    def end(self) -> str:
        """END (or EXIT / RETURN in the body): the whole dialog ends, from any depth of statement calls."""
        guard = "(if (global.get $inline) (then (call $h_fault (i32.const 3))))" if self.name else ""
        return f"{guard} (global.set $unwind (i32.const 2)) {self.ret(f'(i64.const {NONE})')}"

    def keyword(self, stmt: Stmt, name: str, args: list[Expr], target: Expr | None) -> None:
        builtin = REGISTRY.get(name)  # a statement's name may be an alias (SEND MAIL: sendMail, now sendEmail)
        assert builtin is not None, name
        name = builtin.name
        if not builtin.accepts(len(args)):
            raise self.error(f"{name} takes {builtin.arity_text()}, got {len(args)}", stmt.line)
        call = self.builtin_call(name, args, checked=target is not None)
        if target is not None:
            self.emit(self.store(target, call))
        else:
            self.emit(f"(drop {call})")
        if name == "gotoDialog":  # the run ends here and the engine starts the dialog it named
            self.emit(f"(global.set $unwind (i32.const 2)) {self.ret(f'(i64.const {NONE})')}")

    def call_statement(self, stmt: Stmt, name: str, args: list[Expr], target: Expr | None) -> None:
        fn = self.mod.program.functions[name]
        if len(args) != len(fn.params):
            n, p = len(args), len(fn.params)
            raise self.error(f"FUNCTION {name} takes {p} argument{'s' if p != 1 else ''}, got {n}", stmt.line)
        uid = self.mod.unit_names.index(name)
        label = self.new_label()
        self.place(label)
        self.mark(stmt)
        temps = [self.temp() for _ in args]
        result = self.temp()
        evaluate = " ".join(f"(local.set {t} {self.expr(a)})" for t, a in zip(temps, args, strict=True))
        dummies = " ".join(f"(i64.const {NONE})" for _ in args)
        passed = " ".join(f"(local.get {t})" for t in temps)
        self.emit(
            f"(if (local.get $resuming)"
            f" (then (local.set $resuming (i32.const 0)) (call $enter)"
            f" (local.set {result} (call $u{uid} (i32.const 1) {dummies})))"
            f" (else {evaluate} (call $enter) (local.set {result} (call $u{uid} (i32.const 0) {passed}))))"
            f" (call $leave) (global.set $stmt (i32.const {self.sid}))"
            f" (if (global.get $unwind) (then"
            f" (if (i32.eq (global.get $unwind) (i32.const 1)) (then {self.spill(label)}))"
            f" {self.ret(f'(i64.const {NONE})')}))"
        )
        if target is not None:
            self.emit(self.store(target, f"(local.get {result})", check=True))

    def hear(self, stmt: Hear) -> None:
        if stmt.kind == "LOGIN":  # it talks (a sign-in code) when the run stops there, which the module cannot say
            raise NotCompiled("HEAR ... AS LOGIN is not compiled yet", stmt.line, None, self.dialog)
        label = self.new_label()
        self.place(label)
        self.mark(stmt)
        self.mod.hears.append(stmt.kind)
        hid = len(self.mod.hears) - 1
        options = f"(i64.const {NONE})"
        if stmt.options:
            options = self.list_of(stmt.options)
        answer = self.temp()
        guard = "(if (global.get $inline) (then (call $h_fault (i32.const 2))))"
        self.emit(
            f"(if (local.get $resuming)"
            f" (then (local.set $resuming (i32.const 0))"
            f" (local.set {answer} (call $h_hear (i32.const {hid}) {options}))"
            f" (if (i64.eq (local.get {answer}) (i64.const {MISFIT})) (then {self.spill(label)})))"
            f" (else {guard} {self.spill(label)}))"
        )
        self.emit(self.store(stmt.target, f"(local.get {answer})"))

    def if_(self, stmt: If) -> None:
        if self.flat([stmt]):
            code = self.flat_if(stmt.branches, stmt.otherwise)
            self.emit(code)
            return
        end = self.new_label()
        for cond, body in stmt.branches:
            nxt = self.new_label()
            self.emit(f"(if (i32.eqz {self.cond(cond)}) (then {self.jump(nxt)}))")
            self.block(body)
            self.emit(self.jump(end))
            self.place(nxt)
        self.block(stmt.otherwise)
        self.place(end)

    def flat_if(self, branches: list[tuple[Expr, list[Stmt]]], otherwise: list[Stmt]) -> str:
        (cond, body), rest = branches[0], branches[1:]
        then = self.flat_code(body)
        other = self.flat_if(rest, otherwise) if rest else self.flat_code(otherwise)
        return f"(if {self.cond(cond)} (then {then}) (else {other}))"

    def flat_code(self, body: list[Stmt]) -> str:
        """Compile ``body`` (no resume point inside: no new blocks) into text instead of the current block."""
        mark = len(self.blocks[-1])
        self.block(body)
        code = "\n".join(self.blocks[-1][mark:])
        del self.blocks[-1][mark:]
        return code

    def select_case(self, stmt: SelectCase) -> None:
        subject = self.slot()
        self.emit(self.sstore(subject, self.expr(stmt.subject)))

        def test(values: list[Expr]) -> str:
            parts = [f"(call $eq {self.sload(subject)} {self.expr(v)})" for v in values]
            code = parts[-1]
            for part in reversed(parts[:-1]):
                code = f"(if (result i32) {part} (then (i32.const 1)) (else {code}))"
            return code

        if self.flat([stmt]):

            def chain(cases: list[tuple[list[Expr], list[Stmt]]]) -> str:
                if not cases:
                    return self.flat_code(stmt.otherwise)
                (values, body), rest = cases[0], cases[1:]
                return f"(if {test(values)} (then {self.flat_code(body)}) (else {chain(rest)}))"

            self.emit(chain(stmt.cases))
            return
        end = self.new_label()
        for values, body in stmt.cases:
            nxt = self.new_label()
            self.emit(f"(if (i32.eqz {test(values)}) (then {self.jump(nxt)}))")
            self.block(body)
            self.emit(self.jump(end))
            self.place(nxt)
        self.block(stmt.otherwise)
        self.place(end)

    def read_var(self, name: str) -> str:
        if name in self.params:
            return self.sload(self.params.index(name))
        return f"(call $getg (global.get $g{self.mod.name(name)}) (i32.const {self.mod.name(name)}))"

    def write_var(self, name: str, value: str) -> str:
        if name in self.params:
            return self.sstore(self.params.index(name), value)
        return f"(global.set $g{self.mod.name(name)} {value})"

    def for_range(self, stmt: ForRange) -> None:
        var = stmt.var.upper()
        end, step = self.slot(), self.slot()
        start = self.temp()
        step_code = f"(call $numstep {self.expr(stmt.step)})" if stmt.step is not None else "(i64.const 2)"
        self.emit(
            f"(local.set {start} (call $num {self.expr(stmt.start)}))"
            f" {self.sstore(end, f'(call $num {self.expr(stmt.end)})')}"
            f" {self.sstore(step, step_code)}"
            f" {self.write_var(var, f'(local.get {start})')}"
        )
        here = f"(global.set $stmt (i32.const {self.sid}))"  # the test and the step fail at the FOR's line
        test = f"(block (result i32) {here} (call $fortest {self.read_var(var)} {self.sload(end)} {self.sload(step)}))"
        advance = here + " " + self.write_var(var, f"(call $forstep {self.read_var(var)} {self.sload(step)})")
        self.loop_body("FOR", stmt.body, test, advance)

    def loop_body(self, kind: str, body: list[Stmt], exit_test: str, advance: str) -> None:
        """A FOR loop: ``exit_test`` (i32, leave when true) before the body, ``advance`` after it."""
        if self.flat(body):
            out, top = self.fresh("x"), self.fresh("top")
            self.loops.append((kind, "br", out))
            code = self.flat_code(body)
            self.loops.pop()
            self.emit(f"(block {out} (loop {top} (br_if {out} {exit_test}) {code} {advance} (br {top})))")
            return
        top, out_label = self.new_label(), self.new_label()
        self.place(top)
        self.emit(f"(if {exit_test} (then {self.jump(out_label)}))")
        self.loops.append((kind, "jump", out_label))
        self.block(body)
        self.loops.pop()
        self.emit(f"{advance} {self.jump(top)}")
        self.place(out_label)

    def for_each(self, stmt: ForEach) -> None:
        var = stmt.var.upper()
        items, pos, count = self.slot(), self.slot(), self.slot()
        self.emit(
            f"{self.sstore(items, f'(call $h_each {self.expr(stmt.iterable)})')}"
            f" {self.sstore(pos, '(i64.const 0)')}"
            f" {self.sstore(count, f'(call $h_len {self.sload(items)})')}"
        )
        test = f"(i64.ge_s {self.sload(pos)} {self.sload(count)})"
        item = f"(call $chk (call $h_item {self.sload(items)} {self.sload(pos)}))"
        take = (
            f"(global.set $stmt (i32.const {self.sid})) {self.write_var(var, item)}"
            f" {self.sstore(pos, f'(i64.add {self.sload(pos)} (i64.const 2))')}"
        )
        # the item is taken before the body, as the interpreter's FOR EACH does
        if self.flat(stmt.body):
            out, top = self.fresh("x"), self.fresh("top")
            self.loops.append(("FOR", "br", out))
            code = self.flat_code(stmt.body)
            self.loops.pop()
            self.emit(f"(block {out} (loop {top} (br_if {out} {test}) {take} {code} (br {top})))")
            return
        top, out_label = self.new_label(), self.new_label()
        self.place(top)
        self.emit(f"(if {test} (then {self.jump(out_label)})) {take}")
        self.loops.append(("FOR", "jump", out_label))
        self.block(stmt.body)
        self.loops.pop()
        self.emit(self.jump(top))
        self.place(out_label)

    def cond_here(self, e: Expr) -> str:
        """A loop's condition, tested after its body ran: it fails at the loop's line, not the body's last."""
        return f"(block (result i32) (global.set $stmt (i32.const {self.sid})) {self.cond(e)})"

    def do_loop(self, stmt: DoLoop) -> None:
        """A debugger stops at ``DO WHILE``/``DO UNTIL`` at each test, as the interpreter does; at a plain ``DO`` never.

        (The interpreter's loop jumps back to the DO statement's first instruction: the test,
        or with none, the body's first statement.)
        """
        sid = self.sid
        test = None
        if stmt.cond is not None and not stmt.at_end:
            c = self.cond_here(stmt.cond)
            test = c if stmt.until else f"(i32.eqz {c})"
        if self.flat(stmt.body):
            out, top = self.fresh("x"), self.fresh("top")
            self.loops.append(("DO", "br", out))
            code = self.flat_code(stmt.body)
            self.loops.pop()
            head = f"{self.line_call(sid)} (br_if {out} {test})" if test else ""
            if stmt.cond is not None and stmt.at_end:
                self.sid = sid
                c = self.cond_here(stmt.cond)
                again = f"(i32.eqz {c})" if stmt.until else c
                bottom = f"(br_if {top} {again})"
            else:
                bottom = f"(br {top})"
            self.emit(f"(block {out} (loop {top} {head} {code} {bottom}))")
            return
        top, out_label = self.new_label(), self.new_label()
        self.place(top)
        if test:
            self.emit(self.line_call(sid))
            self.emit(f"(if {test} (then {self.jump(out_label)}))")
        self.loops.append(("DO", "jump", out_label))
        self.block(stmt.body)
        self.loops.pop()
        if stmt.cond is not None and stmt.at_end:
            self.sid = sid
            c = self.cond_here(stmt.cond)
            again = f"(i32.eqz {c})" if stmt.until else c
            self.emit(f"(if {again} (then {self.jump(top)}))")
        else:
            self.emit(self.jump(top))
        self.place(out_label)

    def exit(self, stmt: Exit) -> None:
        if stmt.what in ("FOR", "DO"):
            for kind, how, label in reversed(self.loops):
                if kind == stmt.what:
                    self.emit(f"(br {label})" if how == "br" else self.jump(label))
                    return
            raise self.error(f"EXIT {stmt.what} outside a {stmt.what} loop", stmt.line)
        if stmt.what == "FUNCTION":
            if not self.name:
                raise self.error("EXIT FUNCTION outside a FUNCTION", stmt.line)
            self.emit(self.ret(f"(i64.const {NONE})"))
        else:
            self.emit(self.end())

    # --- targets --------------------------------------------------------------------------------

    def store(self, target: Expr, value: str, check: bool = True) -> str:
        if isinstance(target, Name):
            return self.write_var(target.name, f"(call $chk {value})" if check else value)
        t = self.temp()
        if isinstance(target, Index):
            return (
                f"(local.set {t} {value})"
                f" (call $h_setindex {self.expr(target.target)} {self.expr(target.index)} (local.get {t}))"
            )
        if isinstance(target, Member):
            name = self.mod.const(target.name)
            holder = self.expr(target.target)
            return f"(local.set {t} {value}) (call $h_setmember {holder} (i32.const {name}) (local.get {t}))"
        raise self.error(
            "only a variable, an item or a field can be assigned", target.line, target.col
        )  # pragma: no cover

    # --- expressions ----------------------------------------------------------------------------

    def literal(self, value: Any) -> str:
        if value is None:
            return f"(i64.const {NONE})"
        if value is True:
            return f"(i64.const {TRUE})"
        if value is False:
            return f"(i64.const {FALSE})"
        if type(value) is int and -INT_LIMIT <= value < INT_LIMIT:
            return f"(i64.const {value * 2})"
        return f"(i64.const {self.mod.const_handle(value)})"

    def expr(self, e: Expr) -> str:
        if isinstance(e, Literal):
            return self.literal(e.value)
        if isinstance(e, Name):
            return self.read_var(e.name)
        if isinstance(e, Text):
            parts = [self.literal(p) if isinstance(p, str) else self.expr(p) for p in e.parts]
            if not parts:
                return self.literal("")
            code = f"(call $h_text {parts[0]})"
            for part in parts[1:]:
                code = f"(call $h_join {code} {part})"
            return f"(call $chk {code})"
        if isinstance(e, Index):
            return f"(call $h_index {self.expr(e.target)} {self.expr(e.index)})"
        if isinstance(e, Member):
            return f"(call $h_member {self.expr(e.target)} (i32.const {self.mod.const(e.name)}))"
        if isinstance(e, Unary):
            if e.op == "NOT":
                return f"(select (i64.const {FALSE}) (i64.const {TRUE}) {self.cond(e.operand)})"
            if e.op == "-":
                return f"(call $neg {self.expr(e.operand)})"
            return f"(call $num {self.expr(e.operand)})"
        if isinstance(e, Binary):
            if e.op in ("AND", "OR") or e.op in COMPARE_OPS:
                return f"(select (i64.const {TRUE}) (i64.const {FALSE}) {self.cond(e)})"
            if e.op in _ARITH_NAME:
                return f"(call ${_ARITH_NAME[e.op]} {self.expr(e.left)} {self.expr(e.right)})"
            return f"(call $h_bin (i32.const {BINARY_OPS.index(e.op)}) {self.expr(e.left)} {self.expr(e.right)})"
        if isinstance(e, ListOf):
            return self.list_of(e.items)
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, SelectFrom):
            raise NotCompiled("SELECT ... FROM is not compiled yet", e.line, e.col, self.dialog)
        raise NotCompiled(f"{type(e).__name__} is not compiled yet", e.line, e.col, self.dialog)  # pragma: no cover

    def list_of(self, items: list[Expr]) -> str:
        t = self.temp()
        pushes = " ".join(f"(call $h_push (local.get {t}) {self.expr(i)})" for i in items)
        return f"(block (result i64) (local.set {t} (call $h_newlist)) {pushes} (local.get {t}))"

    def cond(self, e: Expr) -> str:
        """An expression as an i32 truth (IF, loops, AND/OR): no boxing of the comparison's result."""
        if isinstance(e, Binary):
            if e.op in COMPARE_OPS:
                return f"(call ${_CMP_NAME[e.op]} {self.expr(e.left)} {self.expr(e.right)})"
            if e.op == "AND":
                return f"(if (result i32) {self.cond(e.left)} (then {self.cond(e.right)}) (else (i32.const 0)))"
            if e.op == "OR":
                return f"(if (result i32) {self.cond(e.left)} (then (i32.const 1)) (else {self.cond(e.right)}))"
        if isinstance(e, Unary) and e.op == "NOT":
            return f"(i32.eqz {self.cond(e.operand)})"
        return f"(call $truthy {self.expr(e)})"

    def call(self, e: Call) -> str:
        name = e.name.upper()
        functions = self.mod.program.functions
        if name in functions:
            params = functions[name].params
            if len(e.args) != len(params):
                n, p = len(e.args), len(params)
                raise self.error(f"FUNCTION {name} takes {p} argument{'s' if p != 1 else ''}, got {n}", e.line)
            uid = self.mod.unit_names.index(name)
            temps = [self.temp() for _ in e.args]
            result = self.temp()
            evaluate = " ".join(f"(local.set {t} {self.expr(a)})" for t, a in zip(temps, e.args, strict=True))
            passed = " ".join(f"(local.get {t})" for t in temps)
            return (
                f"(block (result i64) {evaluate} (call $ienter)"
                f" (local.set {result} (call $u{uid} (i32.const 0) {passed})) (call $ileave)"
                f" (global.set $stmt (i32.const {self.sid})) (local.get {result}))"
            )
        builtin = REGISTRY.get(name)
        if builtin is None:
            raise self.error(f"unknown function {e.name}", e.line, e.col)
        if builtin.statement_only:
            raise self.error(f"{e.name} is a statement and gives no value", e.line, e.col)
        if not builtin.accepts(len(e.args)):
            raise self.error(f"{e.name} takes {builtin.arity_text()}, got {len(e.args)}", e.line, e.col)
        return self.builtin_call(builtin.name, e.args, checked=True)

    def builtin_call(self, name: str, args: list[Expr], checked: bool) -> str:
        """A built-in through the registry: its index doubled, plus one when its result is wanted (and checked)."""
        bid = self.mod.builtin(name) * 2 + (1 if checked else 0)
        values = [self.expr(a) for a in args]
        if len(values) <= 3:
            return f"(call $h_call{len(values)} (i32.const {bid}) {' '.join(values)})"
        pushes = " ".join(f"(call $h_arg {v})" for v in values)
        return f"(block (result i64) {pushes} (call $h_calln (i32.const {bid}) (i32.const {len(values)})))"
