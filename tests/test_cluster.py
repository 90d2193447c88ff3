"""A cluster of real node processes: rooms spanning nodes, placement, relaying, failover, drain.

Every node here is a ``gbmedia serve`` process on this machine with the test
PostgreSQL and a Redis database of its own; participants are aiortc peers speaking
the documented protocol. Timeouts are generous (two shared cores); nothing asserts
how long anything took (the time media takes to come back after the loss of a
room's node is measured by tests/web/test_cluster_pages.py, which prints it, and
reported in docs/capacity.md).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from gbmedia.tenancy.tokens import Grants, mint_token
from tests.cluster import Cluster, ReconnectingParticipant, create_tenant_over_http, running_cluster
from tests.helpers import OPERATOR, Tenant, bearer
from tests.rtc import ColorVideoTrack, RtcClient, close_to, mean_rgb, wait_for

RED, GREEN = (220, 30, 30), (30, 200, 40)
MEDIA_TIMEOUT = 40.0


def token(tenant: Tenant, identity: str, room: str = "standup") -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants.participant(room), name=identity.title())


def candidate_ports(sdp: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp)}


def udp_range(cluster: Cluster, name: str) -> range:
    low, high = cluster.nodes[name].env["GBMEDIA_UDP_PORTS"].split("-")
    return range(int(low), int(high) + 1)


async def connect(http: aiohttp.ClientSession, url: str, room: str = "standup") -> RtcClient:
    return RtcClient(await http.ws_connect(url.replace("http", "ws", 1) + f"/rtc?room={room}"))


@pytest.fixture
async def cluster(tmp_path: Path, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    async with running_cluster(tmp_path, database_url, redis_url) as running:
        yield running


async def test_two_clients_on_two_nodes_share_one_room_and_media_goes_to_its_node(cluster: Cluster):
    a, b = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"))
    clients: list[RtcClient] = []
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b"})
        tenant = await create_tenant_over_http(http, a.url)
        # Created through node B, the room is placed (on B: the asking node keeps an equal choice).
        async with http.post(b.url + "/api/v1/rooms", json={"name": "standup"}, headers=bearer(tenant.token())) as resp:
            assert resp.status == 201, await resp.text()
            room = await resp.json()
        owner = room["node_id"]
        assert owner in ("node-a", "node-b")
        other = "node-a" if owner == "node-b" else "node-b"
        # Read through either node, the room names its node.
        for node in (a, b):
            async with http.get(node.url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())) as resp:
                assert (await resp.json())["node_id"] == owner

        try:
            alice = await connect(http, a.url)
            bob = await connect(http, b.url)
            clients += [alice, bob]
            assert (await alice.join(token(tenant, "alice")))["type"] == "joined"
            alice_reply = await alice.publish(ColorVideoTrack(RED))
            joined = await bob.join(token(tenant, "bob"))
            assert [p["identity"] for p in joined["participants"]] == ["alice"]
            bob_reply = await bob.publish(ColorVideoTrack(GREEN))
            alice_video, bob_video = alice_reply["tracks"][0]["id"], bob_reply["tracks"][0]["id"]

            await wait_for(lambda: len(bob.decoded(alice_video)) >= 5, within=MEDIA_TIMEOUT)
            await wait_for(lambda: len(alice.decoded(bob_video)) >= 5, within=MEDIA_TIMEOUT)
            assert close_to(mean_rgb(bob.decoded(alice_video)[-1]), RED)
            assert close_to(mean_rgb(alice.decoded(bob_video)[-1]), GREEN)

            # Both clients' media goes to the owner's UDP ports, whichever node took their socket.
            for answer in (alice_reply["sdp"], bob_reply["sdp"]):
                ports = candidate_ports(answer)
                assert ports and all(port in udp_range(cluster, owner) for port in ports), ports
                assert not any(port in udp_range(cluster, other) for port in ports)

            # The owner lists both participants; asked through the other node, the same answer.
            for node in (a, b):
                async with http.get(
                    node.url + f"/api/v1/rooms/{room['id']}/participants", headers=bearer(tenant.token())
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert sorted(p["identity"] for p in (await resp.json())["participants"]) == ["alice", "bob"]
        finally:
            for client in clients:
                await client.close()


async def test_a_request_with_a_bad_cluster_secret_is_refused_and_logged(cluster: Cluster):
    a = await cluster.start("node-a")
    async with aiohttp.ClientSession() as http:
        forged = {
            "X-Gbmedia-Cluster-Node": "intruder",
            "X-Gbmedia-Cluster-Time": "0",
            "X-Gbmedia-Cluster-Signature": "00" * 32,
        }
        async with http.get(a.url + "/api/v1/nodes", headers={**OPERATOR, **forged}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "cluster_auth_failed"
        async with http.get(a.url.replace("http", "ws", 1) + "/rtc", headers=forged) as resp:
            assert resp.status == 403
        # Signed with another cluster's secret: refused too, and the node says so in its log.
        from gbmedia.signaling.relay import ClusterAuth

        wrong = ClusterAuth("another-cluster-secret-0123", "node-x").headers("GET", "/api/v1/nodes")
        async with http.get(a.url + "/api/v1/nodes", headers={**OPERATOR, **wrong}) as resp:
            assert resp.status == 403
        async with http.get(a.url + "/healthz") as resp:
            assert resp.status == 200  # the node is fine
    await wait_for(
        lambda: any(r.get("msg") == "relayed request refused: bad cluster signature" for r in a.log_records())
    )


async def _room_on(http: aiohttp.ClientSession, url: str, tenant: Tenant) -> dict:
    async with http.post(url + "/api/v1/rooms", json={"name": "standup"}, headers=bearer(tenant.token())) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def _room(http: aiohttp.ClientSession, url: str, tenant: Tenant, room_id: str) -> dict:
    async with http.get(url + f"/api/v1/rooms/{room_id}", headers=bearer(tenant.token())) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_when_the_rooms_node_is_killed_the_room_moves_and_both_clients_get_media_back(cluster: Cluster):
    a, b, c = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"), cluster.start("node-c"))
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b", "node-c"})
        tenant = await create_tenant_over_http(http, a.url)
        room = await _room_on(http, c.url, tenant)  # placed on C, which neither client talks to
        assert room["node_id"] == "node-c"
        alice = ReconnectingParticipant(http, [a.url], token(tenant, "alice"), RED)
        bob = ReconnectingParticipant(http, [b.url], token(tenant, "bob"), GREEN)
        try:
            await alice.start()
            await bob.start()
            await wait_for(lambda: alice.frames_since(0) >= 5 and bob.frames_since(0) >= 5, within=MEDIA_TIMEOUT)

            c.kill()
            killed = time.monotonic()
            # Nobody does anything: both clients are back in the room, on a live node, and decode each other.
            await wait_for(
                lambda: alice.frames_of_sessions_since(killed) >= 10 and bob.frames_of_sessions_since(killed) >= 10,
                within=MEDIA_TIMEOUT,
            )
            assert len(alice.sessions) >= 2 and len(bob.sessions) >= 2
            moved = await _room(http, a.url, tenant, room["id"])
            assert moved["status"] == "open" and moved["node_id"] in ("node-a", "node-b")
            assert sorted(p["identity"] for p in moved["participants"]) == ["alice", "bob"]
            assert close_to(mean_rgb(next(iter(alice.client.frames.values()))[-1]), GREEN)
            assert close_to(mean_rgb(next(iter(bob.client.frames.values()))[-1]), RED)
            assert alice.errors == [] and bob.errors == []
            # C is gone from the registry, and no open room is left on it.
            nodes = {n["node_id"] for n in await cluster.live_nodes(http, "node-a")}
            assert "node-c" not in nodes
        finally:
            await alice.close()
            await bob.close()


async def test_a_dead_nodes_idle_rooms_are_adopted_and_close_so_they_stop_counting(cluster: Cluster):
    a, c = await asyncio.gather(cluster.start("node-a"), cluster.start("node-c"))
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-c"})
        tenant = await create_tenant_over_http(http, a.url)
        async with http.post(
            c.url + "/api/v1/rooms", json={"name": "orphan", "empty_timeout": 1}, headers=bearer(tenant.token())
        ) as resp:
            room = await resp.json()
        assert room["node_id"] == "node-c"
        c.kill()
        # Within a few heartbeats A adopts the room, and its idle sweep closes it (nobody came back).
        for _poll in range(200):
            closed = await _room(http, a.url, tenant, room["id"])
            if closed["status"] == "closed":
                break
            await asyncio.sleep(0.3)
        assert closed["status"] == "closed" and closed["node_id"] == "node-a"


async def test_drain_moves_the_room_while_both_clients_keep_receiving(cluster: Cluster):
    a, b = await asyncio.gather(cluster.start("node-a"), cluster.start("node-b"))
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b"})
        tenant = await create_tenant_over_http(http, a.url)
        room = await _room_on(http, a.url, tenant)
        assert room["node_id"] == "node-a"
        # The clients' "load balancer": their own node first, the other when it refuses.
        alice = ReconnectingParticipant(http, [a.url, b.url], token(tenant, "alice"), RED)
        bob = ReconnectingParticipant(http, [b.url, a.url], token(tenant, "bob"), GREEN)
        try:
            await alice.start()
            await bob.start()
            await wait_for(lambda: alice.frames_since(0) >= 5 and bob.frames_since(0) >= 5, within=MEDIA_TIMEOUT)

            async with http.post(a.url + "/api/v1/nodes/no-such-node/drain", headers=OPERATOR) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "node_not_found"
            async with http.post(a.url + "/api/v1/nodes/node-a/drain", headers=OPERATOR) as resp:
                assert resp.status == 202, await resp.text()
                assert await resp.json() == {"node_id": "node-a", "drain_requested": True}
            asked = time.monotonic()
            assert await a.exited(within=60) == 0  # A empties and exits by itself
            # Frames of the sessions joined after the move (the old ones kept playing until A left).
            await wait_for(
                lambda: alice.frames_of_sessions_since(asked) >= 10 and bob.frames_of_sessions_since(asked) >= 10,
                within=MEDIA_TIMEOUT,
            )
            assert (await _room(http, b.url, tenant, room["id"]))["node_id"] == "node-b"
            assert alice.moves >= 1 and bob.moves >= 1  # told to move, not dropped
            assert alice.errors == [] and bob.errors == []
        finally:
            await alice.close()
            await bob.close()


async def test_placement_fills_the_instances_region_by_capacity_then_the_next_and_a_full_cluster_refuses(
    cluster: Cluster,
):
    # Capacities in placement's cost units: a new meeting is charged 24 until its node reports it.
    _a, _b, c = await asyncio.gather(
        cluster.start("node-a", region="eu-west", node_capacity="30"),
        cluster.start("node-b", region="eu-west", node_capacity="60"),
        cluster.start("node-c", region="us-east", node_capacity="50"),
    )
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b", "node-c"})
        async with http.post(c.url + "/api/v1/customers", json={"name": "eu", "tier": "pro"}, headers=OPERATOR) as r:
            customer = await r.json()
        async with http.post(
            c.url + f"/api/v1/customers/{customer['id']}/instances",
            json={"name": "eu-main", "region": "eu-west"},
            headers=OPERATOR,
        ) as resp:
            body = await resp.json()
        creds = body["credentials"]
        tenant = Tenant(customer["id"], body["instance"]["id"], creds["key"], creds["secret"])

        placed = []
        for index in range(5):  # all created through the us-east node
            async with http.post(
                c.url + "/api/v1/rooms", json={"name": f"r{index}"}, headers=bearer(tenant.token())
            ) as resp:
                assert resp.status == 201, await resp.text()
                placed.append((await resp.json())["node_id"])
        # eu-west first (A fits one, B two), then the next region; never over a node's capacity.
        assert placed == ["node-a", "node-b", "node-b", "node-c", "node-c"], placed
        async with http.post(c.url + "/api/v1/rooms", json={"name": "r5"}, headers=bearer(tenant.token())) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "cluster_full"
        # The registry shows what each node carries (its placed rooms), through any node.
        nodes = {n["node_id"]: n for n in await cluster.live_nodes(http, "node-a")}
        assert {n: nodes[n]["region"] for n in nodes} == {"node-a": "eu-west", "node-b": "eu-west", "node-c": "us-east"}
        assert nodes["node-b"]["load"]["cost"] >= 48 and nodes["node-a"]["load_share"] > 0.5
