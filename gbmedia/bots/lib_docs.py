"""Document keywords: AS PDF, AS IMAGE, renderTable, CHART, getQRCode, CONVERT and FILL.

Each makes a file among the instance's bot files and gives its name (FILL of a text
template gives the text). The rendering (fpdf2, matplotlib, OpenCV) runs in a worker
thread; LibreOffice and the template renderer run as child processes the run's
deadline bounds (gbmedia/bots/office.py). Every file written is within the size any
one value may have (GBMEDIA_BOT_MAX_VALUE_BYTES).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import PurePosixPath
from typing import Any

from gbmedia.bots import documents, office
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_image import store
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text

builtin = REGISTRY.builtin
MAX_QR_TEXT = 2048


def target_name(target: Any, folder: str, extension: str) -> str:
    """Where a keyword's file goes: the dialog's name (with ``extension`` added when it has none) or a new one."""
    if target is None or target == "":
        return f"{folder}/{uuid.uuid4().hex[:12]}{extension}"
    name = to_text(target)
    return name if PurePosixPath(name).suffix else name + extension


async def _made(ctx: Context, name: str, work: Any, data: Any) -> str:
    """``work(data)``'s bytes (a PDF, a PNG), made in a worker thread, stored as ``name``."""
    return await store(ctx, name, await asyncio.to_thread(work, data))


@builtin("asPDF", "data, target?", group="files", bare=True)
async def as_pdf(ctx: Context, data: Any, target: Any = None) -> str:
    """A PDF of the data (a table for a list or object, text otherwise) among the bot's files: its name."""
    return await _made(ctx, target_name(target, "documents", ".pdf"), documents.pdf, data)


@builtin("asImage", "data, target?", group="files", bare=True)
async def as_image(ctx: Context, data: Any, target: Any = None) -> str:
    """A PNG picture of the data (a table for a list or object, text otherwise): its file's name."""
    return await _made(ctx, target_name(target, "images", ".png"), documents.image, data)


@builtin("renderTable", "data, target?", group="files", bare=True)
async def render_table(ctx: Context, data: Any, target: Any = None) -> str:
    """A list of objects drawn as a table: a PDF when the target ends in .pdf, a PNG otherwise; its file's name."""
    if not isinstance(data, list | dict):
        raise Fault(f"renderTable takes a list of objects, not {kind_of(data)}")
    name = target_name(target, "tables", ".png")
    work = documents.pdf if PurePosixPath(name).suffix.lower() == ".pdf" else documents.image
    return await _made(ctx, name, work, data)


@builtin("chart", "kind, data, legends?, target?", group="files", bare=True)
async def chart(ctx: Context, kind: Any, data: Any, legends: Any = None, target: Any = None) -> str:
    """An 800x500 PNG chart (bar, line, pie, donut) of numbers labelled by ``legends``, or of (label, value) rows."""
    series = documents.series_of(data, legends)
    return await store(
        ctx, target_name(target, "charts", ".png"), await asyncio.to_thread(documents.chart, to_text(kind), series)
    )


@builtin("getQRCode", "text, target?", group="files", bare=True, aliases=("qrCode",))
async def get_qr_code(ctx: Context, text: Any, target: Any = None) -> str:
    """A PNG QR code of the text (a link, a code): its file's name."""
    value = to_text(text)
    if not value or len(value.encode()) > MAX_QR_TEXT:
        raise Fault(f"a QR code holds 1 to {MAX_QR_TEXT} bytes of text, not {len(value.encode())}")
    return await store(ctx, target_name(target, "qrcodes", ".png"), await asyncio.to_thread(documents.qr_png, value))


@builtin("convert", "file, target?", group="files", bare=True)
async def convert(ctx: Context, file: Any, target: Any = None) -> str:
    """A document of the bot (.docx, .odt, .rtf, .txt, .html...) converted to PDF by LibreOffice: the PDF's name."""
    source = to_text(file)
    data = await ctx.need_files().read(source, ctx.limits.max_value_bytes)
    name = to_text(target) if target else str(PurePosixPath(source).with_suffix(".pdf"))
    if name == source:
        raise Fault(f"{source} is a PDF already")
    pdf = await office.convert_to_pdf(ctx.office_binary, source, data, ctx.budget.remaining_seconds())
    return await store(ctx, name, pdf)


@builtin("fill", "template, data, target?", group="files", bare=True)
async def fill(ctx: Context, template: Any, data: Any, target: Any = None) -> str:
    """A template of the bot filled with the data's fields (Jinja2: {{name}}, {{a.b}}, {% for %}...).

    A text template gives the filled text; a Word template (.docx, docxtpl's tags) gives a
    new .docx among the bot's files (``<name>-filled.docx``, or ``target``): its name.
    """
    name = to_text(template)
    source = await ctx.need_files().read(name, ctx.limits.max_value_bytes)
    is_docx = PurePosixPath(name).suffix.lower() == ".docx"
    request: dict[str, Any] = {
        "kind": "docx" if is_docx else "text",
        "template": base64.b64encode(source).decode() if is_docx else source.decode("utf-8", errors="replace"),
        "data": data,
    }
    answer = await office.render_template(request, ctx.budget.remaining_seconds())
    if "error" in answer:
        raise Fault(to_text(answer["error"]))
    if not is_docx:
        return ctx.budget.check_value(to_text(answer["result"]))
    path = PurePosixPath(name)
    filled = to_text(target) if target else str(path.with_name(f"{path.stem}-filled.docx"))
    return await store(ctx, filled, base64.b64decode(answer["result"]))
