"""callVM, autoSave and createDocument at their edges, in a plain context (no node): what each refuses, and why.

Their behaviour over HTTP and in dialogs is tests/bots/test_keywords_api.py's.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gbmedia.bots import lib_system
from gbmedia.bots.compiler import Compiled, load
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.limits import Limits
from gbmedia.bots.machine import converse


def context(tmp_path: Path, **kw: object) -> Context:
    return Context(files=InstanceFiles(tmp_path, "sys"), **kw)  # type: ignore[arg-type]


async def test_call_vm_needs_stored_dialogs_and_a_name(tmp_path: Path) -> None:
    with pytest.raises(Fault, match="stored dialogs"):
        await REGISTRY.call("callVM", context(tmp_path), ["other"])

    async def stored(name: str) -> Compiled:
        return load('TALK "in " + "other"', name)

    port = MemoryPort()
    ctx = context(tmp_path, dialogs=stored, port=port)
    with pytest.raises(Fault, match="needs a dialog's name"):
        await REGISTRY.call("callVM", ctx, ["  "])
    assert await REGISTRY.call("callVM", ctx, ["other"]) == {}
    assert port.said == ["in other"]
    # In a dialog, a callVM that fails ends the run with its reason, and the caller's dialog name is kept.
    outcome = await converse(load('x = callVM("")', "caller"), ctx, [])
    assert outcome.status == "failed" and "needs a dialog's name" in str(outcome.error)
    assert ctx.dialog == "caller" and ctx.call_depth == 0


async def test_auto_save_keeps_within_the_value_limit_and_stops_after_a_hundred_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(tmp_path, limits=Limits(max_value_bytes=4))
    big = {"name": "big.bin", "data": base64.b64encode(b"12345").decode()}
    with pytest.raises(Fault, match="larger than 4 bytes"):
        await REGISTRY.call("autoSave", ctx, [big])
    monkeypatch.setattr(lib_system, "MAX_AUTOSAVE_COPIES", 2)
    small = {"name": "a.txt", "data": base64.b64encode(b"hi").decode()}
    first = await REGISTRY.call("autoSave", ctx, [small])
    second = await REGISTRY.call("internalAutoSave", ctx, [small])
    assert second == first.replace("a.txt", "a-2.txt")
    with pytest.raises(Fault, match="saved 2 times today"):
        await REGISTRY.call("autoSave", ctx, [small])


def test_a_word_table_is_bounded_and_text_becomes_paragraphs() -> None:
    from io import BytesIO

    from docx import Document

    with pytest.raises(Fault, match="at most 2000 rows"):
        lib_system.docx([{"n": i} for i in range(lib_system.MAX_DOCX_ROWS + 1)])
    document = Document(BytesIO(lib_system.docx("Dear Ana,\nyour order is ready.")))
    assert [p.text for p in document.paragraphs] == ["Dear Ana,", "your order is ready."]


@pytest.mark.parametrize("engine", ["wasm", "interp"])
async def test_call_vm_spends_the_callers_statement_budget(tmp_path: Path, engine: str) -> None:
    """The called dialog's statements count against the caller's limit, in either engine."""
    from gbmedia.bots.engines import new_run

    async def stored(name: str) -> Compiled:
        return load("n = 0\nDO WHILE n < 200\n  n = n + 1\nLOOP", name)  # about 600 statements

    # About 600 statements in the called dialog, then 500-900 in the caller (by engine): together over 1000.
    caller = load('x = callVM("busy")\nm = 0\nDO WHILE m < 300\n  m = m + 1\nLOOP\nTALK "done"', "caller")
    port = MemoryPort()
    ctx = context(tmp_path, dialogs=stored, port=port, limits=Limits(max_statements=1000))
    outcome = await (await new_run(caller, ctx, engine)).start()
    assert outcome.status == "failed" and "GBMEDIA_BOT_MAX_STATEMENTS" in str(outcome.error)
    assert "done" not in port.said
    roomy = context(tmp_path, dialogs=stored, port=MemoryPort(), limits=Limits(max_statements=5000))
    assert (await (await new_run(caller, roomy, engine)).start()).status == "done"
    # Either part alone is within the limit.
    alone = load("m = 0\nDO WHILE m < 300\n  m = m + 1\nLOOP", "alone")
    tight = context(tmp_path, dialogs=stored, port=MemoryPort(), limits=Limits(max_statements=1000))
    assert (await (await new_run(alone, tight, engine)).start()).status == "done"


def test_call_vm_in_a_terminal_run_finds_the_dialog_beside_the_file(tmp_path: Path) -> None:
    from tests.bots.test_wasm_differential import converse as terminal

    (tmp_path / "tax.bas").write_text("FUNCTION due(a)\n  RETURN a * 2\nEND FUNCTION\n")
    (tmp_path / "broken.bas").write_text('TALK "unclosed\n')
    main = tmp_path / "main.bas"
    main.write_text('TALK callVM("tax", "due", 21)\nTALK callVM("broken")\n')
    code, out, err = terminal(main, [], "interp")  # callVM compiled: the budget test above, test_keywords_flow
    assert (code, out.splitlines()[0]) == (1, "42"), (out, err)
    assert "dialog broken does not compile" in err
    main.write_text('x = callVM("absent")\n')
    code, _, err = terminal(main, [], "interp")
    assert code == 1 and "absent.bas is not beside main.bas" in err
