"""Meetings over networks that change or let only TCP through (issue 16, parts 3-4), with Chromium.

One page runs in its own network namespace (tests/netns.py), whose UDP a rule can cut
while the node and the other page keep theirs. Nothing on the page is set for it (no
``?ice=``): its ICE agent finds the way by itself.

- A network change in a call: the namespace's UDP is cut; the page's connections fail,
  it replaces them over the same session (aiortc has no ICE restart), and media comes
  back through the node's TURN over TCP. The other page never sees it leave, and the
  stats API and the page's own overlay name the relay path.
- No UDP and no TURN: the page says why media cannot connect, instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Playwright

from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests import netns
from tests.browser import Browser
from tests.conftest import make_settings, service_missing
from tests.docs.test_openapi import DOC, validate
from tests.helpers import Tenant
from tests.rtc import RtcClient
from tests.web.test_room_page import STATE_TIMEOUT, join_link, open_joined, wait_decoding
from tests.web.test_room_simulcast import subscription_of

RECOVERY_BOUND = 30.0  # seconds: generous; the figure measured is printed (docs/performance.md)
# Media back after a network change: the issue asks for 5 s; measured 3-6 s on the loaded two-core test
# machine (the page's silent-path check finds the dead path in about 2 s). Three times the target leaves
# the margin a loaded machine needs, and still fails if only Chromium's own detection (5.5-8 s, then
# a replacement) or its 30 s `failed` were left.
MEDIA_BACK_BOUND = 15.0


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, turnserver: str) -> Settings:
    """A node with its own coturn, or (parametrized False) with no TURN at all."""
    with_turn = getattr(request, "param", True)
    return make_settings(tmp_path, database_url, turn_embedded=with_turn, turn_relay_ports="47000-47999")


@pytest.fixture
async def namespace() -> AsyncIterator[netns.Namespace]:
    if (why := netns.missing()) is not None:
        service_missing(why)
    async with netns.namespace() as made:
        yield made


@pytest.fixture
async def browser_in_namespace(
    namespace: netns.Namespace, playwright_driver: Playwright, chromium_executable: str, tmp_path: Path
) -> AsyncIterator[Browser]:
    """Chromium started inside the namespace: its traffic obeys the namespace's rules."""
    async with Browser(playwright_driver, namespace.wrapper(chromium_executable, tmp_path)) as opened:
        yield opened
        if opened.tabs:
            print(opened.report())


FLOWING = """(async () => {
    const before = (await gbroom.stats()).video.find(v => v.name === %(name)r && v.source === 'camera');
    await new Promise(r => setTimeout(r, 300));
    const after = (await gbroom.stats()).video.find(v => v.name === %(name)r && v.source === 'camera');
    return Boolean(before && after && after.framesDecoded > before.framesDecoded && after.videoWidth > 0);
})()"""


