"""A person talks to a GB BASIC bot in a room's chat through web/room, in real Chromium.

The operator puts a bot in the room's chat (``POST /api/v1/bots/conversations``); the
person types in the page's chat panel as in any meeting, and the bot greets, asks with
HEAR, refuses an answer that does not fit (re-asking), and answers the one that does.
What the page shows is checked against what the server stored.
"""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.browser import Browser
from tests.helpers import Tenant
from tests.web.test_room_chat import MESSAGES, SHOWN, join_chat, open_panel, say, stored
from tests.web.test_room_page import STATE_TIMEOUT

START = """
TALK "Hello! I am the meeting's assistant."
TALK "What e-mail should I send the minutes to?"
HEAR email AS EMAIL
TALK "Thanks, the minutes will go to ${email}."
"""


async def test_a_person_talks_to_a_bot_in_the_rooms_chat(site: TestClient, tenant: Tenant, browser: Browser):
    resp = await site.put("/api/v1/bots/dialogs/start", json={"source": START}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    alice = await join_chat(browser, site, tenant, "alice")
    conversation = await alice.evaluate("gbroom.chat.conversationId")
    resp = await site.post(
        "/api/v1/bots/conversations", json={"conversation_id": conversation, "bot": "assistant"}, headers=tenant.admin
    )
    assert resp.status == 201, await resp.text()
    await open_panel(alice)

    await say(alice, "hi")
    await alice.wait_for(f"{MESSAGES}.length === 3", timeout=STATE_TIMEOUT)
    await say(alice, "my address")
    await alice.wait_for(f"{MESSAGES}.length === 5", timeout=STATE_TIMEOUT)
    await say(alice, "Alice@Example.com")
    await alice.wait_for(f"{MESSAGES}.length === 7", timeout=STATE_TIMEOUT)

    shown = [(m["own"], m["text"]) for m in await alice.evaluate(SHOWN)]
    assert shown == [
        (True, "hi"),
        (False, "Hello! I am the meeting's assistant."),
        (False, "What e-mail should I send the minutes to?"),
        (True, "my address"),
        (False, "Please type a valid e-mail address."),
        (True, "Alice@Example.com"),
        (False, "Thanks, the minutes will go to alice@example.com."),
    ]
    bot_names = {m["sender"] for m in await alice.evaluate(SHOWN) if not m["own"]}
    assert len(bot_names) == 1 and "ssistant" in bot_names.pop()
    assert [(m["sender"], m["content"]) for m in await stored(site, tenant, conversation)] == [
        ("alice", "hi"),
        ("assistant", "Hello! I am the meeting's assistant."),
        ("assistant", "What e-mail should I send the minutes to?"),
        ("alice", "my address"),
        ("assistant", "Please type a valid e-mail address."),
        ("alice", "Alice@Example.com"),
        ("assistant", "Thanks, the minutes will go to alice@example.com."),
    ]
    resp = await site.get("/api/v1/bots/runs", headers=tenant.admin)
    assert [(r["user_identity"], r["status"]) for r in (await resp.json())["runs"]] == [("alice", "done")]
