"""AS PDF, AS IMAGE, renderTable, CHART, getQRCode, HEAR AS QRCODE, CONVERT and FILL, read back.

PDFs are read back with pypdf, pictures decoded with OpenCV, QR codes decoded with
OpenCV's detector, Word documents opened with python-docx; CONVERT runs Debian's
LibreOffice (scripts/test installs libreoffice-writer-nogui).
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import cv2
import docx
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pypdf import PdfReader

from gbmedia.bots import documents, office, templating
from gbmedia.bots.context import Context
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.limits import Limits
from gbmedia.bots.registry import REGISTRY
from tests.bots.helpers import said, talk_with
from tests.conftest import service_missing

ROWS = 'rows = NEW ARRAY\nFOR i = 1 TO 3\n r = NEW OBJECT\n r.city = "São Paulo " + i\n r.total = i * 10\n'
ROWS += " APPEND rows, r\nNEXT\n"


@pytest.fixture
def files(tmp_path: Path) -> InstanceFiles:
    files = InstanceFiles(tmp_path / "data", "inst-docs")
    files.root.mkdir(parents=True)
    return files


@pytest.fixture(scope="module")
def soffice() -> str:
    path = shutil.which("soffice")
    if path is None:
        service_missing("LibreOffice's soffice is not installed (Debian's libreoffice-writer-nogui)")
    assert path is not None
    return path


def pdf_text(files: InstanceFiles, name: str) -> str:
    reader = PdfReader(files.root / name)
    return "\n".join(page.extract_text() for page in reader.pages)


def picture(files: InstanceFiles, name: str) -> np.ndarray:
    decoded = cv2.imread(str(files.root / name), cv2.IMREAD_COLOR)
    assert decoded is not None, name
    return decoded


def colour_pixels(picture: np.ndarray, hex_colour: str) -> int:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return int(np.all(np.abs(picture.astype(int) - (b, g, r)) <= 2, axis=2).sum())


async def test_data_as_pdf_is_a_table_pypdf_reads_back(files: InstanceFiles):
    source = ROWS + 'x = rows AS PDF\nTALK x\ny = "Olá, mundo" AS PDF\nTALK y\nz = ASPDF(rows, "r/t")\nTALK z'
    first, second, third = await said(source, files=files)
    assert first.startswith("documents/") and first.endswith(".pdf") and third == "r/t.pdf"
    text = pdf_text(files, first)
    for expected in ("city", "total", "São Paulo 1", "São Paulo 3", "30"):
        assert expected in text
    assert text.index("São Paulo 1") < text.index("São Paulo 2") < text.index("São Paulo 3")
    assert pdf_text(files, second) == "Olá, mundo"
    assert (files.root / first).read_bytes()[:5] == b"%PDF-"
    lines = await REGISTRY.call("asPDF", Context(files=files), ["first line\nsecond line", "lines.pdf"])
    assert pdf_text(files, lines).splitlines() == ["first line", "second line"]
    listed = await REGISTRY.call("asPDF", Context(files=files), [{"plan": "pro", "seats": 3}, "object.pdf"])
    assert "plan" in pdf_text(files, listed) and "seats" in pdf_text(files, listed)


async def test_data_as_image_and_render_table(files: InstanceFiles):
    source = ROWS + 'x = rows AS IMAGE\nTALK x\ny = RENDERTABLE(rows, "t/rows.pdf")\nTALK y\nTALK RENDERTABLE(rows)'
    image, pdf, table_png = await said(source, files=files)
    assert image.startswith("images/") and pdf == "t/rows.pdf" and table_png.startswith("tables/")
    drawn = picture(files, image)
    assert drawn.shape[1] == 800 and drawn.shape[0] >= 100
    assert (drawn < 100).any() and (drawn > 250).any()  # dark text and grid lines on white
    assert "São Paulo 2" in pdf_text(files, pdf)
    assert picture(files, table_png).shape == drawn.shape
    [name] = await said('x = "just text" AS IMAGE\nTALK x', files=files)
    assert picture(files, name).shape[1] == 800


async def test_bar_and_pie_charts_have_their_size_and_colours(files: InstanceFiles):
    source = 'v = NEW ARRAY\nAPPEND v, 1, 2, 4\nx = CHART "bar", v, "a, a, c"\nTALK x\nCHART "line", v\n'
    source += 'TALK CHART("pie", v, NEW ARRAY, "c/pie")'
    bar, pie = await said(source, files=files)
    assert bar.startswith("charts/") and pie == "c/pie.png"
    drawn = picture(files, bar)
    assert drawn.shape == (500, 800, 3)
    heights = [colour_pixels(drawn, c) for c in documents.PALETTE[:3]]
    # Bars of the same width: their areas in their own colours are as 1 : 2 : 4.
    assert heights[0] > 100 and abs(heights[1] / heights[0] - 2) < 0.1 and abs(heights[2] / heights[0] - 4) < 0.15
    assert colour_pixels(drawn, documents.PALETTE[3]) == 0
    wedges = [colour_pixels(picture(files, pie), c) for c in documents.PALETTE[:3]]
    assert abs(wedges[1] / wedges[0] - 2) < 0.15 and abs(wedges[2] / wedges[0] - 4) < 0.3


async def test_a_chart_of_rows_labels_each_value(files: InstanceFiles):
    rows = [{"month": "Jan", "sales": 3}, {"month": "Jan", "sales": 3}]  # the same label twice: two wedges
    name = await REGISTRY.call("chart", Context(files=files), ["donut", rows])
    drawn = picture(files, name)
    halves = [colour_pixels(drawn, c) for c in documents.PALETTE[:2]]
    assert halves[0] > 1000 and abs(halves[0] / halves[1] - 1) < 0.05


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('x = CHART "radar", NEW ARRAY', "a chart takes a list"),
        ('v = NEW ARRAY\nAPPEND v, 1\nx = CHART "radar", v', "unknown chart type 'radar'"),
        ('v = NEW ARRAY\nAPPEND v, "many"\nx = CHART "bar", v', "'many' is not a chart value"),
        ('v = NEW ARRAY\nAPPEND v, -1, 2\nx = CHART "pie", v', "not negative, and not all zero"),
        ('x = CHART "bar", "1, 2"', "a chart takes a list"),
        ('v = NEW ARRAY\nFOR i = 0 TO 500\nAPPEND v, i\nNEXT\nx = CHART "bar", v', "at most 500 values"),
        ('x = RENDERTABLE("text")', "renderTable takes a list of objects, not text"),
        ('x = GETQRCODE("")', "a QR code holds 1 to 2048 bytes of text, not 0"),
        ('x = GETQRCODE(MID("' + "x" * 3000 + '", 1, 2100))', "not 2100"),
    ],
)
async def test_bad_chart_table_and_qr_arguments(files: InstanceFiles, source: str, message: str):
    outcome, _ = await talk_with(source, files=files)
    assert outcome.status == "failed" and message in outcome.error.message, outcome.error


async def test_tables_are_bounded_pictures_and_pdf_pages(files: InstanceFiles):
    ctx = Context(files=files)
    long = await REGISTRY.call("asPDF", ctx, [[{"note": "x" * 5000}]])  # a cell past 500 characters is cut
    assert pdf_text(files, long).replace("\n", "").count("x") == 499
    with pytest.raises(Exception, match="a PDF table holds at most 2000 rows, not 2001"):
        await REGISTRY.call("renderTable", ctx, [[1] * 2001, "big.pdf"])
    with pytest.raises(Exception, match="a PDF holds at most 200000 characters of text, not 200001"):
        await REGISTRY.call("asPDF", ctx, ["x" * 200_001])
    with pytest.raises(Exception, match="a picture shows at most 5000 characters of text, not 5001: use AS PDF"):
        await REGISTRY.call("asImage", ctx, ["x" * 5001])
    with pytest.raises(Exception, match="the table cannot be laid out on PDF pages"):
        await REGISTRY.call("asPDF", ctx, [[{str(i): "y" * 499 for i in range(40)}]])
    with pytest.raises(Exception, match="at most 200 rows"):
        await REGISTRY.call("asImage", ctx, [[{"n": i} for i in range(201)]])
    name = await REGISTRY.call("asImage", ctx, [[]])  # no rows: a picture that says so
    assert picture(files, name).shape[1] == 800


async def test_qr_codes_are_made_and_read_back(files: InstanceFiles):
    link = "https://example.com/pay?id=42&who=Zoë"
    assert await said(f'x = GETQRCODE("{link}", "codes/pay")\nTALK x', files=files) == ["codes/pay.png"]
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(picture(files, "codes/pay.png"))
    assert text == link and points is not None


async def test_hear_as_qrcode_decodes_the_picture_sent_and_re_asks_without_one(files: InstanceFiles):
    await REGISTRY.call("getQRCode", Context(files=files), ["TICKET-7", "uploads/qr.png"])
    await REGISTRY.call("getQRCode", Context(files=files), ["SECRET", "private/qr.png"])
    qr = base64.b64encode((files.root / "uploads" / "qr.png").read_bytes()).decode()
    blank = base64.b64encode(cv2.imencode(".png", np.full((64, 64, 3), 255, np.uint8))[1].tobytes()).decode()
    answers: list[Any] = [
        "TICKET-7",  # typed text is not a picture
        {"name": "white.png", "data": blank},  # a picture with no code
        {"name": "doc.txt", "data": base64.b64encode(b"hello").decode()},  # not a picture
        {"name": "bad.png", "data": "%%%"},  # not Base64
        "{not json",
        "private/qr.png",  # a file of the bot's that the user did not upload: not read
        {"name": "qr.png", "data": qr},
        '{"name": "qr.png", "data": "' + qr + '"}',  # the same file, as JSON text (a chat attachment's content)
        "uploads/qr.png",  # one UPLOAD stored, by name
    ]
    source = "HEAR a AS QRCODE\nTALK a\nHEAR b AS QRCODE\nTALK b\nHEAR c AS QRCODE\nTALK c"
    outcome, port = await talk_with(source, answers, files=files)
    assert outcome.status == "done", outcome.error
    assert port.said == ["Please send a picture of a QR code."] * 6 + ["TICKET-7"] * 3
    outcome, port = await talk_with("HEAR a AS QRCODE", ["uploads/qr.png"], locale="pt")
    assert port.said == ["Por favor, envie uma foto de um QR code."]  # no files: a name is no picture


async def test_convert_makes_a_pdf_with_libreoffice(files: InstanceFiles, soffice: str):
    """One LibreOffice run: a Word template FILLed with rows, then CONVERTed to PDF."""
    template = docx.Document()
    template.add_paragraph("Invoice for {{ customer.name }}")
    template.add_paragraph("{% for r in rows %}{{ r.city }}={{ r.total }}; {% endfor %}")
    template.add_paragraph("Escaped: {{ customer.note }}")
    out = io.BytesIO()
    template.save(out)
    (files.root / "invoice.docx").write_bytes(out.getvalue())
    source = ROWS + 'o = NEW OBJECT\no.customer = NEW OBJECT\no.customer.Name = "Zoë"\no.customer.note = "<b>&</b>"\n'
    source += 'o.rows = rows\nf = FILL "invoice.docx" WITH o\nTALK f\np = CONVERT f\nTALK p'
    outcome, port = await talk_with(source, files=files, limits=Limits(max_seconds=120))
    assert outcome.status == "done", outcome.error
    assert port.said == ["invoice-filled.docx", "invoice-filled.pdf"]
    filled = [p.text for p in docx.Document(str(files.root / "invoice-filled.docx")).paragraphs]
    assert filled == ["Invoice for Zoë", "São Paulo 1=10; São Paulo 2=20; São Paulo 3=30; ", "Escaped: <b>&</b>"]
    text = pdf_text(files, "invoice-filled.pdf")
    assert "Invoice for Zoë" in text and "São Paulo 3=30" in text
    assert len(PdfReader(files.root / "invoice-filled.pdf").pages) == 1


async def test_convert_says_clearly_when_libreoffice_is_missing(files: InstanceFiles, tmp_path: Path):
    (files.root / "a.txt").write_text("hello")
    missing = str(tmp_path / "no-such-soffice")
    outcome, _ = await talk_with('x = CONVERT "a.txt"', files=files, office_binary=missing)
    assert outcome.status == "failed"
    assert outcome.error.message == (
        f"CONVERT needs LibreOffice: {missing!r} was not found (install Debian's libreoffice-writer-nogui, "
        "or point GBMEDIA_BOT_OFFICE_BINARY at soffice)"
    )
    for source, message in [('x = CONVERT "none.doc"', "no file none.doc"), ('x = CONVERT "a.pdf", "a.pdf"', "a PDF")]:
        (files.root / "a.pdf").write_text("%PDF-")
        outcome, _ = await talk_with(source, files=files, office_binary=missing)
        assert message in outcome.error.message


async def test_convert_of_what_libreoffice_cannot_read(files: InstanceFiles, soffice: str, tmp_path: Path):
    """A binary that is not LibreOffice (true) makes no PDF; one that hangs is killed at the run's deadline."""
    (files.root / "a.txt").write_text("hello")
    outcome, _ = await talk_with('x = CONVERT "a.txt"', files=files, office_binary="true")
    assert outcome.error.message == "LibreOffice could not convert a.txt to PDF"
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nsleep 60 &\nexec sleep 60\n")
    hang.chmod(0o755)
    outcome, _ = await talk_with(
        'x = CONVERT "a.txt"', files=files, office_binary=str(hang), limits=Limits(max_seconds=0.5)
    )
    assert "LibreOffice did not finish within" in outcome.error.message


