"""First run, as a new operator meets it: ``gbmedia serve`` prints a line that opens the
dashboard logged in, and one click there starts a meeting with join links for others.

The node is a real ``gbmedia serve`` process (tests/processes.py) and the line is read
from its stdout, exactly as a person would copy it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from gbmedia.config import detect_public_host
from tests.browser import Browser
from tests.helpers import OPERATOR, OPERATOR_TOKEN
from tests.processes import ServerProcess, node_env
from tests.web.test_room_page import STATE_TIMEOUT

LINK = re.compile(r"^open the dashboard \(one-time login link, 60 minutes\): (\S+/web/dashboard/#login=(\S+))$")


async def printed_link_lines(server: ServerProcess, within: float = 30.0) -> list[str]:
    """The server's stdout once it holds the dashboard line (printed just after the listening line)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        lines = (await asyncio.to_thread(server.stdout_path.read_text)).splitlines()
        if any(LINK.match(line) for line in lines) or asyncio.get_running_loop().time() > deadline:
            return lines
        await asyncio.sleep(0.05)


async def test_the_printed_line_logs_the_operator_in_and_one_click_starts_a_meeting(
    tmp_path: Path, database_url: str, browser: Browser
):
    host = detect_public_host()  # browsers need a real interface address for ICE
    server = ServerProcess(
        node_env(tmp_path, database_url, host=host, public_host=host, turn_embedded="false"), tmp_path, "first-run"
    )
    try:
        url = await server.start()
        lines = await printed_link_lines(server)
        (link, code) = next(m.groups() for line in lines if (m := LINK.match(line)))
        assert link.startswith(f"{url}/web/dashboard/#login=")
        assert OPERATOR_TOKEN not in "\n".join(lines)  # the long-lived token is never printed

        # The printed address itself (the meeting page, which needs a join link) points the way too.
        home = await browser.open(url)
        await home.wait_for("window.gbroom && gbroom.phase === 'no_token'", timeout=STATE_TIMEOUT)
        hint = "document.querySelector('#notice .operator-hint a')"
        assert await home.evaluate(f"{hint}.checkVisibility() && {hint}.getAttribute('href')") == "/web/dashboard/"

        dash = await browser.open(link, permissions=["clipboard-read", "clipboard-write"])
        await dash.wait_for("document.body.dataset.phase === 'ready'", timeout=STATE_TIMEOUT)
        assert await dash.evaluate("gbdash.who.kind") == "operator"
        assert await dash.evaluate("location.href") == f"{url}/web/dashboard/"  # the code left the address bar
        assert await dash.evaluate("sessionStorage.getItem('gbmedia.dashboard.token')") == OPERATOR_TOKEN

        # The link worked once: opening it again (a shared screen, a browser history) gets nowhere.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/dashboard/login", json={"code": code}) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "login_code_invalid"
        again = await browser.open(link)
        await again.wait_for("!document.getElementById('login-error').hidden")
        assert "login_code_invalid" in await again.evaluate("document.getElementById('login-error').textContent")

        # One click: a default customer and instance (none existed), a room, and join links.
        await dash.page.click("#start-meeting")
        await dash.page.wait_for_selector("#join-links .guest-link input")
        host_link = await dash.page.input_value("#join-links .host-link input")
        guest_link = await dash.page.input_value("#join-links .guest-link input")
        assert host_link.startswith(f"{url}/web/room/?token=") and guest_link.startswith(f"{url}/web/room/?token=")
        await dash.wait_for("document.getElementById('status').textContent.includes('guest link is copied')")
        assert await dash.evaluate("navigator.clipboard.readText()") == guest_link  # the click copied it
        await dash.page.click("#more-guest")
        await dash.page.wait_for_selector("#join-links .guest-link >> nth=1")
        await dash.page.click("#join-links .guest-link button.copy")
        await dash.wait_for("document.querySelector('#join-links .guest-link button.copy').textContent !== 'Copy'")

        # The links are real: host and guest join the same meeting from them.
        host_tab = await browser.open(host_link + "&autojoin=1")
        guest_tab = await browser.open(guest_link + "&autojoin=1")
        for tab in (host_tab, guest_tab):
            await tab.wait_for("window.gbroom && gbroom.joined", timeout=STATE_TIMEOUT)
        await host_tab.wait_for("gbroom.participants.length === 1", timeout=STATE_TIMEOUT)

        # A second meeting reuses the default tenant instead of making another.
        await dash.page.click("#start-meeting")
        await dash.wait_for(f"document.querySelector('#join-links .host-link input').value !== {host_link!r}")
        async with aiohttp.ClientSession(headers=OPERATOR) as http:
            async with http.get(f"{url}/api/v1/customers") as resp:
                customers = (await resp.json())["customers"]
            async with http.get(f"{url}/api/v1/rooms") as resp:
                rooms = (await resp.json())["rooms"]
        assert [c["name"] for c in customers] == ["Default"]
        assert len(rooms) == 2 and len({r["instance_id"] for r in rooms}) == 1
        for tab in (home, dash, host_tab, guest_tab):
            tab.assert_no_errors()
    finally:
        await server.stop()
