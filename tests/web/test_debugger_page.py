"""web/debugger drives a debug run of a stored dialog in real Chromium.

The page loads the dialog's source with line numbers; a click on a number sets a
breakpoint; Start pauses there with the line highlighted and the variables shown;
Step moves one statement; Resume runs to the HEAR, whose question shows in the chat;
the answer typed in the chat box goes on to a run-time error shown on its line (all in
the node's engine, the compiled one); a second run, in the interpreter chosen in the
engine menu, pauses at the same line with the same variables, and Stop ends it. What the
page shows is checked against the API's context.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp.test_utils import TestClient

from tests.browser import Browser
from tests.helpers import Tenant

DIALOG = """n = 3
total = n * 2
TALK "total is ${total}"
HEAR name
TALK "hi " + name
x = [1][5]
"""
RUN = "gbDebugger.run"
VARIABLES = (
    "Object.fromEntries([...document.querySelectorAll('#variables tr')]"
    ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))"
)
CURRENT = "[...document.querySelectorAll('#source li.current')].map(li => Number(li.dataset.line))"
LINE_TEXT = "(n) => document.querySelector(`#source li[data-line='${n}'] code`).textContent"
CHAT = "[...document.querySelectorAll('#chat li')].map(li => [li.className, li.textContent])"


async def test_the_page_drives_a_debug_run(site: TestClient, tenant: Tenant, browser: Browser):
    resp = await site.put("/api/v1/bots/dialogs/debugme", json={"source": DIALOG}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    page = str(site.make_url("/web/debugger/")) + "?" + urlencode({"token": tenant.token(), "dialog": "debugme"})
    tab = await browser.open(page)
    await tab.wait_for("document.querySelectorAll('#source li').length === 7")
    await tab.page.click("#source li[data-line='2'] code")
    assert await tab.evaluate("gbDebugger.breakpoints") == [2]
    assert await tab.evaluate("document.querySelector('#source li[data-line=\"2\"]').classList.contains('breakpoint')")

    await tab.page.click("#start")
    await tab.wait_for(f"{RUN} && {RUN}.state === 'break' && {RUN}.line === 2")
    assert await tab.evaluate(f"{RUN}.engine") == "wasm"  # the node's engine: nothing chosen
    assert await tab.evaluate(CURRENT) == [2]
    assert await tab.evaluate(VARIABLES) == {"N": "3"}
    assert await tab.evaluate("document.querySelector('#status').textContent") == "Paused at line 2"

    await tab.page.click("#step")
    await tab.wait_for(f"{RUN}.line === 3")
    assert await tab.evaluate(CURRENT) == [3]
    assert await tab.evaluate(VARIABLES) == {"N": "3", "TOTAL": "6"}

    await tab.page.click("#resume")
    await tab.wait_for(f"{RUN}.waiting_for_input && !document.querySelector('#chat-input').disabled")
    assert await tab.evaluate(CHAT) == [["bot", "total is 6"]]
    await tab.page.fill("#chat-input", "Ana")
    await tab.page.press("#chat-input", "Enter")
    await tab.wait_for(f"{RUN}.state === 'stopped'")
    chat = await tab.evaluate(CHAT)
    assert chat[:3] == [["bot", "total is 6"], ["user", "Ana"], ["bot", "hi Ana"]]
    error_line = await tab.evaluate(
        "(() => { const li = document.querySelector('#source li.error');"
        " return li && [Number(li.dataset.line), li.querySelector('.errmsg').textContent]; })()"
    )
    assert error_line[0] == 6 and "outside the list" in error_line[1]
    assert await tab.evaluate(VARIABLES) == {"N": "3", "TOTAL": "6", "NAME": '"Ana"'}
    assert await tab.evaluate(CURRENT) == []

    await tab.page.select_option("#engine", "interp")
    await tab.page.click("#start")  # again, in the interpreter: the breakpoint is still set
    await tab.wait_for(f"{RUN}.state === 'break' && {RUN}.line === 2")
    assert await tab.evaluate(f"{RUN}.engine") == "interp"
    assert await tab.evaluate(VARIABLES) == {"N": "3"}
    run_id = await tab.evaluate(f"{RUN}.id")
    await tab.page.click("#stop")
    await tab.wait_for(f"{RUN}.state === 'stopped' && document.querySelector('#stop').disabled")
    assert await tab.evaluate(CURRENT) == []
    resp = await site.get(f"/api/v1/debugger/runs/{run_id}", headers=tenant.admin)
    assert resp.status == 404  # the stop ended it on the server too

    # Rename on the page: the source shown changes where total is the variable, and that is what runs next.
    await tab.page.fill("#rename-old", "total")
    await tab.page.fill("#rename-new", "sum")
    await tab.page.click("#rename")
    await tab.wait_for("document.querySelector('#status').textContent === 'Renamed total to sum'")
    assert await tab.evaluate(LINE_TEXT, 2) == "sum = n * 2"
    assert await tab.evaluate(LINE_TEXT, 3) == 'TALK "total is ${sum}"'
    assert await tab.evaluate("gbDebugger.breakpoints") == [2]  # lines stay, and their breakpoints
    await tab.page.click("#start")
    await tab.wait_for(f"{RUN} && {RUN}.state === 'break' && {RUN}.line === 2")
    await tab.page.click("#step")
    await tab.wait_for(f"{RUN}.line === 3")
    assert await tab.evaluate(VARIABLES) == {"N": "3", "SUM": "6"}
    await tab.page.click("#stop")
    await tab.wait_for(f"{RUN}.state === 'stopped'")
    resp = await site.get("/api/v1/bots/dialogs/debugme", headers=tenant.admin)
    assert (await resp.json())["source"] == DIALOG  # the stored dialog is unchanged
    tab.assert_no_errors()

    bare = await browser.open(str(site.make_url("/web/debugger/")))  # no token: the page says what it needs
    await bare.wait_for("!document.querySelector('#notice').hidden")
    assert await bare.evaluate("document.querySelector('#start').disabled")
    bare.assert_no_errors()