async def test_a_network_change_moves_a_call_onto_turn_over_tcp_without_leaving(
    browser: Browser,
    browser_in_namespace: Browser,
    namespace: netns.Namespace,
    site: TestClient,
    tenant: Tenant,
    node: Node,
):
    assert node.coturn is not None
    observer = RtcClient(await site.ws_connect("/rtc"))  # sees every room event, as a third participant would
    try:
        hidden = Grants(room="standup", room_join=True, hidden=True)  # in the room, seen by nobody
        await observer.join(mint_token(tenant.key, tenant.secret, "observer", hidden), auto_subscribe=False)
        alice = await open_joined(browser, site, tenant, "alice")
        bob = await open_joined(browser_in_namespace, site, tenant, "bob")
        bob_id = await bob.evaluate("gbroom.participantId")
        await wait_decoding(alice, "Bob")
        await wait_decoding(bob, "Alice")
        direct = await bob.evaluate("gbroom.candidatePaths()")
        assert direct["publisher"]["candidateType"] != "relay", direct  # UDP works: no relay needed yet

        await namespace.block_udp()  # bob's network now lets only TCP through
        cut = time.monotonic()
        cut_on_page = await bob.evaluate("performance.now()")
        # Each of bob's connections goes on through TURN over TCP: Chromium's ICE agent moves to the relayed
        # pair it holds in reserve by itself, or (disconnected past the page's grace) the page replaces it.
        on_relay = (
            "(async () => { const p = await gbroom.candidatePaths(); return ['publisher', 'subscriber'].every("
            "d => p[d] && p[d].candidateType === 'relay' && p[d].relayProtocol === 'tcp'); })()"
        )
        await bob.wait_for(on_relay, timeout=MEDIA_BACK_BOUND)
        await alice.wait_for(FLOWING % {"name": "Bob"}, timeout=max(1.0, MEDIA_BACK_BOUND - (time.monotonic() - cut)))
        await bob.wait_for(FLOWING % {"name": "Alice"}, timeout=max(1.0, MEDIA_BACK_BOUND - (time.monotonic() - cut)))
        recovered = time.monotonic() - cut
        steps = await bob.evaluate("gbroom.recoveries")
        replaced = ", ".join(
            f"{r['target']} replaced after {(r['startedAt'] - cut_on_page) / 1000:.2f} s, connected after "
            f"{((r['connectedAt'] or 0) - cut_on_page) / 1000:.2f} s"
            for r in steps
        )
        silent = await bob.evaluate("gbroom.silentPaths")
        print(
            f"bob's UDP cut: {replaced or 'no connection replaced'} ({silent} found silent); "
            f"media flowing both ways after {recovered:.2f} s"
        )
        assert await bob.evaluate("gbroom.participantId") == bob_id
        assert await bob.evaluate("gbroom.rejoins") == 0 and await bob.evaluate("gbroom.mediaFailure") is None
        assert [p["identity"] for p in await alice.evaluate("gbroom.participants")] == ["bob"]
        assert not [e for e in observer.events if e["type"] in ("participant_left", "track_unpublished")]

        # The operator's view: which path bob's media takes now, by the node's ICE agent and by his page.
        async def relayed() -> dict[str, Any] | None:
            resp = await site.get(
                f"/api/v1/rooms/{await alice.evaluate('gbroom.room.id')}/participants/bob/stats", headers=tenant.admin
            )
            body = await resp.json()
            connections = body["connections"]
            ready = all(
                (connections[d] or {}).get("client") and connections[d]["client"]["label"] == "relay_tcp"
                for d in ("publisher", "subscriber")
            )
            return body if ready else None

        body = None
        deadline = time.monotonic() + STATE_TIMEOUT
        while body is None and time.monotonic() < deadline:
            body = await relayed()
        assert body is not None and validate(body, DOC["components"]["schemas"]["ParticipantStats"]) == []
        assert body["participant_id"] == bob_id
        assert body["connections"]["restarts"] == await bob.evaluate("gbroom.mediaRestarts")
        # What the node sends reaches bob only through the relay: its ICE agent nominated that pair.
        assert body["connections"]["subscriber"]["server"]["remote_type"] == "relay", body["connections"]
        metrics = await (await site.get("/metrics")).text()
        assert 'gbmedia_client_media_paths_total{connection="publisher",path="relay_tcp"}' in metrics
        assert 'gbmedia_client_media_paths_total{connection="subscriber",path="relay_tcp"}' in metrics
        # The page's overlay names the path.
        await bob.evaluate("gbroom.toggleStats(true)")
        await bob.wait_for(
            "[...document.querySelectorAll('#stats-rows tr[data-direction=\"path\"]')]"
            ".some(tr => tr.textContent.includes('TURN relay over TCP'))",
            timeout=STATE_TIMEOUT,
        )
    finally:
        await observer.close()


@pytest.mark.parametrize("settings", [False], indirect=True)
async def test_without_udp_and_without_turn_the_page_says_media_cannot_connect(
    node: Node, site: TestClient, tenant: Tenant, namespace: netns.Namespace, browser_in_namespace: Browser
):
    assert node.coturn is None and node.turn is None
    await namespace.block_udp()
    tab = await browser_in_namespace.open(join_link(site, tenant, "carol", autojoin="1"))
    await tab.wait_for("window.gbroom && gbroom.joined", timeout=STATE_TIMEOUT)
    started = time.monotonic()
    await tab.wait_for("gbroom.mediaFailure === 'no_turn'", timeout=RECOVERY_BOUND)
    print(f"the page gave up on media {time.monotonic() - started:.2f} s after joining")
    status = await tab.evaluate("document.getElementById('status').textContent")
    assert status == "Media could not connect: UDP to the server seems blocked and no TURN server is configured."


