"""The meeting page's chat panel (web/room/chat.js, chatpanel.js) in real Chromium tabs.

Two or more tabs join one room (helpers and fixtures from test_room_page.py) and chat
through the page's own UI: fill the input, press Enter, read the panel's DOM. What
the pages show is checked against what the server stored (the REST history), so
"exactly once" means once in the database as well as once on each page. Timeouts are
generous; nothing asserts how long anything took.
"""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.browser import Browser, Tab
from tests.helpers import Tenant, bearer
from tests.web.test_room_page import STATE_TIMEOUT, open_joined

MESSAGES = "[...document.querySelectorAll('#chat-messages .chat-msg')]"
SHOWN = f"""() => {MESSAGES}.map(m => ({{
    seq: m.dataset.seq ? Number(m.dataset.seq) : null,
    sender: m.querySelector('.chat-sender').textContent,
    text: m.querySelector('.chat-text').textContent,
    own: m.classList.contains('own'),
    time: m.querySelector('.chat-time').textContent,
    status: m.dataset.status || null,
    tooltip: m.querySelector('.chat-mark').title,
}}))"""


def bubble(text: str, attribute: str = "") -> str:
    """JS: the panel's message element whose text is ``text`` (undefined until shown)."""
    return f"{MESSAGES}.find(m => m.querySelector('.chat-text').textContent === {json.dumps(text)})" + attribute


async def badge(tab: Tab) -> str | None:
    """The unread count the Chat button shows, or None when it shows none."""
    return await tab.evaluate(
        "(() => { const b = document.querySelector('#chat-unread');"
        " return b.checkVisibility() ? b.textContent : null; })()"
    )


async def join_chat(browser: Browser, site: TestClient, tenant: Tenant, identity: str) -> Tab:
    tab = await open_joined(browser, site, tenant, identity)
    await tab.wait_for("gbroom.chat.ready && gbroom.chat.conversationId", timeout=STATE_TIMEOUT)
    return tab


async def open_panel(tab: Tab) -> None:
    await tab.page.click("#chat-toggle")
    await tab.wait_for("document.querySelector('#chat').checkVisibility() && gbroom.chat.isOpen", timeout=STATE_TIMEOUT)


async def say(tab: Tab, text: str) -> None:
    """Types ``text`` into the panel and sends it with Enter, as a person would."""
    await tab.page.fill("#chat-input", text)
    await tab.page.press("#chat-input", "Enter")


async def stored(site: TestClient, tenant: Tenant, conversation_id: str) -> list[dict]:
    """The conversation's messages as the server stored them."""
    token = mint_token(tenant.key, tenant.secret, "alice", Grants.participant("standup"))
    resp = await site.get(
        f"/api/v1/conversations/{conversation_id}/messages", params={"limit": "500"}, headers=bearer(token)
    )
    assert resp.status == 200, await resp.text()
    return (await resp.json())["messages"]