async def test_fill_a_text_template_with_loops(files: InstanceFiles):
    (files.root / "t.txt").write_text(
        "{% for r in rows %}{{ r.City }}:{{ r.total }}{{ ', ' if not loop.last }}{% endfor %}"
    )
    assert await said(ROWS + 'o = NEW OBJECT\no.rows = rows\nTALK FILL("t.txt", o)', files=files) == [
        "São Paulo 1:10, São Paulo 2:20, São Paulo 3:30"
    ]
    (files.root / "v.txt").write_text("{{ data }} and {{ missing }}.")
    assert await said('TALK FILL("v.txt", 5)', files=files) == ["5 and ."]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for %}", "the template is not valid"),
        ("{{ ''.__class__.__mro__ }}", "the template is not valid: access to attribute '__class__'"),
        ("{{ 'x' * 2000000000 }}", "needs more memory than a fill may use"),
    ],
)
async def test_a_template_that_is_wrong_or_too_greedy_fails_the_run(files: InstanceFiles, template: str, message: str):
    (files.root / "t.txt").write_text(template)
    outcome, _ = await talk_with('x = FILL "t.txt" WITH 1', files=files)
    assert outcome.status == "failed" and message in outcome.error.message, outcome.error


async def test_a_template_that_runs_too_long_is_killed(files: InstanceFiles):
    (files.root / "t.txt").write_text(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    )
    outcome, _ = await talk_with('x = FILL "t.txt" WITH 1', files=files, limits=Limits(max_seconds=1))
    assert outcome.status == "failed" and "the template did not finish within" in outcome.error.message


