"""``gbmedia bot run FILE``: an author holds a dialog's conversation in the terminal.

TALK prints a line on stdout; HEAR reads the next line of stdin, which the interpreter
validates exactly as it does in chat (an answer that does not fit is re-asked, in the
dialog's language). The run goes through the same suspend-and-restore cycle at every
HEAR as the dialog engine (state saved and restored as JSON), so a dialog that works
here also survives a node's restart at its HEARs.

What a run reaches, and why it needs no server:

- Tables live in memory (:class:`~gbmedia.bots.memory_tables.MemoryTables`); with
  ``--tables FILE.json`` they are read from and written back to that scratch file, so
  one run can fill a table and the next report on it. The operator's database is never
  opened: a terminal run cannot touch an instance's data.
- Files live in ``--files DIR`` (default: a temporary directory removed afterwards),
  with the same path rules as an instance's files.
- HTTP goes through the same guard as on a node: private addresses are refused unless
  ``--allow CIDR`` names them.
- INCLUDE and GO TO find ``NAME.bas`` next to FILE.
- ``--engine wasm`` (the default) runs the dialog compiled to WebAssembly, ``--engine
  interp`` in the interpreter; a dialog the compiler refuses runs in the interpreter,
  with a note on stderr. FILE may also be a module ``gbmedia bot compile`` wrote
  (``.wasm``): it runs as compiled, without its source.

Operator lines (LOG, the error that ended a run, SEND, TRANSFER TO) go to stderr.
Exit status: 0 the dialog ended, 1 it failed at run time (its error on stderr),
2 a syntax error (``FILE: line L, col C: message``) or an unreadable file,
3 the input ended while the dialog waited at a HEAR.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gbmedia.bots.browser import Browsers, WebRun
from gbmedia.bots.compiler import Compiled, load
from gbmedia.bots.context import Context
from gbmedia.bots.dialogs import dialog_name
from gbmedia.bots.engines import DEFAULT_ENGINE, new_run, restore_run
from gbmedia.bots.errors import BasicSyntaxError, Fault
from gbmedia.bots.fetch import GuardedFetcher
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import UserInfo
from gbmedia.bots.limits import Limits
from gbmedia.bots.machine import Outcome, Run
from gbmedia.bots.memory_tables import MemoryTables
from gbmedia.bots.wasm_compiler import NotCompiled, WasmDialog, compile_wasm, load_wasm
from gbmedia.bots.wasm_engine import WasmRun
from gbmedia.http.guard import parse_networks

MAX_GOTO = 10  # GO TO hops in one terminal session, as in the engine's turn
EXIT_DONE, EXIT_FAILED, EXIT_SYNTAX, EXIT_INPUT_ENDED = 0, 1, 2, 3


@dataclass
class TerminalPort:
    """The conversation of a terminal run: TALK to ``out``, everything for the operator to ``err``."""

    out: TextIO
    err: TextIO
    user: UserInfo | None = field(default_factory=lambda: UserInfo("author", "Author"))
    params: dict[str, Any] = field(default_factory=dict)

    async def talk(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        print(f"[send {channel} to {to}] {json.dumps(payload, default=str)}", file=self.err, flush=True)

    async def transfer(self, to: str | None) -> None:
        print(f"[transfer to {to or 'a person'}]", file=self.err, flush=True)

    async def log(self, level: str, text: str) -> None:
        print(f"[{level}] {text}", file=self.err, flush=True)

    async def user_of(self, name: str) -> dict[str, Any] | None:
        return None  # a terminal run has no other people

    async def set_param(self, name: str, value: Any) -> None:
        self.params[name] = value


@dataclass
class TerminalOptions:
    file: Path
    user: str = "author"
    locale: str = "en"
    tables: Path | None = None
    files: Path | None = None
    allow: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)  # the node's GBMEDIA_BOT_* limits, so a runaway shows here too
    engine: str = DEFAULT_ENGINE


def compile_file(path: Path) -> Compiled:
    """The dialog in ``path``, its INCLUDEs read from ``NAME.bas`` beside it."""

    def loader(included: str) -> str:
        candidate = path.parent / f"{dialog_name(included)}.bas"
        if not candidate.is_file():
            raise KeyError(included)  # the parser reports the missing dialog at its INCLUDE
        return candidate.read_text(encoding="utf-8")

    return load(path.read_text(encoding="utf-8"), dialog_name(path.stem), loader)


def _beside(path: Path) -> Callable[[str], Awaitable[Compiled]]:
    """callVM's dialogs in a terminal run: ``NAME.bas`` beside the file, as INCLUDE and GO TO find them."""

    async def stored(name: str) -> Compiled:
        candidate = path.parent / f"{dialog_name(name)}.bas"
        if not candidate.is_file():
            raise Fault(f"the bot has no dialog {name} ({candidate.name} is not beside {path.name})")
        try:
            return await asyncio.to_thread(compile_file, candidate)
        except BasicSyntaxError as exc:
            raise Fault(f"dialog {name} does not compile: {exc}") from None

    return stored


def _place(exc: BasicSyntaxError, path: Path) -> str:
    """``line L, col C``, with the dialog's name when the error is in an INCLUDEd one."""
    place = f"line {exc.line}" if exc.col is None else f"line {exc.line}, col {exc.col}"
    return place if exc.dialog in (None, dialog_name(path.stem)) else f"{exc.dialog}: {place}"


