"""Documents and pictures made from a dialog's data: PDF and PNG tables, charts, QR codes.

Pure functions from BASIC values to encoded bytes, run by the keywords in a worker
thread (fpdf2, matplotlib and OpenCV are CPU work of milliseconds to seconds).
matplotlib is used through its object API (a Figure and an Agg canvas per call, no
pyplot state), so calls in different threads do not share a figure. Text is set in
DejaVu Sans, which matplotlib ships, so any language's letters render in the PDF too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gbmedia.bots.errors import Fault
from gbmedia.bots.values import to_number, to_text

# One colour per bar, wedge or series, in this order: what a test (or a reader) can look for.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
CHART_KINDS = ("bar", "line", "pie", "donut")
CHART_SIZE = (800, 500)  # pixels
MAX_CHART_POINTS = 500
MAX_IMAGE_ROWS = 200  # a table drawn as a picture; a PDF table pages instead
MAX_PDF_ROWS = 2000  # fpdf2 lays out ~200-400 rows a second on one core: a bound on a thread nothing can stop
MAX_PDF_TEXT = 200_000  # characters of text in a PDF (about 60 pages, a second or two of layout)
MAX_IMAGE_TEXT = 5_000  # characters of text in a picture (matplotlib's wrapping is slow: ~2 s for this many)
MAX_CELL = 500  # characters of one PDF table cell (more is cut, with "…"): a row must fit on a page
QR_SCALE = 8  # pixels per module
QR_QUIET = 4  # modules of white border, as the QR standard asks


@dataclass(frozen=True, slots=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def table_of(data: Any) -> Table | None:
    """Data as a table: a list of objects (their fields), a list of values, an object's fields; None for text."""
    if isinstance(data, dict):
        return Table(["field", "value"], [[to_text(k), to_text(v)] for k, v in data.items()])
    if not isinstance(data, list):
        return None
    if data and all(isinstance(row, dict) for row in data):
        columns: list[str] = []
        for row in data:
            columns.extend(str(k) for k in row if str(k) not in columns)
        return Table(columns, [[to_text(row.get(c)) for c in columns] for row in data])
    return Table(["value"], [[to_text(v)] for v in data])


def _font(style: str = "") -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"DejaVuSans{style}.ttf")


