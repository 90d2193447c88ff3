"""The last of the old ``systemKeywords``: callVM, autoSave, internalGetDocument and createDocument.

The old platform's meanings, kept where gbmedia has the same thing:

- ``callVM(dialog, function?, args...)`` ran a piece of BASIC in its VM. Here it calls
  another stored dialog of the instance inside the caller's run: the same sandbox (one
  budget of statements, time and HTTP), the same files, tables and conversation. With a
  ``function`` it runs that FUNCTION of the dialog and gives what it RETURNs; without,
  it runs the dialog's body and gives its variables as an object. The called dialog
  cannot HEAR (it has no turn of its own in the conversation) nor GO TO (the caller's
  run decides where the user goes).
- ``autoSave(file)`` (``internalAutoSave``) kept a file the user sent in the bot's
  storage, named for the day, never over another one: here among the bot's files,
  under ``autosave/<yyyy-mm-dd>/``.
- ``internalGetDocument(name)`` fetched a stored document: here a bot's file as the
  value a sent file is (``{name, path, size, type, data}``, data in Base64), so it can be
  passed on to ``autoSave``, ``uploadFile`` or ``sendFile``.
- ``createDocument(content, target?)`` (``internalCreateDocument``) made a Word
  document: here a .docx (python-docx) of text paragraphs, or a table for a list of
  objects or an object, among the bot's files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import io
import mimetypes
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.documents import table_of
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_docs import target_name
from gbmedia.bots.lib_image import store
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text

builtin = REGISTRY.builtin

# The interpreter's Run, handed in by gbmedia.bots.machine when it is imported: the interpreter imports
# this module (through the library), so this one never imports it back.
_interpreter: list[Callable[[Any, Context], Any]] = []


def use_interpreter(run_class: Callable[[Any, Context], Any]) -> None:
    """What callVM runs another dialog with (gbmedia.bots.machine.Run)."""
    _interpreter[:] = [run_class]


MAX_CALL_DEPTH = 4  # callVM inside callVM: a bound, so two dialogs calling each other stop
MAX_AUTOSAVE_COPIES = 100  # the same name saved again the same day: name-2.ext ... name-100.ext
MAX_DOCX_ROWS = 2000  # a Word table of more rows takes python-docx seconds: the same bound as a PDF's


@builtin("callVM", "dialog, function?, args...", group="system", bare=True)
async def call_vm(ctx: Context, dialog: Any, function: Any = None, *args: Any) -> Any:
    """Run another dialog of the bot in this run: its FUNCTION's RETURN value, or (no function) its variables."""
    if ctx.dialogs is None:
        raise Fault("callVM needs the bot's stored dialogs (not available to this run)")
    if ctx.call_depth >= MAX_CALL_DEPTH:
        raise Fault(f"callVM calls nested more than {MAX_CALL_DEPTH} deep")
    name = to_text(dialog).strip()
    if not name:
        raise Fault("callVM needs a dialog's name")
    compiled = await ctx.dialogs(name)
    wanted = to_text(function).strip().upper() if function not in (None, "") else ""
    if wanted:
        unit = compiled.units.get(wanted)
        if unit is None:
            raise Fault(f"dialog {compiled.dialog} has no FUNCTION {to_text(function)}")
        if len(unit.params) != len(args):
            raise Fault(f"{to_text(function)} of {compiled.dialog} takes {len(unit.params)} arguments, not {len(args)}")
    elif args:
        raise Fault("callVM passes arguments to a FUNCTION: name one")
    caller, goto = ctx.dialog, ctx.goto
    if not _interpreter:
        raise Fault("callVM needs the interpreter, which this process has not loaded")
    run = _interpreter[0](compiled, ctx)  # the caller's context: its budget, stores and conversation
    ctx.call_depth += 1
    try:
        if wanted:
            result = await run.call_inline(wanted, list(args))
        else:
            if await run.run_within():
                raise Fault(f"dialog {compiled.dialog} waits at a HEAR: a dialog callVM runs cannot HEAR")
            result = {var.lower(): value for var, value in run.globals.items()}
        if ctx.goto != goto:
            raise Fault(f"dialog {compiled.dialog} went to {ctx.goto}: a dialog callVM runs cannot GO TO")
    finally:
        ctx.call_depth -= 1
        ctx.dialog, ctx.goto = caller, goto
    return ctx.budget.check_value(result)