async def test_two_tabs_chat_with_unread_counts_receipts_and_typing(site: TestClient, tenant: Tenant, browser: Browser):
    alice = await join_chat(browser, site, tenant, "alice")
    bob = await join_chat(browser, site, tenant, "bob")
    assert await alice.evaluate("gbroom.chat.conversationId") == await bob.evaluate("gbroom.chat.conversationId")
    for tab in (alice, bob):  # a Chat button; the panel starts closed, with nothing unread
        assert await tab.evaluate("document.querySelector('#chat-toggle').checkVisibility()")
        assert not await tab.evaluate("document.querySelector('#chat').checkVisibility()")
        assert await badge(tab) is None

    await open_panel(alice)
    await say(alice, "hello bob")
    assert await alice.evaluate("document.querySelector('#chat-input').value") == ""
    await alice.wait_for(bubble("hello bob", "?.dataset.seq"), timeout=STATE_TIMEOUT)  # acknowledged
    own = (await alice.evaluate(SHOWN))[0]
    assert (own["sender"], own["own"], own["text"]) == ("Alice (you)", True, "hello bob")
    assert own["time"]

    # Bob's panel is closed: his badge counts, and his page reports delivery, not reading.
    await bob.wait_for("document.querySelector('#chat-unread').textContent === '1'", timeout=STATE_TIMEOUT)
    assert await badge(bob) == "1"
    await alice.wait_for(bubble("hello bob", "?.dataset.status === 'delivered'"), timeout=STATE_TIMEOUT)
    assert "Delivered to Bob" in await alice.evaluate(bubble("hello bob", ".querySelector('.chat-mark').title"))
    await say(alice, "are you there?")
    await bob.wait_for("document.querySelector('#chat-unread').textContent === '2'", timeout=STATE_TIMEOUT)
    assert await badge(bob) == "2" and await bob.evaluate("gbroom.chat.unread()") == 2
    await alice.wait_for(bubble("are you there?", "?.dataset.status === 'delivered'"), timeout=STATE_TIMEOUT)
    assert [m["status"] for m in await alice.evaluate(SHOWN)] == ["delivered", "delivered"]

    # Bob opens the panel: he sees both, from Alice; the badge clears; Alice's page marks them read.
    await open_panel(bob)
    await bob.wait_for(f"{MESSAGES}.length === 2", timeout=STATE_TIMEOUT)
    shown = await bob.evaluate(SHOWN)
    assert [(m["sender"], m["text"], m["own"], m["status"]) for m in shown] == [
        ("Alice", "hello bob", False, None),
        ("Alice", "are you there?", False, None),
    ]
    assert all(m["time"] for m in shown)
    await bob.wait_for(
        "document.querySelector('#chat-unread').hidden && gbroom.chat.unread() === 0", timeout=STATE_TIMEOUT
    )
    await alice.wait_for(bubble("are you there?", "?.dataset.status === 'read'"), timeout=STATE_TIMEOUT)
    await alice.wait_for(bubble("hello bob", "?.dataset.status === 'read'"), timeout=STATE_TIMEOUT)
    mark = await alice.evaluate(bubble("hello bob", ".querySelector('.chat-mark')") + ".textContent")
    assert "read" in mark
    assert "Read by Bob" in await alice.evaluate(bubble("hello bob", ".querySelector('.chat-mark').title"))

    # Bob types: Alice sees it; his Enter sends, and the indicator goes.
    await bob.page.fill("#chat-input", "yes, I am")
    await alice.wait_for(
        "document.querySelector('#chat-typing').textContent === 'Bob is typing…'", timeout=STATE_TIMEOUT
    )
    assert await alice.evaluate("gbroom.chat.typing()") == ["Bob"]
    await bob.page.press("#chat-input", "Enter")
    await alice.wait_for(bubble("yes, I am"), timeout=STATE_TIMEOUT)
    reply = next(m for m in await alice.evaluate(SHOWN) if m["text"] == "yes, I am")
    assert (reply["sender"], reply["own"]) == ("Bob", False)
    await alice.wait_for("document.querySelector('#chat-typing').textContent === ''", timeout=STATE_TIMEOUT)
    assert await alice.evaluate("gbroom.chat.unread()") == 0  # her panel is open
    await bob.wait_for(bubble("yes, I am", "?.dataset.status === 'read'"), timeout=STATE_TIMEOUT)

    # Typing that stops without sending (the input loses focus) clears too.
    await alice.page.fill("#chat-input", "hmm")
    await bob.wait_for(
        "document.querySelector('#chat-typing').textContent === 'Alice is typing…'", timeout=STATE_TIMEOUT
    )
    await alice.evaluate("document.querySelector('#chat-input').blur()")
    await bob.wait_for("document.querySelector('#chat-typing').textContent === ''", timeout=STATE_TIMEOUT)

    # Shift+Enter is a new line, not a send.
    await alice.page.fill("#chat-input", "line one")
    await alice.page.press("#chat-input", "Shift+Enter")
    await alice.page.keyboard.type("line two")
    assert await alice.evaluate(f"{MESSAGES}.length") == 3
    await alice.page.press("#chat-input", "Enter")
    await bob.wait_for(bubble("line one\nline two"), timeout=STATE_TIMEOUT)
    # Members hear of a batch before its senders get their acks (both after the commit): Bob can show
    # the message a moment before Alice's page has its seq.
    await alice.wait_for(bubble("line one\nline two", "?.dataset.seq"), timeout=STATE_TIMEOUT)  # acknowledged

    cid = await alice.evaluate("gbroom.chat.conversationId")
    assert [(m["seq"], m["sender"]) for m in await stored(site, tenant, cid)] == [
        (1, "alice"),
        (2, "alice"),
        (3, "bob"),
        (4, "alice"),
    ]
    for tab in (alice, bob):
        assert [m["seq"] for m in await tab.evaluate("gbroom.chat.messages()")] == [1, 2, 3, 4]
        tab.assert_no_errors()


