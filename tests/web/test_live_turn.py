"""The live page through TURN only: a host's page goes live over TURN/UDP and a viewer's page plays it
over WHEP through TURN/TCP (the test-only ``?ice=relay-udp`` / ``relay-tcp``, docs/testing.md), both
with the ICE servers of their socket's ``joined``, from the node's own coturn.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.node import Node
from tests.browser import Browser
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.signaling.test_whip import host_token, live_token

MEDIA_TIMEOUT = 45.0


@pytest.fixture
def settings(tmp_path: Path, database_url: str, turnserver: str) -> Settings:
    return make_settings(tmp_path, database_url, turn_embedded=True, turn_relay_ports="45000-45999")


def page_url(site: TestClient, token: str, **query: str) -> str:
    return str(site.make_url("/web/live/")) + "?" + urlencode({"token": token, **query})


async def test_a_host_and_a_viewer_meet_through_turn_only(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    assert node.coturn is not None
    host = await browser.open(page_url(site, host_token(tenant, "star"), autolive="1", ice="relay-udp"))
    await host.wait_for("window.gblive && gblive.state.state === 'publishing'", timeout=MEDIA_TIMEOUT)
    assert (await host.evaluate("gblive.iceServers"))[0]["urls"] == list(node.coturn.urls)
    viewer = await browser.open(page_url(site, live_token(tenant, "ann"), ice="relay-tcp"))
    await viewer.wait_for("window.gblive && gblive.state.state === 'whep'", timeout=MEDIA_TIMEOUT)
    await viewer.wait_for(
        "(async () => { const s = await gblive.stats(); return s && s.framesDecoded > 10 && s.frameWidth > 0; })()",
        timeout=MEDIA_TIMEOUT,
    )
    published = (await host.evaluate("gblive.candidatePaths()"))["publisher"]
    played = (await viewer.evaluate("gblive.candidatePaths()"))["player"]
    assert published["candidateType"] == "relay" and published["relayProtocol"] == "udp", published
    assert played["candidateType"] == "relay" and played["relayProtocol"] == "tcp", played
    host.assert_no_errors()
    viewer.assert_no_errors()
