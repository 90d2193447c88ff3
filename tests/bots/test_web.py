"""Web automation from dialogs: Debian's Chromium driving pages this test serves, and SSRF refused.

One browser (a module's :class:`Browsers`) serves every test, as one serves a node. The
pages listen on loopback, which the guard refuses, so the runs that need them allow
127.0.0.0/8 the way an instance's operator would (``bots.http_allow``); one run without
it is refused, and past it a redirect to the metadata address and a page's own request
to a private address are refused too.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gbmedia.bots.browser import BrowserLimits, Browsers, WebRun, cyrb53
from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.lib_web import is_selector
from gbmedia.bots.registry import REGISTRY
from tests.bots.helpers import talk_with

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]

FORM = """<!doctype html><title>Form</title>
<form action="/result" method="get">
  <input id="email" name="email"> <input id="amount" name="amount" value="10">
  <button type="submit">Send</button>
</form>"""
RESULT = "<!doctype html><title>Result</title><h1>Result</h1><p id='result'>got {email} {amount}</p>"
LINKS = """<!doctype html><title>Links</title><h1 id="title">Start <b>here</b></h1>
<div id="menu" style="position:absolute;left:0;top:400px;width:200px;height:100px;background:#c00"
     onmouseenter="document.getElementById('hovered').textContent='open'">menu</div>
<p id="hovered">closed</p>
<a href="/next?n=1">First page</a> <a href="/next?n=2">Next page</a> <a href="/next?n=3">Next page</a>
<a id="invoice" href="/invoice.csv">invoice</a>"""
FRAME = """<!doctype html><title>Frame</title><p id="outside">outside</p>
<iframe id="pay" src="/inner" width="300" height="200"></iframe>"""
INNER = """<!doctype html><input id="card"><button onclick="
  document.getElementById('paid').textContent = 'paid ' + document.getElementById('card').value">Pay</button>
<p id="paid">unpaid</p>"""
LEAK = """<!doctype html><title>Leak</title><p id="leak">waiting</p><script>
fetch("http://10.255.255.1/secret").then(() => leak.textContent = "reached", () => leak.textContent = "blocked")
</script>"""
INVOICE = "id,total\n1,99.50\n"


@pytest.fixture(scope="module")
async def site() -> AsyncIterator[str]:
    async def page(html: str) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def result(request: web.Request) -> web.Response:
        return await page(RESULT.format(email=request.query.get("email", ""), amount=request.query.get("amount", "")))

    async def next_(request: web.Request) -> web.Response:
        return await page(f"<!doctype html><h1>Page {request.query['n']}</h1>")

    async def invoice(request: web.Request) -> web.Response:
        return web.Response(
            text=INVOICE, content_type="text/csv", headers={"Content-Disposition": 'attachment; filename="inv 1.csv"'}
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()

    def serve(html: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return await page(html)

        return handler

    for path, html in (("/form", FORM), ("/links", LINKS), ("/frame", FRAME), ("/inner", INNER), ("/leak", LEAK)):
        app.router.add_get(path, serve(html))
    app.router.add_get("/result", result)
    app.router.add_get("/next", next_)
    app.router.add_get("/invoice.csv", invoice)
    app.router.add_get("/redirect", redirect)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


@pytest.fixture(scope="module")
async def browsers() -> AsyncIterator[Browsers]:
    pool = Browsers(BrowserLimits(contexts_per_instance=2, pages_per_context=2, action_seconds=3.0))
    yield pool
    await pool.close()


def _context(browsers: Browsers, tmp_path: Path, allow: list[Any] | None = None) -> dict[str, Any]:
    return {
        "web": WebRun(browsers, "inst-a", LOOPBACK if allow is None else allow),
        "files": InstanceFiles(tmp_path, "inst-a"),
        "instance_id": "inst-a",
    }


async def run(source: str, browsers: Browsers, tmp_path: Path, allow: list[Any] | None = None) -> tuple[Any, list[str]]:
    outcome, port = await talk_with(source, **_context(browsers, tmp_path, allow))
    assert not [s for s in browsers.sessions.values() if s.instance_id == "inst-a"], "the run's contexts stay open"
    return outcome, port.said


async def said(source: str, browsers: Browsers, tmp_path: Path) -> list[str]:
    outcome, lines = await run(source, browsers, tmp_path)
    assert outcome.status == "done", outcome.error
    return lines


async def test_a_form_is_filled_and_sent_with_enter_and_with_its_button(
    site: str, browsers: Browsers, tmp_path: Path
) -> None:
    lines = await said(
        f"""OPEN "{site}/form"