async def _read_line(stdin: TextIO, err: TextIO) -> str | None:
    if stdin.isatty():
        print("> ", end="", file=err, flush=True)  # a prompt for a person typing; stdout stays the conversation
    line = await asyncio.to_thread(stdin.readline)  # a blocking read stays off the event loop
    return None if line == "" else line.rstrip("\r\n")


async def run_file(options: TerminalOptions, stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """Run the dialog in ``options.file`` with the terminal as its conversation; the exit status."""
    try:
        allow = parse_networks(options.allow)
    except ValueError as exc:
        print(f"gbmedia: --allow: {exc}", file=err)
        return EXIT_SYNTAX
    browsers = Browsers()  # OPEN, CLICK...: Chromium starts at the first OPEN, with --allow's networks
    tables = MemoryTables.load(options.tables) if options.tables else MemoryTables()
    port = TerminalPort(out, err, UserInfo(options.user, options.user, locale=options.locale))
    with tempfile.TemporaryDirectory(prefix="gbmedia-bot-") as scratch:
        files = InstanceFiles.rooted(options.files or Path(scratch))
        path = options.file
        try:
            for _ in range(MAX_GOTO + 1):
                try:
                    compiled: Compiled | WasmDialog = (
                        load_wasm(path.read_bytes()) if path.suffix == ".wasm" else compile_file(path)
                    )
                except BasicSyntaxError as exc:
                    print(f"{path}: {_place(exc, path)}: {exc.message}", file=err)
                    return EXIT_SYNTAX
                except OSError as exc:
                    print(f"gbmedia: cannot read {path}: {exc.strerror}", file=err)
                    return EXIT_SYNTAX
                except UnicodeDecodeError:
                    print(f"gbmedia: cannot read {path}: not UTF-8 text", file=err)
                    return EXIT_SYNTAX
                except ValueError as exc:
                    print(f"gbmedia: {path}: {exc}", file=err)
                    return EXIT_SYNTAX
                ctx = Context(
                    instance_id="terminal",
                    dialogs=_beside(path),
                    port=port,
                    tables=tables,
                    files=files,
                    http=GuardedFetcher(allow),
                    web=WebRun(browsers, "terminal", allow),
                    locale=options.locale,
                    limits=options.limits,
                )
                outcome = await _converse(compiled, ctx, stdin, err, options.engine)
                if outcome is None:
                    print("gbmedia: the input ended while the dialog waited at a HEAR", file=err)
                    return EXIT_INPUT_ENDED
                if outcome.status == "failed":
                    return EXIT_FAILED  # the run already logged its error on stderr
                if outcome.status != "goto" or not outcome.goto:
                    return EXIT_DONE
                path = path.parent / f"{dialog_name(outcome.goto)}.bas"
            print(f"gbmedia: more than {MAX_GOTO} GO TO in a row", file=err)
            return EXIT_FAILED
        finally:
            await browsers.close()
            if options.tables:
                tables.dump(options.tables)


async def _converse(
    compiled: Compiled | WasmDialog, ctx: Context, stdin: TextIO, err: TextIO, engine: str = DEFAULT_ENGINE
) -> Outcome | None:
    """Run to the end, answering each HEAR with a line of stdin; None when stdin ends first."""
    if isinstance(compiled, WasmDialog):
        outcome = await WasmRun(compiled, ctx).start()
    else:
        run = await new_run(compiled, ctx, engine)
        if engine == "wasm" and isinstance(run, Run):
            print(f"[info] {compiled.dialog} runs in the interpreter: {compiled._not_compiled}", file=err)  # type: ignore[attr-defined]
        outcome = await run.start()
    while outcome.status == "waiting":
        answer = await _read_line(stdin, err)
        if answer is None:
            return None
        state = json.loads(json.dumps(outcome.state))  # as the engine stores it between two messages
        if isinstance(compiled, WasmDialog):
            outcome = await WasmRun.restore(compiled, ctx, state).resume(answer)
        else:
            outcome = await (await restore_run(compiled, ctx, state)).resume(answer)
    return outcome


def compile_to_file(file: Path, out: Path | None, debug: bool, err: TextIO) -> int:
    """``gbmedia bot compile FILE -o FILE.wasm``: the dialog as a WebAssembly module, its meta and line map inside."""
    try:
        compiled = compile_file(file)
        module = compile_wasm(compiled, debug=debug)
    except NotCompiled as exc:
        print(f"{file}: {_place(exc, file)}: {exc.message} (it runs in the interpreter)", file=err)
        return EXIT_SYNTAX
    except BasicSyntaxError as exc:
        print(f"{file}: {_place(exc, file)}: {exc.message}", file=err)
        return EXIT_SYNTAX
    except OSError as exc:
        print(f"gbmedia: cannot read {file}: {exc.strerror}", file=err)
        return EXIT_SYNTAX
    except UnicodeDecodeError:
        print(f"gbmedia: cannot read {file}: not UTF-8 text", file=err)
        return EXIT_SYNTAX
    target = out or file.with_suffix(".wasm")
    target.write_bytes(module.wasm)
    print(f"{target}: {len(module.wasm)} bytes, {len(module.meta['lines'])} statements", file=err)
    return EXIT_DONE


def main(options: TerminalOptions) -> int:
    try:
        return asyncio.run(run_file(options, sys.stdin, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130  # the shell's convention for Ctrl-C
