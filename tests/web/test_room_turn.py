"""The meeting page through TURN only: two Chromium tabs forced onto relayed candidates (the test-only
``?ice=relay-udp`` / ``relay-tcp``, docs/testing.md) meet through the node's own coturn
with the credentials of their ``joined``, and WebRTC's statistics name the relay path they use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.node import Node
from tests.browser import Browser, Tab
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.web.test_room_page import open_joined, wait_decoding


async def assert_relayed(tabs: tuple[Tab, ...], relay_protocol: str) -> None:
    """Both of each page's connections carry media through TURN, reaching it over ``relay_protocol``."""
    for tab in tabs:
        paths = await tab.evaluate("gbroom.candidatePaths()")
        for direction in ("publisher", "subscriber"):
            path = paths[direction]
            assert path is not None and path["candidateType"] == "relay", paths
            assert path["relayProtocol"] == relay_protocol and path["bytesReceived"] > 0, paths


@pytest.fixture
def settings(tmp_path: Path, database_url: str, turnserver: str) -> Settings:
    return make_settings(tmp_path, database_url, turn_embedded=True, turn_relay_ports="43000-43999")


# Not relay-tls: Chromium refuses the embedded coturn's self-signed certificate on turns: (measured: no
# relayed candidate, nothing decoded), so TURN over TLS is tested with aioice (tests/turn/test_coturn.py).
@pytest.mark.parametrize(("ice", "relay_protocol"), [("relay-udp", "udp"), ("relay-tcp", "tcp")])
async def test_two_pages_see_each_other_through_turn_only(
    browser: Browser, site: TestClient, tenant: Tenant, node: Node, ice: str, relay_protocol: str
):
    assert node.coturn is not None
    alice = await open_joined(browser, site, tenant, "alice", ice=ice)
    bob = await open_joined(browser, site, tenant, "bob", ice=ice)
    servers = await alice.evaluate("gbroom.iceServers")
    assert servers[0]["urls"] == list(node.coturn.urls) and servers[0]["username"].endswith(
        ":" + await alice.evaluate("gbroom.participantId")
    )
    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    await assert_relayed((alice, bob), relay_protocol)
    # Renewed credentials reach the page (and its connections' configuration) without a new join.
    assert await alice.evaluate("gbroom.refreshIceServers().then(() => gbroom.iceRefreshes)") == 1
    alice.assert_no_errors()
    bob.assert_no_errors()