FLOWING_SOURCE = """(async () => {
    const find = async () => (await gbroom.stats()).video.find(v => v.name === 'Alice' && v.source === %(source)r);
    const before = await find();
    await new Promise(r => setTimeout(r, 300));
    const after = await find();
    return Boolean(before && after && after.framesDecoded > before.framesDecoded && after.videoWidth > 0) && after;
})()"""


async def test_replaced_connections_keep_the_camera_the_screen_share_and_their_track_ids(
    browser: Browser, site: TestClient, tenant: Tenant, node: Node
):
    """The page's own replacement (what a failed path triggers), with a screen share, which goes in a
    second negotiation of the new publisher connection: both tracks keep their ids and come back."""
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await alice.evaluate("gbroom.startScreenShare()")
    await alice.wait_for("gbroom.localTracks.screen_share", timeout=STATE_TIMEOUT)
    ids = await alice.evaluate("gbroom.localTracks")
    for source in ("camera", "screen_share"):
        await bob.wait_for(FLOWING_SOURCE % {"source": source}, timeout=RECOVERY_BOUND)

    assert await alice.evaluate("gbroom.recoverMedia('publisher')") is True
    assert await bob.evaluate("gbroom.recoverMedia('subscriber')") is True
    await alice.wait_for("gbroom.connectionStates.publisher === 'connected'", timeout=RECOVERY_BOUND)
    for source in ("camera", "screen_share"):
        await bob.wait_for(FLOWING_SOURCE % {"source": source}, timeout=RECOVERY_BOUND)
    assert await alice.evaluate("gbroom.localTracks") == ids  # the server kept the ids
    received = {t["id"] for p in await bob.evaluate("gbroom.participants") for t in p["tracks"]}
    assert {ids["camera"]["id"], ids["screen_share"]["id"]} <= received
    assert await alice.evaluate("gbroom.rejoins") == 0 and await bob.evaluate("gbroom.rejoins") == 0
    (live,) = node.live_rooms.live.values()
    assert sorted(p.media_restarts for p in live.participants.values()) == [1, 1]
    alice.assert_no_errors()
    bob.assert_no_errors()


QUIET_FOR_MS = 10000  # how long both connections stay quiet but healthy (the figure)


async def test_a_muted_participant_and_a_paused_video_are_not_taken_for_a_dead_path(
    browser: Browser, site: TestClient, tenant: Tenant, node: Node
):
    """The silent-path check (web/room/session.js) replaces a connection that receives nothing for 2 s.
    A quiet connection still receives: the node's RTCP sender reports on each sending track (paused or
    not) and its receiver reports on each received one (muted or not). Alice mutes her camera and
    microphone, bob hides her video (the node pauses it: no RTP at all) and mutes himself: for 10 s
    neither page replaces a connection."""
    alice = await open_joined(browser, site, tenant, "alice")
    bob = await open_joined(browser, site, tenant, "bob")
    await wait_decoding(bob, "Alice")
    await alice.evaluate("gbroom.toggleMicrophone(true); gbroom.toggleCamera(true)")
    await bob.evaluate("gbroom.toggleMicrophone(true); gbroom.toggleCamera(true)")
    camera = (await alice.evaluate("gbroom.localTracks"))["camera"]["id"]
    await bob.evaluate("() => { document.querySelector('#grid .tile:not(.self) video').style.display = 'none'; }")
    deadline = time.monotonic() + STATE_TIMEOUT
    while not ((down := subscription_of(node, "bob", camera)) is not None and down.paused):
        assert time.monotonic() < deadline, "bob's subscription to alice's camera was not paused"
        await asyncio.sleep(0.05)
    for tab in (alice, bob):
        await tab.wait_for(
            "gbroom.connectionStates.publisher === 'connected' && gbroom.connectionStates.subscriber === 'connected'",
            timeout=STATE_TIMEOUT,
        )
    started = await bob.evaluate("performance.now()")
    # Ends early should a connection be replaced; otherwise once the quiet time has passed on bob's clock.
    await bob.wait_for(
        f"gbroom.mediaRestarts > 0 || performance.now() - {started} >= {QUIET_FOR_MS}",
        timeout=QUIET_FOR_MS / 1000 + STATE_TIMEOUT,
    )
    assert down.paused
    for tab in (alice, bob):
        assert await tab.evaluate("[gbroom.mediaRestarts, gbroom.silentPaths, gbroom.recoveries]") == [0, 0, []]
    alice.assert_no_errors()
    bob.assert_no_errors()