def _sent_file(file: Any, keyword: str) -> tuple[str, bytes]:
    """The name and bytes of a sent file ({name, data: Base64}, as HEAR AS FILE and internalGetDocument give)."""
    if not isinstance(file, dict) or not file.get("name") or not isinstance(file.get("data"), str):
        raise Fault(f"{keyword} takes a file the user sent (HEAR x AS FILE), not {kind_of(file)}")
    try:
        data = base64.b64decode(file["data"], validate=True)
    except (binascii.Error, ValueError):
        raise Fault("the file's data is not Base64") from None
    name = to_text(file["name"]).replace("\\", "/").split("/")[-1].strip()
    if not name or name in (".", ".."):
        raise Fault(f"{to_text(file['name'])!r} is not a file name")
    return name, data


@builtin("autoSave", "file", group="files", aliases=("internalAutoSave",))
async def auto_save(ctx: Context, file: Any) -> str:
    """Keep a file the user sent under autosave/<today>/, never over another: its path (name-2.ext when taken)."""
    name, data = _sent_file(file, "autoSave")
    if len(data) > ctx.limits.max_value_bytes:
        raise Fault(f"the file is larger than {ctx.limits.max_value_bytes} bytes")
    files = ctx.need_files()
    folder = f"autosave/{datetime.datetime.now(datetime.UTC).date().isoformat()}"
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    for n in range(1, MAX_AUTOSAVE_COPIES + 1):
        path = f"{folder}/{name}" if n == 1 else f"{folder}/{stem}-{n}{suffix}"
        if await files.kind(path) is None:
            return await files.write(path, data)
    raise Fault(f"{name} was saved {MAX_AUTOSAVE_COPIES} times today: give it another name")


@builtin("internalGetDocument", "name", group="files", bare=True)
async def get_document(ctx: Context, name: Any) -> dict[str, Any]:
    """A bot's file as a sent file's value: {name, path, size, type, data (Base64)}."""
    path = to_text(name).strip()
    data = await ctx.need_files().read(path, ctx.limits.max_value_bytes)
    filename = PurePosixPath(path).name
    kind = mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"
    document = {
        "name": filename,
        "path": path,
        "size": len(data),
        "type": kind,
        "data": base64.b64encode(data).decode(),
    }
    return ctx.budget.check_value(document)


def docx(content: Any) -> bytes:
    """A Word document of the content: a table for a list or object, a paragraph per line of text."""
    from docx import Document

    document = Document()
    table = table_of(content)
    if table is None:
        for line in to_text(content).splitlines() or [""]:
            document.add_paragraph(line)
    else:
        if len(table.rows) > MAX_DOCX_ROWS:
            raise Fault(f"a Word table holds at most {MAX_DOCX_ROWS} rows, not {len(table.rows)}")
        grid = document.add_table(rows=1 + len(table.rows), cols=max(1, len(table.columns)))
        grid.style = "Table Grid"
        for r, row in enumerate([table.columns, *table.rows]):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
                if r == 0:
                    for run in grid.cell(r, c).paragraphs[0].runs:
                        run.bold = True
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


@builtin("createDocument", "content, target?", group="files", bare=True, aliases=("internalCreateDocument",))
async def create_document(ctx: Context, content: Any, target: Any = None) -> str:
    """A Word (.docx) document of text or a table among the bot's files: its name (documents/<id>.docx)."""
    name = target_name(target, "documents", ".docx")
    if PurePosixPath(name).suffix.lower() != ".docx":
        raise Fault(f"createDocument makes a .docx, not {PurePosixPath(name).suffix}")
    return await store(ctx, name, await asyncio.to_thread(docx, content))
