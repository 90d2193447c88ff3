"""The live page over networks that change or let only TCP through (issue 16), with Chromium.

The viewer's (or host's) page runs in its own network namespace (tests/netns.py), whose UDP a rule can
cut while the node and the other page keep theirs. Nothing on the pages is set for it (no ``?ice=``).

- A network change on a live: the host's and the viewer's UDP is cut (both pages in the namespace);
  the viewer's WHEP session goes silent and the page starts a new one (the server has no ICE restart),
  the host's publisher connection is replaced with a `publish` restart (same track ids), both through
  the node's TURN over TCP, and playback goes on over WebRTC.
- No UDP and no TURN: the host's page says its media cannot connect (instead of a spinner), and a
  viewer's page says so too and plays over HLS (plain HTTP) instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.node import Node
from tests import netns
from tests.browser import Browser
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.signaling.test_whip import host_token, live_token
from tests.web.test_live_turn import page_url
from tests.web.test_room_paths import MEDIA_BACK_BOUND, browser_in_namespace, namespace  # noqa: F401 (fixtures)

MEDIA_TIMEOUT = 45.0
NO_TURN = "Media could not connect: UDP to the server seems blocked and no TURN server is configured."

PLAYING = """(async () => {
    const before = await gblive.stats();
    await new Promise(r => setTimeout(r, 300));
    const after = await gblive.stats();
    return gblive.state.state === 'whep' && Boolean(before && after && after.framesDecoded > before.framesDecoded
        && after.frameWidth > 0);
})()"""


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, turnserver: str) -> Settings:
    """A node with its own coturn, or (parametrized False) with no TURN at all."""
    with_turn = getattr(request, "param", True)
    return make_settings(tmp_path, database_url, turn_embedded=with_turn, turn_relay_ports="48000-48999")


async def test_a_network_change_on_a_live_moves_host_and_viewer_onto_turn_over_tcp(
    site: TestClient,
    tenant: Tenant,
    browser_in_namespace: Browser,  # noqa: F811
    namespace: netns.Namespace,  # noqa: F811
    node: Node,
):
    assert node.coturn is not None
    host = await browser_in_namespace.open(page_url(site, host_token(tenant, "star"), autolive="1"))
    await host.wait_for(
        "window.gblive && gblive.state.state === 'publishing' && gblive.publisher.connectionState === 'connected'",
        timeout=MEDIA_TIMEOUT,
    )
    ids = await host.evaluate("gblive.publishedIds")
    viewer = await browser_in_namespace.open(page_url(site, live_token(tenant, "ann")))
    await viewer.wait_for(PLAYING, timeout=MEDIA_TIMEOUT)
    direct = await viewer.evaluate("gblive.candidatePaths()")
    assert direct["player"]["candidateType"] != "relay", direct  # UDP works: no relay needed yet
    direct = await host.evaluate("gblive.candidatePaths()")
    assert direct["publisher"]["candidateType"] != "relay", direct

    await namespace.block_udp()  # the network of both now lets only TCP through
    cut = time.monotonic()
    cut_on_page = {tab: await tab.evaluate("performance.now()") for tab in (host, viewer)}
    for tab, connection in ((host, "publisher"), (viewer, "player")):
        await tab.wait_for(
            f"(async () => {{ const p = (await gblive.candidatePaths()).{connection};"
            " return Boolean(p && p.candidateType === 'relay' && p.relayProtocol === 'tcp'); })()",
            timeout=max(1.0, MEDIA_BACK_BOUND - (time.monotonic() - cut)),
        )
    await viewer.wait_for(PLAYING, timeout=max(1.0, MEDIA_BACK_BOUND - (time.monotonic() - cut)))
    recovered = time.monotonic() - cut
    replaced = []
    for tab in (host, viewer):
        for r in await tab.evaluate("gblive.state.recoveries"):
            started, connected = r["startedAt"] - cut_on_page[tab], (r["connectedAt"] or 0) - cut_on_page[tab]
            replaced.append(
                f"{r['target']} replaced after {started / 1000:.2f} s ({r['reason']}), "
                f"connected after {connected / 1000:.2f} s"
            )
    print(f"the live's UDP cut: {', '.join(replaced) or 'nothing replaced'}; playing again after {recovered:.2f} s")
    state = await viewer.evaluate("gblive.state")
    assert state["transport"] == "whep" and state["mediaFailure"] is None
    for tab in (host, viewer):
        assert await tab.evaluate("gblive.reconnects") == 0  # the sockets (TCP) never dropped
    assert await host.evaluate("gblive.publishedIds") == ids  # a restart keeps the host's track ids
    # The old WHEP session went with its DELETE: the node keeps one per viewer.
    (live,) = node.live_rooms.live.values()
    assert [p.identity for p in live.participants.values()].count("ann") <= 1
    host.assert_no_errors()
    viewer.assert_no_errors()


@pytest.mark.parametrize("settings", [False], indirect=True)
async def test_without_udp_and_without_turn_the_live_page_says_media_cannot_connect(
    site: TestClient,
    tenant: Tenant,
    browser: Browser,
    browser_in_namespace: Browser,  # noqa: F811
    namespace: netns.Namespace,  # noqa: F811
    node: Node,
):
    assert node.coturn is None and node.turn is None
    await namespace.block_udp()
    # A host whose network lets no UDP through (room "blocked"), and a viewer likewise of a host who can
    # reach the node (room "show"): both wait at once.
    stuck_host = await browser_in_namespace.open(page_url(site, host_token(tenant, "sam", "blocked"), autolive="1"))
    host = await browser.open(page_url(site, host_token(tenant, "star"), autolive="1"))
    await host.wait_for(
        "window.gblive && gblive.state.state === 'publishing' && gblive.publisher.connectionState === 'connected'",
        timeout=MEDIA_TIMEOUT,
    )
    viewer = await browser_in_namespace.open(page_url(site, live_token(tenant, "ann")))
    await stuck_host.wait_for("window.gblive && gblive.state.mediaFailure === 'no_turn'", timeout=MEDIA_TIMEOUT)
    assert await stuck_host.evaluate("document.getElementById('status').textContent") == NO_TURN
    await viewer.wait_for(
        "window.gblive && gblive.state.mediaFailure === 'no_turn' && gblive.state.state === 'hls'",
        timeout=MEDIA_TIMEOUT,
    )
    assert await viewer.evaluate("document.getElementById('status').textContent") == (
        NO_TURN + " Playing over HLS instead."
    )
    assert await viewer.evaluate("gblive.state.error.code") == "timeout"
    host.assert_no_errors()