def test_the_renderer_in_process():
    """What the child process runs, run here: text and Word templates, and its error answers."""
    assert templating.render({"kind": "text", "template": "{{ A.b }}!", "data": {"a": {"B": True}}}) == {
        "result": "true!"
    }
    document = docx.Document()
    document.add_paragraph("Hi {{ name }}")
    out = io.BytesIO()
    document.save(out)
    answer = templating.render(
        {"kind": "docx", "template": base64.b64encode(out.getvalue()).decode(), "data": {"name": "Ana"}}
    )
    filled = docx.Document(io.BytesIO(base64.b64decode(answer["result"])))
    assert [p.text for p in filled.paragraphs] == ["Hi Ana"]
    not_docx = templating.render({"kind": "docx", "template": base64.b64encode(b"plain").decode(), "data": 1})
    assert not_docx["error"].startswith("the template cannot be filled")
    assert templating.render({"kind": "text", "template": "{{ x.y }}", "data": [1]})["error"].startswith(
        "the template is not valid"
    )


async def test_the_keyword_api_gives_what_basic_gives(files: InstanceFiles):
    ctx = Context(files=files)
    assert await REGISTRY.call("getQRCode", ctx, ["same", "api.png"]) == "api.png"
    await said('x = GETQRCODE("same", "basic.png")', files=files)
    assert (files.root / "api.png").read_bytes() == (files.root / "basic.png").read_bytes()


