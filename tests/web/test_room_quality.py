"""Active speakers and connection statistics on the meeting page, in real Chromium.

Chromium's fake microphone beeps twice a second; the server reads the audio level
every browser puts in its packets (RFC 6464), so a page whose microphone is on is a
speaker and one whose microphone is muted (the server then forwards, and measures,
nothing of it) is not. The statistics overlay shows what the browser's own WebRTC
stack measures; the server's view of the same participant comes from the Room API.
"""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.browser import Browser, Tab
from tests.helpers import Tenant
from tests.web.test_room_page import (
    MEDIA_TIMEOUT,
    STATE_TIMEOUT,
    open_joined,
    tile,
    wait_decoding,
)

SPEAKER_TIMEOUT = 30.0


def speaking(name: str) -> str:
    """JS: whether the remote camera tile of ``name`` shows the speaking ring."""
    return tile(name, "?.dataset.speaking === 'true'")


def own_tile_speaking() -> str:
    return "document.querySelector('#grid .tile.self').dataset.speaking === 'true'"


async def wait_ring(tab: Tab, name: str, colour: str) -> None:
    """Until the ring drawn above ``name``'s video has ``colour`` (it fades in and out)."""
    js = tile(name, "&& getComputedStyle(" + tile(name) + ", '::after').borderTopColor")
    await tab.wait_for(f"({js}) === {colour!r}", timeout=STATE_TIMEOUT)


async def test_the_speaker_is_highlighted_and_the_muted_one_is_not(
    site: TestClient,
    tenant: Tenant,
    browser: Browser,
):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")
    await bob.page.click("#mic")  # bob is silent from now on: only alice's beeps reach the server
    assert await bob.evaluate("gbroom.micMuted") is True

    await bob.wait_for(speaking("Alice"), timeout=SPEAKER_TIMEOUT)
    alice_id = await alice.evaluate("gbroom.participantId")
    await bob.wait_for(
        f"gbroom.speakers.length === 1 && gbroom.speakers[0].participantId === {alice_id!r}", timeout=SPEAKER_TIMEOUT
    )
    await wait_ring(bob, "Alice", "rgb(34, 197, 94)")  # --speaking
    assert await bob.evaluate(own_tile_speaking()) is False
    await alice.wait_for(own_tile_speaking(), timeout=SPEAKER_TIMEOUT)  # the speaker sees itself too
    await alice.wait_for(f"!({speaking('Bob')})", timeout=SPEAKER_TIMEOUT)  # bob's beeps stopped with his mute
    await wait_ring(alice, "Bob", "rgba(0, 0, 0, 0)")

    # The roles swap: alice mutes, bob speaks.
    await alice.page.click("#mic")
    await bob.page.click("#mic")
    await alice.wait_for(speaking("Bob"), timeout=SPEAKER_TIMEOUT)
    await bob.wait_for(f"!({speaking('Alice')})", timeout=SPEAKER_TIMEOUT)
    await alice.wait_for(f"!({own_tile_speaking()})", timeout=SPEAKER_TIMEOUT)
    alice.assert_no_errors()
    bob.assert_no_errors()


async def test_the_stats_overlay_shows_what_the_browser_measures(
    site: TestClient,
    tenant: Tenant,
    browser: Browser,
):
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")

    assert await bob.evaluate("document.querySelector('#stats').hidden") is True
    await bob.page.click("#stats-toggle")
    assert await bob.evaluate("gbroom.statsOpen") is True
    assert await bob.evaluate("document.querySelector('#stats-toggle').getAttribute('aria-pressed')") == "true"
    # A received video row with a bitrate and a frame rate, and a sent one with the server's RTT.
    row = await bob.wait_for(
        """(() => {
        const row = document.querySelector('#stats-rows tr[data-direction="received"][data-kind="video"]');
        return row && !row.children[2].textContent.startsWith('–') && !row.children[5].textContent.startsWith('–')
            && [...row.children].map(td => td.textContent);
    })()""",
        timeout=MEDIA_TIMEOUT,
    )
    assert row[0] == "↓ Alice" and row[1].startswith("video") and row[2].endswith(" kb/s"), row
    await bob.wait_for(
        """(() => {
        const row = document.querySelector('#stats-rows tr[data-direction="sent"][data-kind="audio"]');
        return row && row.children[6].textContent.endsWith(' ms');
    })()""",
        timeout=MEDIA_TIMEOUT,
    )
    rows = await bob.wait_for(
        """(async () => {
        const rows = await gbroom.quality();
        return rows.some(r => r.direction === 'received' && r.kind === 'video' && r.bitrate > 0 && r.fps > 0)
            && rows;
    })()""",
        timeout=MEDIA_TIMEOUT,
    )
    received = next(r for r in rows if r["direction"] == "received" and r["kind"] == "video")
    assert received["name"] == "Alice" and received["source"] == "camera", received
    assert received["packets"] > 0 and received["lost"] >= 0 and received["jitterMs"] >= 0, received
    sent = [r for r in rows if r["direction"] == "sent"]
    assert {r["kind"] for r in sent} == {"audio", "video"}, sent
    assert all(r["packets"] > 0 for r in sent if r["kind"] == "audio"), sent
    # The camera goes out as simulcast layers (one row each, by rid); dynacast may pause one nobody watches.
    video_rows = [r for r in sent if r["kind"] == "video"]
    assert any(r["packets"] > 0 for r in video_rows), sent
    assert len(video_rows) == 1 or all(r["rid"] for r in video_rows), sent

    # The same participant as the server sees it, over the Room API.
    room = await alice.evaluate("gbroom.room.id")
    resp = await site.get(f"/api/v1/rooms/{room}/participants/alice/stats", headers=tenant.admin)
    stats = await resp.json()
    video = next(p for p in stats["published"] if p["kind"] == "video")
    assert video["packets_received"] > 0 and video["codec"].startswith("video/"), stats
    assert len(video["layers"]) == len(video_rows) or (len(video_rows) == 1 and video["layers"] == []), stats

    await bob.page.click("#stats-toggle")
    assert await bob.evaluate("document.querySelector('#stats').hidden") is True
    await bob.wait_for("!gbroom.statsOpen", timeout=STATE_TIMEOUT)
    alice.assert_no_errors()
    bob.assert_no_errors()