SET "#email", "ana@example.com"
PRESS ENTER
TALK TEXT OF "#result"
OPEN "{site}/form" AS #second
SET "#email", "bia@example.com"
SET "#amount", "25"
TALK TEXT OF "#amount"
CLICK BUTTON "Send"
TALK TEXT OF "#result"
""",
        browsers,
        tmp_path,
    )
    assert lines == ["got ana@example.com 10", "25", "got bia@example.com 25"]


async def test_get_hover_and_links_by_text(site: str, browsers: Browsers, tmp_path: Path) -> None:
    lines = await said(
        f"""page = OPEN "{site}/links"
title = GET "#title"
TALK title.tag, title.text
missing = GET "#missing"
TALK ISEMPTY(missing)
TALK TEXT OF "#hovered"
HOVER "#menu"
TALK TEXT OF "#hovered"
CLICK LINK TEXT "Next page", 2
TALK TEXT OF "h1"
again = getPageByHandle(page)
TALK again.url = "{site}/next?n=3", page = again.handle
""",
        browsers,
        tmp_path,
    )
    assert lines == ["h1 Start here", "true", "closed", "open", "Page 3", "true true"]


async def test_an_element_inside_an_iframe(site: str, browsers: Browsers, tmp_path: Path) -> None:
    lines = await said(
        f"""OPEN "{site}/frame"
card = getByFrame("#pay", "#card")
SET card, "4242"
CLICK getByFrame("#pay", "button")
TALK TEXT OF getByFrame("#pay", "#paid")
card = GET "#card"
TALK ISEMPTY(card), TEXT OF "#outside"
""",
        browsers,
        tmp_path,
    )
    assert lines == ["paid 4242", "true outside"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


async def test_screenshots_of_the_page_and_of_an_element(site: str, browsers: Browsers, tmp_path: Path) -> None:
    lines = await said(
        f"""OPEN "{site}/links"
