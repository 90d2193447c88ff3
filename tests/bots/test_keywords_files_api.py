"""The file, document and image keywords over HTTP (``POST /api/v1/keywords/...``), the same as in BASIC.

One node for all of them: each keyword is called over HTTP and by a dialog on the same
instance, the files they make are compared, and each refuses a bad argument with 400.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np
from aiohttp.test_utils import TestClient
from pypdf import PdfReader

from gbmedia.app import NODE
from gbmedia.bots.files import InstanceFiles
from tests.bots.test_keywords_api import keyword, run_basic
from tests.helpers import Tenant

CHART = 'v = NEW ARRAY\nAPPEND v, 1, 3\nCHART "bar", v, "a, b", "b/c.png"'
ROWS = 'rows = parseJSON("[{""city"": ""Lisboa"", ""n"": 1}, {""city"": ""Porto"", ""n"": 2}]")\n'


def decoded(files: InstanceFiles, name: str) -> np.ndarray:
    picture = cv2.imread(str(files.root / name), cv2.IMREAD_COLOR)
    assert picture is not None, name
    return picture


async def test_file_document_and_image_keywords_over_http_and_in_basic(client: TestClient, tenant: Tenant):
    runner = client.app[NODE].bots.engine.runner
    files = InstanceFiles(runner.data_dir, tenant.instance_id)
    edge = np.full((40, 40, 3), 50, np.uint8)
    edge[:, 20:] = 200
    await files.write("in/edge.png", cv2.imencode(".png", cv2.GaussianBlur(edge, (0, 0), 2))[1].tobytes())
    await files.write("in/t.txt", b"{{ Name }} has {{ items | length }} items")
    await files.write("in/bad.txt", b"{% for %}")
    admin = tenant.admin

    async def both(group: str, name: str, body: dict, basic: str) -> tuple[object, list[str]]:
        """The keyword's HTTP answer, and what ``basic`` (the same call, writing elsewhere) said on the instance."""
        answer = await keyword(client, group, name, body, admin)
        assert (answer["group"], answer["keyword"]) == (group, name)
        return answer["result"], (await run_basic(client, tenant, basic)).said

    # Pictures: the same pixels either way.
    for group, name, body, basic in [
        ("image", "sharpen", {"file": "in/edge.png", "target": "h/s.png"}, 'SHARPEN "in/edge.png", "b/s.png"'),
        (
            "image",
            "blur",
            {"file": "in/edge.png", "radius": 4, "target": "h/b.png"},
            'BLUR "in/edge.png", 4, "b/b.png"',
        ),
        ("system", "asImage", {"data": "hi", "target": "h/i.png"}, 'x = ASIMAGE("hi", "b/i.png")'),
        ("dialog", "chart", {"kind": "bar", "data": [1, 3], "legends": "a, b", "target": "h/c.png"}, CHART),
        ("dialog", "getQRCode", {"text": "gb", "target": "h/q.png"}, 'x = GETQRCODE("gb", "b/q.png")'),
    ]:
        assert (await both(group, name, body, basic))[0] == body["target"]
    for made in ("s.png", "b.png", "i.png", "c.png", "q.png"):
        assert np.array_equal(decoded(files, f"h/{made}"), decoded(files, f"b/{made}")), made
    merged = await keyword(client, "image", "mergeImage", {"first": "h/s.png", "second": "h/b.png"}, admin)
    assert decoded(files, merged["result"]).shape == (40, 80, 3)
    chart = decoded(files, "h/c.png")
    assert chart.shape == (500, 800, 3)
    assert cv2.QRCodeDetector().detectAndDecode(decoded(files, "h/q.png"))[0] == "gb"

    # Documents.
    rows = [{"city": "Lisboa", "n": 1}, {"city": "Porto", "n": 2}]
    pdf, said = await both("system", "asPDF", {"data": rows, "target": "h/r.pdf"}, ROWS + "x = rows AS PDF\nTALK x")
    text = PdfReader(files.root / str(pdf)).pages[0].extract_text()
    assert "Porto" in text and PdfReader(files.root / said[0]).pages[0].extract_text() == text
    table = await keyword(client, "system", "renderTable", {"data": rows, "target": "h/t.pdf"}, admin)
    assert "Lisboa" in PdfReader(files.root / table["result"]).pages[0].extract_text()
    body = {"template": "in/t.txt", "data": {"name": "Ana", "items": [1, 2]}}
    fill = 'o = NEW OBJECT\no.name = "Ana"\no.items = NEW ARRAY\nAPPEND o.items, 1, 2\nTALK FILL("in/t.txt", o)'
    assert await both("system", "fill", body, fill) == ("Ana has 2 items", ["Ana has 2 items"])

    # The instance's files.
    template = "{{ Name }} has {{ items | length }} items"
    assert await both("system", "getFileContents", {"name": "in/t.txt"}, 'TALK READFILE("in/t.txt")') == (
        template,
        [template],
    )
    sent = {"name": "photo.png", "data": base64.b64encode(b"\x89PNG").decode()}
    assert (await keyword(client, "system", "uploadFile", {"file": sent, "folder": "up"}, admin))["result"] == (
        "up/photo.png"
    )
    listing = (await keyword(client, "system", "dirFolder", {"folder": "up"}, admin))["result"]
    assert [(f["name"], f["size"]) for f in listing] == [("photo.png", 4)]
    assert (await keyword(client, "system", "copyFile", {"source": "up/photo.png", "target": "h"}, admin))[
        "result"
    ] == "h/photo.png"
    assert (await keyword(client, "system", "deleteFile", {"name": "up"}, admin))["result"] is True
    assert (await keyword(client, "system", "deleteFile", {"name": "up"}, admin))["result"] is False
    link = (await keyword(client, "system", "shareFolder", {"folder": "h", "minutes": 5}, admin))["result"]
    shared = await (await client.get(link)).json()
    assert "photo.png" in [f["name"] for f in shared["files"]]

    # Bad arguments: 400 keyword_failed, saying what is wrong.
    for group, name, body, message in [
        ("image", "sharpen", {"file": "none.png"}, "no file none.png"),
        ("image", "blur", {"file": "in/edge.png", "radius": 99}, "from 1 to 50"),
        ("image", "mergeImage", {"first": "in/edge.png", "second": "in/t.txt"}, "is not an image"),
        ("system", "asPDF", {"data": "x", "target": "../x.pdf"}, "is not a file name of this bot"),
        ("system", "renderTable", {"data": "text"}, "renderTable takes a list of objects"),
        ("dialog", "chart", {"kind": "radar", "data": [1]}, "unknown chart type"),
        ("dialog", "getQRCode", {"text": ""}, "a QR code holds 1 to 2048 bytes"),
        ("system", "convert", {"file": "none.docx"}, "no file none.docx"),
        ("system", "fill", {"template": "in/bad.txt", "data": {}}, "the template is not valid"),
        ("system", "shareFolder", {"folder": "h", "minutes": 0}, "1 to 10080 minutes"),
        ("system", "uploadFile", {"file": "x"}, "UPLOAD takes a file the user sent"),
        ("system", "getFileContents", {"name": "none.txt"}, "no file none.txt"),
    ]:
        answer = await keyword(client, group, name, body, admin, 400)
        assert answer["error"]["code"] == "keyword_failed" and message in answer["error"]["message"], (name, answer)