def test_a_qr_code_photographed_at_an_angle_is_read():
    """A QR code as a camera sees it: turned, in perspective, on a grey background, with noise."""
    code = cv2.imdecode(np.frombuffer(documents.qr_png("https://gb.example/t/42"), np.uint8), cv2.IMREAD_COLOR)
    h, w = code.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    seen = np.float32([[120, 90], [480, 140], [430, 500], [90, 430]])
    photo = cv2.warpPerspective(
        code, cv2.getPerspectiveTransform(corners, seen), (640, 600), borderValue=(120, 120, 120)
    )
    noise = np.random.default_rng(3).normal(0, 8, photo.shape)
    photo = np.clip(photo.astype(float) + noise, 0, 255).astype(np.uint8)
    assert documents.qr_decode(photo) == "https://gb.example/t/42"
    assert documents.qr_decode(np.full((50, 50, 3), 200, np.uint8)) is None


async def test_convert_fetches_nothing_a_document_links_to(files: InstanceFiles, soffice: str):
    """An HTML page's picture on a local server: LibreOffice (which would fetch it) runs without a network."""
    if not await office.isolation():
        service_missing("unshare -rn is not permitted here: CONVERT cannot drop LibreOffice's network")
    hits: list[str] = []

    async def picture_handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{name}", picture_handler)
    async with TestServer(app, host="127.0.0.1") as server:
        page = f'<html><body><p>Linked picture below</p><img src="http://127.0.0.1:{server.port}/x.png"></body></html>'
        (files.root / "page.html").write_text(page)
        outcome, port = await talk_with('TALK CONVERT("page.html")', files=files, limits=Limits(max_seconds=120))
    assert outcome.status == "done", outcome.error
    assert port.said == ["page.pdf"] and len(PdfReader(files.root / "page.pdf").pages) >= 1
    assert hits == []  # without the namespace, LibreOffice asks for /x.png (OPTIONS, then GET twice)