async def test_text_is_shown_as_text_and_edits_and_deletes_update_in_place(
    site: TestClient, tenant: Tenant, browser: Browser
):
    alice = await join_chat(browser, site, tenant, "alice")
    bob = await join_chat(browser, site, tenant, "bob")
    dialogs: list[str] = []
    for tab in (alice, bob):
        tab.page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await open_panel(alice)
    await open_panel(bob)

    payload = "<img src=x onerror=alert(1)>"
    await say(alice, payload)
    long_word = "x" * 400
    await alice.evaluate("text => gbroom.chat.send(text)", long_word)
    await bob.wait_for(bubble(long_word), timeout=STATE_TIMEOUT)
    for tab in (alice, bob):
        assert await tab.evaluate(bubble(payload, ".querySelector('.chat-text').textContent")) == payload
        assert await tab.evaluate("document.querySelectorAll('#chat img').length") == 0
        assert "&lt;img" in await tab.evaluate(bubble(payload, ".querySelector('.chat-text').innerHTML"))
        # A long word wraps inside its bubble; the list never scrolls sideways.
        fits = await tab.evaluate(f"""(() => {{
            const m = {bubble(long_word)}, list = document.querySelector('#chat-messages');
            const r = m.getBoundingClientRect(), l = list.getBoundingClientRect();
            return {{inside: r.right <= l.right + 1 && r.left >= l.left - 1,
                     wrapped: m.querySelector('.chat-text').getBoundingClientRect().height > 40,
                     sideways: list.scrollWidth > list.clientWidth}};
        }})()""")
        assert fits == {"inside": True, "wrapped": True, "sideways": False}, fits
    assert dialogs == []

    # An edit and a delete (here through the REST API) change the message where it stands.
    cid = await alice.evaluate("gbroom.chat.conversationId")
    alice_token = mint_token(tenant.key, tenant.secret, "alice", Grants.participant("standup"))
    resp = await site.patch(
        f"/api/v1/conversations/{cid}/messages/1", json={"content": "plain text now"}, headers=bearer(alice_token)
    )
    assert resp.status == 200, await resp.text()
    for tab in (alice, bob):
        await tab.wait_for(
            bubble("plain text now", "?.querySelector('.chat-edited').checkVisibility()"), timeout=STATE_TIMEOUT
        )
        assert await tab.evaluate(bubble("plain text now", ".dataset.seq")) == "1"
    resp = await site.delete(f"/api/v1/conversations/{cid}/messages/2", headers=bearer(alice_token))
    assert resp.status == 200, await resp.text()
    for tab in (alice, bob):
        await tab.wait_for(f"{MESSAGES}[1]?.classList.contains('deleted')", timeout=STATE_TIMEOUT)
        assert [m["text"] for m in await tab.evaluate(SHOWN)] == ["plain text now", "message deleted"]
        assert [(m["seq"], m["deleted"]) for m in await tab.evaluate("gbroom.chat.messages()")] == [
            (1, False),
            (2, True),
        ]
        tab.assert_no_errors()