page = SCREENSHOT
menu = SCREENSHOT "#menu", "shots/menu.png"
TALK page
TALK menu
""",
        browsers,
        tmp_path,
    )
    root = InstanceFiles(tmp_path, "inst-a").root
    assert lines[0].startswith("screenshots/") and lines[1] == "shots/menu.png"
    assert _png_size((root / lines[0]).read_bytes()) == (1280, 720)
    assert _png_size((root / "shots/menu.png").read_bytes()) == (200, 100)


async def test_a_download_lands_among_the_bots_files(site: str, browsers: Browsers, tmp_path: Path) -> None:
    lines = await said(f'OPEN "{site}/links"\nx = DOWNLOAD "#invoice", "invoices"\nTALK x\n', browsers, tmp_path)
    assert lines == ["invoices/inv_1.csv"]
    assert (InstanceFiles(tmp_path, "inst-a").root / "invoices/inv_1.csv").read_text() == INVOICE


async def test_loopback_is_refused_unless_allowed(site: str, browsers: Browsers, tmp_path: Path) -> None:
    outcome, _ = await run(f'OPEN "{site}/form"\nTALK "never"\n', browsers, tmp_path, allow=[])
    assert outcome.status == "failed"
    assert "127.0.0.1" in str(outcome.error) and "bots.http_allow" in str(outcome.error)
    assert not browsers.started or not browsers.sessions  # refused before any context opened


async def test_a_redirect_to_the_metadata_address_is_refused(site: str, browsers: Browsers, tmp_path: Path) -> None:
    outcome, _ = await run(f'OPEN "{site}/redirect?to=http://169.254.169.254/latest/meta-data/"\n', browsers, tmp_path)
    assert outcome.status == "failed"
    assert "169.254.169.254" in str(outcome.error), outcome.error


async def test_a_pages_own_request_to_a_private_address_is_refused(
    site: str, browsers: Browsers, tmp_path: Path
) -> None:
    web_run = WebRun(browsers, "inst-a", LOOPBACK)
    ctx = Context(instance_id="inst-a", web=web_run)
    await REGISTRY.call("openPage", ctx, [f"{site}/leak"])
    session = next(iter(browsers.sessions.values()))
    text = ""
    for _ in range(100):  # the page's fetch settles in its own time: poll its answer
        text = await REGISTRY.call("getTextOf", ctx, ["#leak"])
        if text != "waiting":
            break
        await browsers.handles[web_run.current].page.wait_for_timeout(50)
    assert text == "blocked"
    assert any("10.255.255.1" in reason for reason in session.refused)
    assert await REGISTRY.call("closeHandles", ctx, []) == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('CLICK "#x"', "no web page is open"),
        ('OPEN "file:///etc/passwd"', "http or https"),
        ('OPEN "ftp://example.com/"', "http or https"),
        ('OPEN "{site}/form"\nCLICK 5', "a CSS selector or an element"),
        ('OPEN "{site}/form"\nCLICK "#nothing-here"', "CLICK"),
        ('OPEN "{site}/form"\nx = getPageByHandle("123")', "no web page or element 123"),
        ('OPEN "{site}/form"\nx = GET "#email"\nx = getPageByHandle(x.handle)', "an element, not a page"),
        ('OPEN "{site}/form"\nPRESS ""', "PRESS needs a key"),
        ('OPEN "{site}/form"\nx = DOWNLOAD "#email"', "nothing was downloaded"),
        ('OPEN "{site}/a" AS "1"\nOPEN "{site}/b" AS "2"\nOPEN "{site}/c" AS "3"', "GBMEDIA_BOT_BROWSER_CONTEXTS"),
        ('OPEN "{site}/form"\nOPEN "{site}/form"\nOPEN "{site}/form"', "GBMEDIA_BOT_BROWSER_PAGES"),
    ],
)
async def test_bad_web_arguments_end_the_run_with_a_clear_error(
    site: str, browsers: Browsers, tmp_path: Path, source: str, message: str
) -> None:
    outcome, _ = await run(source.replace("{site}", site), browsers, tmp_path)
    assert outcome.status == "failed"
    assert message in str(outcome.error), outcome.error


async def test_without_a_browser_web_statements_fail() -> None:
    outcome, _ = await talk_with('OPEN "https://example.com/"\n')
    assert outcome.status == "failed" and "web automation is not available" in str(outcome.error)


def test_cyrb53_matches_javascript_and_selectors_are_told_from_addresses() -> None:
    # The values JavaScript's cyrb53 gives (node -e with the old platform's function).
    assert cyrb53("a") == 7929297801672961
    assert cyrb53("a", 1) == 5368154436228575
    assert cyrb53("São Paulo 😀") == 56886997501284
    assert cyrb53("") == 3338908027751811
    assert [is_selector(t) for t in ("#id", ".c", "form input", "a[href]", "div", "*")] == [True] * 6
    assert [is_selector(t) for t in ("https://x.org", "/path", "", "hello!", "3 apples", "www.x.org")] == [False] * 6


async def test_the_docs_example_runs_against_a_served_form(site: str, browsers: Browsers, tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "bots.md").read_text()
    section = doc[doc.index("## Web automation") : doc.index("## Dates and text")]
    block = re.search(r"^```bas\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block is not None
    lines = await said(block[1].replace("https://shop.example.com", site), browsers, tmp_path)
    assert lines[:2] == ["got ana@example.com 25", "h1"]
    assert re.fullmatch(r"screenshots/\d+-\d+\.png", lines[2])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("OPEN\n", "expected an expression"),
        ('OPEN "https://x.org" AS #\n', "a session name after AS #"),
        ('OPEN "https://x.org", "a", "b"\n', "unexpected ','"),
        ("PRESS\n", "expected an expression"),
        ("CLICK BUTTON\n", "CLICK BUTTON takes 1 argument"),
        ('SET "#a"\n', "SET takes 2 arguments"),
    ],
)
def test_web_statements_that_do_not_parse(source: str, message: str) -> None:
    with pytest.raises(BasicSyntaxError) as error:
        load(source, "web")
    assert message in str(error.value)


async def test_the_terminal_drives_a_page_with_allow(site: str, tmp_path: Path) -> None:
    import io

    from gbmedia.bots.terminal import TerminalOptions, run_file

    dialog = tmp_path / "form.bas"
    dialog.write_text(f'OPEN "{site}/form"\nSET "#email", "ana@example.com"\nPRESS ENTER\nTALK TEXT OF "#result"\n')
    out, err = io.StringIO(), io.StringIO()
    options = TerminalOptions(file=dialog, allow=["127.0.0.0/8"])
    assert await run_file(options, io.StringIO(""), out, err) == 0, err.getvalue()
    assert out.getvalue() == "got ana@example.com 10\n"
    refused = TerminalOptions(file=dialog)
    assert await run_file(refused, io.StringIO(""), io.StringIO(), err) == 1
    assert "not a public address" in err.getvalue()