def pdf(data: Any, title: str = "") -> bytes:
    """A PDF of the data: a table for lists and objects, paragraphs for text."""
    from fpdf import FPDF

    document = FPDF(format="A4")
    document.set_creator("gbmedia")
    document.add_font("DejaVu", "", _font())
    document.add_font("DejaVu", "B", _font("-Bold"))  # table headings
    document.set_font("DejaVu", size=10)
    document.add_page()
    if title:
        document.set_font_size(16)
        document.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
        document.set_font_size(10)
    table = table_of(data)
    if table is not None and len(table.rows) > MAX_PDF_ROWS:
        raise Fault(f"a PDF table holds at most {MAX_PDF_ROWS} rows, not {len(table.rows)}")
    if table is None:
        text = to_text(data)
        if len(text) > MAX_PDF_TEXT:
            raise Fault(f"a PDF holds at most {MAX_PDF_TEXT} characters of text, not {len(text)}")
        document.multi_cell(0, 5, text, new_x="LMARGIN", new_y="NEXT")
    else:
        try:
            with document.table(first_row_as_headings=True, repeat_headings=1) as grid:
                for row in [table.columns, *table.rows]:
                    cells = grid.row()
                    for value in row:
                        cells.cell(value if len(value) <= MAX_CELL else value[: MAX_CELL - 1] + "…")
        except ValueError as exc:  # fpdf2: a row taller than a page (many wide columns of long text)
            raise Fault(f"the table cannot be laid out on PDF pages: {exc}") from None
    return bytes(document.output())


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def image(data: Any, title: str = "") -> bytes:
    """A PNG of the data: a table for lists and objects, the text otherwise."""
    from matplotlib.figure import Figure

    table = table_of(data)
    if table is not None and len(table.rows) > MAX_IMAGE_ROWS:
        raise Fault(f"a table picture shows at most {MAX_IMAGE_ROWS} rows, not {len(table.rows)}: use AS PDF")
    if table is None and len(to_text(data)) > MAX_IMAGE_TEXT:
        raise Fault(
            f"a picture shows at most {MAX_IMAGE_TEXT} characters of text, not {len(to_text(data))}: use AS PDF"
        )
    lines = 2 + (len(table.rows) if table is not None else to_text(data).count("\n") + 1)
    figure = Figure(figsize=(8, min(0.3 * lines + 0.5, 80)), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    if title:
        figure.suptitle(title)
    if table is None:
        axes.text(0.02, 0.98, to_text(data), va="top", ha="left", fontsize=11, wrap=True)
    elif table.rows:
        grid = axes.table(cellText=table.rows, colLabels=table.columns, loc="upper center", cellLoc="left")
        grid.auto_set_font_size(False)
        grid.set_fontsize(10)
    else:
        axes.text(0.5, 0.5, "(no rows)", ha="center", va="center")
    return _png(figure)


@dataclass(frozen=True, slots=True)
class Series:
    values: list[float]
    labels: list[str]


def series_of(data: Any, legends: Any) -> Series:
    """Chart data: numbers (with ``legends`` as their labels), or rows whose first field labels the second."""
    if not isinstance(data, list) or not data:
        raise Fault("a chart takes a list of numbers or of rows (label, value)")
    if len(data) > MAX_CHART_POINTS:
        raise Fault(f"a chart shows at most {MAX_CHART_POINTS} values, not {len(data)}")
    if all(isinstance(row, dict) and len(row) >= 2 for row in data):
        keys = [list(row) for row in data]
        labels = [to_text(row[k[0]]) for row, k in zip(data, keys, strict=True)]
        values = [to_number(row[k[1]], "a chart value") for row, k in zip(data, keys, strict=True)]
    else:
        values = [to_number(v, "a chart value") for v in data]
        given = legends if isinstance(legends, list) else [s.strip() for s in to_text(legends).split(",") if s]
        labels = [to_text(given[i]) if i < len(given) else str(i + 1) for i in range(len(values))]
    return Series([float(v) for v in values], labels)


def chart(kind: str, series: Series, title: str = "") -> bytes:
    """An 800x500 PNG chart: bars, a line or a pie (donut), each value in the palette's colours in turn."""
    from matplotlib.figure import Figure

    kind = kind.strip().lower()
    if kind not in CHART_KINDS:
        raise Fault(f"unknown chart type {kind!r}: one of {', '.join(CHART_KINDS)}")
    figure = Figure(figsize=(CHART_SIZE[0] / 100, CHART_SIZE[1] / 100), dpi=100)
    axes = figure.add_subplot()
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series.values))]
    positions = list(range(len(series.values)))  # by position: two equal labels are still two bars
    if kind in ("bar", "line"):
        if kind == "bar":
            axes.bar(positions, series.values, color=colours)
        else:
            axes.plot(positions, series.values, color=PALETTE[0], marker="o")
        axes.set_xticks(positions, series.labels)
    else:
        if any(v < 0 for v in series.values) or not any(series.values):
            raise Fault("a pie chart takes values that are not negative, and not all zero")
        wedges = {"width": 0.4} if kind == "donut" else None
        axes.pie(series.values, labels=series.labels, colors=colours, wedgeprops=wedges)
    if title:
        axes.set_title(title)
    return _png(figure)


def qr_png(text: str) -> bytes:
    """A QR code of ``text`` as a PNG, with the white border readers need."""
    try:
        modules = cv2.QRCodeEncoder.create().encode(text)
    except cv2.error:  # pragma: no cover - getQRCode's 2048 bytes fit (a QR code holds 2953)
        raise Fault(f"{len(text.encode())} bytes do not fit in a QR code") from None
    picture = cv2.resize(modules, None, fx=QR_SCALE, fy=QR_SCALE, interpolation=cv2.INTER_NEAREST)
    border = QR_QUIET * QR_SCALE
    picture = cv2.copyMakeBorder(picture, border, border, border, border, cv2.BORDER_CONSTANT, value=255)
    return cv2.imencode(".png", picture)[1].tobytes()


def qr_decode(picture: np.ndarray) -> str | None:
    """The text of the QR code in a picture, or None when none is found or read."""
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY))
    return str(text) if text else None