async def test_messages_sent_while_the_socket_is_down_arrive_exactly_once(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    alice = await join_chat(browser, site, tenant, "alice")
    bob = await join_chat(browser, site, tenant, "bob")
    await open_panel(alice)
    await open_panel(bob)
    cid = await alice.evaluate("gbroom.chat.conversationId")

    # Bob's network goes away (until restored); he writes meanwhile, and so does Alice.
    await bob.evaluate("gbroom.simulateNetworkLoss(600000)")
    await bob.wait_for("gbroom.phase === 'reconnecting'", timeout=STATE_TIMEOUT)
    await say(bob, "sent while offline")
    await bob.wait_for(bubble("sent while offline", "?.dataset.status === 'sending'"), timeout=STATE_TIMEOUT)
    assert await bob.evaluate(bubble("sent while offline", ".dataset.seq")) is None
    await say(alice, "said while bob was away")
    await alice.wait_for(bubble("said while bob was away", "?.dataset.seq"), timeout=STATE_TIMEOUT)

    await bob.evaluate("gbroom.restoreNetwork()")
    await bob.wait_for("gbroom.resumes === 1 && gbroom.joined", timeout=STATE_TIMEOUT)
    await alice.wait_for(bubble("sent while offline"), timeout=STATE_TIMEOUT)
    await bob.wait_for(bubble("sent while offline", "?.dataset.seq"), timeout=STATE_TIMEOUT)
    await bob.wait_for(bubble("said while bob was away"), timeout=STATE_TIMEOUT)  # caught up after resuming

    # A message whose answer is lost with the socket: it goes out, then the socket drops at once.
    await bob.evaluate("() => { gbroom.chat.send('just before the drop'); gbroom.simulateNetworkLoss(300); }")
    await bob.wait_for("gbroom.resumes === 2 && gbroom.joined", timeout=STATE_TIMEOUT)
    await alice.wait_for(bubble("just before the drop"), timeout=STATE_TIMEOUT)
    await bob.wait_for(bubble("just before the drop", "?.dataset.seq"), timeout=STATE_TIMEOUT)

    # A session that could not be resumed joins again and catches up as well.
    node.live_rooms.resume_grace = 0.2
    await bob.evaluate("gbroom.simulateNetworkLoss(600000)")
    await bob.wait_for("gbroom.phase === 'reconnecting'", timeout=STATE_TIMEOUT)
    await say(bob, "queued across a rejoin")
    await say(alice, "while bob rejoins")
    await alice.wait_for(bubble("while bob rejoins", "?.dataset.seq"), timeout=STATE_TIMEOUT)
    await bob.evaluate("gbroom.restoreNetwork()")
    await bob.wait_for("gbroom.rejoins === 1 && gbroom.joined", timeout=STATE_TIMEOUT)
    await bob.wait_for(bubble("while bob rejoins"), timeout=STATE_TIMEOUT)
    await alice.wait_for(bubble("queued across a rejoin"), timeout=STATE_TIMEOUT)
    await bob.wait_for(bubble("queued across a rejoin", "?.dataset.seq"), timeout=STATE_TIMEOUT)

    texts = [
        "sent while offline",
        "said while bob was away",
        "just before the drop",
        "while bob rejoins",
        "queued across a rejoin",
    ]
    server = await stored(site, tenant, cid)
    assert sorted(m["content"] for m in server) == sorted(texts)  # each stored once
    assert [m["seq"] for m in server] == [1, 2, 3, 4, 5]
    for tab in (alice, bob):
        await tab.wait_for(f"gbroom.chat.lastSeq === 5 && {MESSAGES}.length === 5", timeout=STATE_TIMEOUT)
        shown = await tab.evaluate(SHOWN)
        assert sorted(m["text"] for m in shown) == sorted(texts)
        assert [m["seq"] for m in shown] == [1, 2, 3, 4, 5]
        assert [(m["seq"], m["content"]) for m in await tab.evaluate("gbroom.chat.messages()")] == [
            (m["seq"], m["content"]) for m in server
        ]
        tab.assert_no_errors()
