"""The meeting page (web/room) on a cluster: two Chromium tabs on two nodes share a room on a
third, and keep their meeting when that node is killed or drained, with no action of theirs.

The nodes are real ``gbmedia serve`` processes (tests/cluster.py) on the machine's interface
address; each tab loads the page from its own node, which relays its socket to the room's
node. What the test reads is what the page reports (``window.gbroom``) and WebRTC stats.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from gbmedia.tenancy.tokens import Grants, mint_token
from tests.browser import Browser, Tab
from tests.cluster import Cluster, create_tenant_over_http, running_cluster
from tests.helpers import OPERATOR, Tenant, bearer
from tests.signaling.test_whip import host_token, live_token
from tests.web.test_room_page import STATE_TIMEOUT, wait_decoding


@pytest.fixture
async def cluster(tmp_path: Path, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    async with running_cluster(tmp_path, database_url, redis_url) as running:
        yield running


async def open_on(browser: Browser, url: str, tenant: Tenant, identity: str) -> Tab:
    token = mint_token(tenant.key, tenant.secret, identity, Grants.participant("standup"), name=identity.title())
    tab = await browser.open(f"{url}/web/room/?" + urlencode({"token": token, "autojoin": "1"}))
    await tab.wait_for("window.gbroom && gbroom.joined", timeout=STATE_TIMEOUT)
    return tab


async def three_nodes_and_a_room(cluster: Cluster, http: aiohttp.ClientSession) -> tuple[Tenant, dict]:
    a, _b, c = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"), cluster.start("node-c"))
    await cluster.wait_registered(http, {"node-a", "node-b", "node-c"})
    tenant = await create_tenant_over_http(http, a.url)
    async with http.post(c.url + "/api/v1/rooms", json={"name": "standup"}, headers=bearer(tenant.token())) as resp:
        room = await resp.json()
    assert room["node_id"] == "node-c"  # the node neither tab talks to
    return tenant, room


async def test_tabs_on_two_nodes_meet_and_come_back_by_themselves_when_the_rooms_node_is_killed(
    cluster: Cluster, browser: Browser
):
    async with aiohttp.ClientSession() as http:
        tenant, room = await three_nodes_and_a_room(cluster, http)
        alice = await open_on(browser, cluster.nodes["node-a"].url, tenant, "alice")
        bob = await open_on(browser, cluster.nodes["node-b"].url, tenant, "bob")
        await wait_decoding(alice, "Bob")
        await wait_decoding(bob, "Alice")

        cluster.nodes["node-c"].kill()
        killed = time.monotonic()
        for tab in (alice, bob):
            await tab.wait_for("gbroom.rejoins >= 1 && gbroom.joined", timeout=60)
        await wait_decoding(alice, "Bob")
        await wait_decoding(bob, "Alice")
        print(f"media back on both tabs {time.monotonic() - killed:.1f} s after the room's node was killed")
        async with http.get(
            cluster.nodes["node-a"].url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())
        ) as resp:
            moved = await resp.json()
        assert moved["node_id"] in ("node-a", "node-b")
        assert sorted(p["identity"] for p in moved["participants"]) == ["alice", "bob"]
        for tab in (alice, bob):
            assert await tab.evaluate("gbroom.errorCode") is None
            tab.assert_no_errors()


async def test_a_drained_node_hands_the_meeting_over_without_an_error_on_either_tab(cluster: Cluster, browser: Browser):
    async with aiohttp.ClientSession() as http:
        tenant, room = await three_nodes_and_a_room(cluster, http)
        alice = await open_on(browser, cluster.nodes["node-a"].url, tenant, "alice")
        bob = await open_on(browser, cluster.nodes["node-b"].url, tenant, "bob")
        await wait_decoding(alice, "Bob")
        await wait_decoding(bob, "Alice")
        messages: set[str] = set()

        async with http.post(cluster.nodes["node-a"].url + "/api/v1/nodes/node-c/drain", headers=OPERATOR) as resp:
            assert resp.status == 202, await resp.text()
        for tab in (alice, bob):
            await tab.wait_for("gbroom.moves >= 1", timeout=60)
            messages.add(await tab.evaluate("gbroom.message"))
            await tab.wait_for("gbroom.joined", timeout=60)
        assert await cluster.nodes["node-c"].exited(within=60) == 0
        await wait_decoding(alice, "Bob")
        await wait_decoding(bob, "Alice")
        for tab in (alice, bob):
            assert await tab.evaluate("gbroom.errorCode") is None
            assert await tab.evaluate("gbroom.rejoins") >= 1
            tab.assert_no_errors()
        assert not any("lost" in m.lower() or "error" in m.lower() for m in messages), messages
        async with http.get(
            cluster.nodes["node-a"].url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())
        ) as resp:
            assert (await resp.json())["node_id"] in ("node-a", "node-b")


async def test_a_live_show_survives_the_drain_of_its_node_host_and_viewer_come_back_by_themselves(
    cluster: Cluster, browser: Browser
):
    async with aiohttp.ClientSession() as http:
        a, _b, c = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"), cluster.start("node-c"))
        await cluster.wait_registered(http, {"node-a", "node-b", "node-c"})
        tenant = await create_tenant_over_http(http, a.url)
        async with http.post(
            c.url + "/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=bearer(tenant.token())
        ) as resp:
            room = await resp.json()
        assert room["node_id"] == "node-c"
        host = await browser.open(
            f"{a.url}/web/live/?" + urlencode({"token": host_token(tenant, "star"), "autolive": "1"})
        )
        await host.wait_for("window.gblive && gblive.state.state === 'publishing'", timeout=60)
        viewer = await browser.open(
            f"{cluster.nodes['node-b'].url}/web/live/?" + urlencode({"token": live_token(tenant, "ann")})
        )
        decoding = "(async () => { const s = await gblive.stats(); return s && s.framesDecoded > {n} && s; })()"
        first = await viewer.wait_for(decoding.replace("{n}", "10"), timeout=60)
        assert first["frameWidth"] > 0

        async with http.post(a.url + "/api/v1/nodes/node-c/drain", headers=OPERATOR) as resp:
            assert resp.status == 202
        assert await c.exited(within=60) == 0
        await host.wait_for("gblive.reconnects >= 1 && gblive.state.state === 'publishing'", timeout=60)
        await viewer.wait_for("gblive.reconnects >= 1 && gblive.state.state === 'whep'", timeout=60)
        await viewer.wait_for(decoding.replace("{n}", "10"), timeout=60)  # a new player, on the new node
        async with http.get(a.url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())) as resp:
            assert (await resp.json())["node_id"] in ("node-a", "node-b")
        host.assert_no_errors()
        viewer.assert_no_errors()
