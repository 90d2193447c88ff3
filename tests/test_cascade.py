"""Cascading live rooms across real node processes: a live audience that outgrows its node.

Every node is a ``gbmedia serve`` process with the test PostgreSQL and a Redis
database of the cluster's own; the host, the viewers and the WHEP players are aiortc
peers. Which node serves a viewer is read from its media: the ports of the ICE
candidates the server gave it lie in that node's UDP range. Waits are generous (two
shared cores) and nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
import redis.asyncio as aioredis
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from gbmedia.tenancy.tokens import Grants, mint_token
from tests.cluster import Cluster, create_tenant_over_http, running_cluster
from tests.helpers import Tenant, bearer
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, close_to, mean_rgb, offer_from, wait_for

RED, GREEN = (220, 30, 30), (30, 200, 40)
MEDIA_TIMEOUT = 60.0
SDP = {"Content-Type": "application/sdp"}


def host_token(tenant: Tenant, identity: str = "star", room: str = "show") -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants.participant(room), name=identity.title())


def viewer_token(tenant: Tenant, identity: str, room: str = "show") -> str:
    grants = Grants(room=room, room_join=True, can_subscribe=True, can_publish_data=True)
    return mint_token(tenant.key, tenant.secret, identity, grants, name=identity.title())


def candidate_ports(sdp: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp)}


def served_by(cluster: Cluster, sdp: str) -> str:
    """The node whose UDP range holds every candidate of the server's ``sdp``."""
    ports = candidate_ports(sdp)
    assert ports, sdp
    for name, node in cluster.nodes.items():
        low, high = (int(x) for x in node.env["GBMEDIA_UDP_PORTS"].split("-"))
        if all(low <= port <= high for port in ports):
            return name
    raise AssertionError(f"candidate ports {ports} lie in no node's range")


def video_frames(client: RtcClient) -> list[av.VideoFrame]:
    return [f for frames in client.frames.values() for f in frames if isinstance(f, av.VideoFrame)]


def shows(frames: list[av.VideoFrame], colour: tuple[int, int, int]) -> bool:
    return bool(frames) and close_to(mean_rgb(frames[-1]), colour)


async def metric(http: aiohttp.ClientSession, url: str, series: str) -> float | None:
    """One series of a node's /metrics (``name`` or ``name{label="value"}``), None when absent."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def eventually(check, within: float = MEDIA_TIMEOUT, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    """Until the coroutine function ``check`` returns true."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(interval)


class PliCounter:
    """Counts the keyframe requests (PLI) a publisher's aiortc sender receives."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.count = 0
        for sender in pc.getSenders():
            if sender.kind == "video":
                original = sender._handle_rtcp_packet

                async def handle(packet: Any, original: Any = original) -> None:
                    if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                        self.count += 1
                    await original(packet)

                sender._handle_rtcp_packet = handle


async def keyframe_request_reaches(publisher: PliCounter, pc: RTCPeerConnection) -> None:
    """Ask for a keyframe from ``pc``'s video receiver until the publisher gets a PLI more than before.

    Each hop rate-limits keyframe requests (two a second), so one request may be
    absorbed; it is repeated, each time waiting for the count to move.
    """
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
    ssrc = next(iter(s.source for s in receiver.getSynchronizationSources()))
    for _attempt in range(20):
        before = publisher.count
        await receiver._send_rtcp_pli(ssrc)
        with contextlib.suppress(TimeoutError):
            await eventually(lambda before=before: _above(publisher, before), within=3.0, interval=0.05)
            return
    raise AssertionError("no keyframe request reached the publisher")


async def _above(publisher: PliCounter, before: int) -> bool:
    return publisher.count > before


async def connect(http: aiohttp.ClientSession, url: str) -> RtcClient:
    return RtcClient(await http.ws_connect(url.replace("http", "ws", 1) + "/rtc?room=show"))


async def subscriber_offer(client: RtcClient) -> dict[str, Any]:
    return await client.wait_event(lambda e: e["type"] == "offer", within=MEDIA_TIMEOUT)


@dataclass
class Player:
    """A WHEP player (aiortc), as tests/signaling/test_whip.py has one, over absolute URLs."""

    pc: RTCPeerConnection
    location: str = ""
    answer: str = ""
    frames: list[av.VideoFrame] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def play(http: aiohttp.ClientSession, url: str, token: str, opened: list[Player]) -> Player:
    pc = RTCPeerConnection(NO_STUN)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    player = Player(pc)
    opened.append(player)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await track.recv()
                    if isinstance(frame, av.VideoFrame):
                        player.frames.append(frame)

        player.tasks.append(asyncio.ensure_future(pull()))

    async with http.post(url + "/whep/show", data=await offer_from(pc), headers={**bearer(token), **SDP}) as resp:
        assert resp.status == 201, await resp.text()
        player.answer = await resp.text()
        player.location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=player.answer, type="answer"))
    return player


@pytest.fixture
async def cluster(tmp_path: Path, database_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, database_url, redis_url) as running:
        yield running


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for item in opened:
        with contextlib.suppress(Exception):
            await item.close()


async def open_live_room(http: aiohttp.ClientSession, url: str, tenant: Tenant) -> dict[str, Any]:
    async with http.post(
        url + "/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=bearer(tenant.token())
    ) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def go_live(http: aiohttp.ClientSession, url: str, tenant: Tenant, clients: list[Any], colour, identity="star"):  # type: ignore[no-untyped-def]
    """A host joins through ``url`` and publishes a camera of ``colour``; its PLIs are counted."""
    host = await connect(http, url)
    clients.append(host)
    assert (await host.join(host_token(tenant, identity), kind="live"))["type"] == "joined"
    host.publisher = RTCPeerConnection(NO_STUN)
    reply = await host.publish(ColorVideoTrack(colour))
    assert reply["type"] == "publish_answer", reply
    return host, PliCounter(host.publisher)


async def test_viewers_past_the_limit_are_served_by_an_edge_that_pulls_the_program(
    cluster: Cluster, clients: list[Any]
):
    limits = {"cascade_viewers": "2", "cascade_linger_seconds": "1"}
    a, b = await asyncio.gather(cluster.start("node-a", **limits), cluster.start("node-b", **limits))
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b"})
        tenant = await create_tenant_over_http(http, a.url)
        room = await open_live_room(http, a.url, tenant)
        assert room["node_id"] == "node-a"  # the origin
        host, publisher = await go_live(http, a.url, tenant, clients, RED)

        # Four viewers, each through either node: the first two are the origin's, the next two an edge's.
        viewers: list[RtcClient] = []
        for index, via in enumerate((a, b, a, b)):
            viewer = await connect(http, via.url)
            clients.append(viewer)
            joined = await viewer.join(viewer_token(tenant, f"fan{index}"))
            assert joined["type"] == "joined", joined
            assert [p["identity"] for p in joined["participants"]] == ["star"]  # the host, on either node
            viewers.append(viewer)
        origin_fans, edge_fans = viewers[:2], viewers[2:]
        for viewer, node in zip(viewers, ("node-a", "node-a", "node-b", "node-b"), strict=True):
            assert served_by(cluster, (await subscriber_offer(viewer))["sdp"]) == node
        for viewer in viewers:
            await wait_for(lambda viewer=viewer: len(video_frames(viewer)) >= 5, within=MEDIA_TIMEOUT)
            assert shows(video_frames(viewer), RED)

        # The room's tree in Redis: B pulls from A; A says it has one edge.
        store = aioredis.from_url(cluster.redis_url)
        try:
            assert await store.hgetall(f"gbmedia:edges:{room['id']}") == {b"node-b": b"node-a"}
        finally:
            await store.aclose()
        edges = f'gbmedia_live_room_edges{{room="{room["id"]}"}}'
        await eventually(lambda: _equals(metric(http, a.url, edges), 1))
        assert await metric(http, b.url, "gbmedia_cascade_pulls") == 1

        # Everyone sees the room's total, whichever node serves them.
        for watcher in (host, *viewers):
            await watcher.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 4, within=MEDIA_TIMEOUT)

        # A keyframe request from an edge's viewer reaches the publisher on the origin.
        await keyframe_request_reaches(publisher, edge_fans[0].subscriber)

        # Hearts cross nodes both ways; so does the room's chat.
        assert (await edge_fans[0].request({"type": "reaction", "kind": "heart"}))["type"] == "ack"
        await origin_fans[0].wait_event(lambda e: e["type"] == "reaction" and e["kind"] == "heart", within=30)
        await host.wait_event(lambda e: e["type"] == "reaction" and e["kind"] == "heart", within=30)
        assert (await origin_fans[1].request({"type": "reaction", "kind": "fire"}))["type"] == "ack"
        await edge_fans[1].wait_event(lambda e: e["type"] == "reaction" and e["kind"] == "fire", within=30)
        conversation = next(e for e in edge_fans[0].events if e["type"] == "joined")["chat"]["conversation_id"]
        chat = {"type": "chat_send", "conversation_id": conversation, "content": "hello from the edge"}
        sent = await edge_fans[0].request({**chat, "idempotency_key": "e1"})
        assert sent["type"] == "chat_ack", sent
        message = await origin_fans[0].wait_event(lambda e: e["type"] == "chat_message", within=30)
        assert message["message"]["content"] == "hello from the edge"

        # The edge's viewers leave: after its linger the edge lets the room go, and the counts follow.
        for viewer in edge_fans:
            assert (await viewer.request({"type": "leave"}))["type"] == "left"
        await origin_fans[0].wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 2, within=30)
        await eventually(lambda: _equals(metric(http, b.url, "gbmedia_cascade_pulls"), 0))
        await eventually(lambda: _equals(metric(http, b.url, "gbmedia_live_rooms"), 0))
        await eventually(lambda: _equals(metric(http, a.url, "gbmedia_cascade_feeds"), 0))
        store = aioredis.from_url(cluster.redis_url)
        try:
            assert await store.hgetall(f"gbmedia:edges:{room['id']}") == {}
        finally:
            await store.aclose()
        assert shows(video_frames(origin_fans[0]), RED)  # the origin's viewers never noticed


async def _equals(value: Any, expected: float) -> bool:
    return (await value) == expected


async def test_players_go_to_edges_edges_feed_edges_and_follow_a_new_host(cluster: Cluster, clients: list[Any]):
    limits = {"cascade_viewers": "1", "cascade_fanout": "1", "cascade_linger_seconds": "1"}
    a, b, c = await asyncio.gather(
        cluster.start("node-a", **limits), cluster.start("node-b", **limits), cluster.start("node-c", **limits)
    )
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"node-a", "node-b", "node-c"})
        tenant = await create_tenant_over_http(http, a.url)
        room = await open_live_room(http, a.url, tenant)
        assert room["node_id"] == "node-a"
        host, publisher = await go_live(http, a.url, tenant, clients, RED)

        # One player a node: A's own, then B (fed by A), then C (fed by B: A feeds its one edge already).
        players = [await play(http, via.url, viewer_token(tenant, f"p{i}"), clients) for i, via in enumerate((c, a, a))]
        assert [served_by(cluster, p.answer) for p in players] == ["node-a", "node-b", "node-c"]
        store = aioredis.from_url(cluster.redis_url)
        try:
            assert await store.hgetall(f"gbmedia:edges:{room['id']}") == {b"node-b": b"node-a", b"node-c": b"node-b"}
        finally:
            await store.aclose()
        for player in players:
            await wait_for(lambda player=player: len(player.frames) >= 5, within=MEDIA_TIMEOUT)
            assert shows(player.frames, RED)
        await host.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 3, within=MEDIA_TIMEOUT)

        # Two hops away, a player's keyframe request still reaches the publisher.
        await keyframe_request_reaches(publisher, players[2].pc)

        # The host hands over: a new host goes live in green, and every edge follows.
        await host.request({"type": "leave"})
        await go_live(http, a.url, tenant, clients, GREEN, identity="guest")
        for player in players:
            await wait_for(lambda player=player: shows(player.frames, GREEN), within=MEDIA_TIMEOUT)

        # A player's session is found through any node (its Location names the edge that holds it). B's last
        # player leaves, but B stays: C pulls from it.
        assert "node=node-b" in players[1].location
        async with http.delete(a.url + players[1].location, headers=bearer(viewer_token(tenant, "p1"))) as resp:
            assert resp.status == 200, await resp.text()
        await eventually(lambda: _equals(metric(http, b.url, "gbmedia_whep_sessions"), 0))
        await asyncio.sleep(3)  # three lingers: an edge that feeds another is never released
        assert await metric(http, b.url, "gbmedia_cascade_feeds") == 1
        assert await metric(http, b.url, "gbmedia_live_rooms") == 1

        # B dies: C pulls from the room's own node instead, and its player keeps watching.
        b.kill()
        killed = len(players[2].frames)
        await eventually(lambda: _tree_is(cluster, room["id"], {b"node-c": b"node-a"}))
        await wait_for(lambda: len(players[2].frames) >= killed + 30, within=MEDIA_TIMEOUT)
        assert shows(players[2].frames, GREEN)

        # The room closes: the edges' copies close with it.
        async with http.delete(a.url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())) as resp:
            assert resp.status in (200, 204), await resp.text()
        await eventually(lambda: _equals(metric(http, c.url, "gbmedia_live_rooms"), 0))
        await eventually(lambda: _equals(metric(http, c.url, "gbmedia_cascade_pulls"), 0))


async def _tree_is(cluster: Cluster, room_id: str, tree: dict[bytes, bytes]) -> bool:
    store = aioredis.from_url(cluster.redis_url)
    try:
        return bool(await store.hgetall(f"gbmedia:edges:{room_id}") == tree)
    finally:
        await store.aclose()


async def test_two_workers_of_one_machine_serve_one_live_rooms_players(cluster: Cluster, clients: list[Any]):
    """``gbmedia serve --workers 2``: WHEP players of one live room, all through the shared port, are
    served by both workers once the first holds its share (the other worker is the edge)."""
    server = await cluster.start("box", args=("--workers", "2"), cascade_viewers="2", cascade_linger_seconds="1")
    low, high = (int(x) for x in server.env["GBMEDIA_UDP_PORTS"].split("-"))
    middle = low + (high - low + 1) // 2  # the supervisor gives each worker one half, w0 the lower
    async with aiohttp.ClientSession() as http:
        await cluster.wait_registered(http, {"box-w0", "box-w1"})
        tenant = await create_tenant_over_http(http, server.url)
        await open_live_room(http, server.url, tenant)
        await go_live(http, server.url, tenant, clients, RED)
        players = []
        for index in range(4):
            player = await play(http, server.url, viewer_token(tenant, f"p{index}"), clients)
            players.append(player)
        halves = []
        for player in players:
            ports = candidate_ports(player.answer)
            assert ports and (all(p < middle for p in ports) or all(p >= middle for p in ports)), ports
            halves.append("w0" if min(ports) < middle else "w1")
        assert sorted(halves) == ["w0", "w0", "w1", "w1"], halves  # two each: the origin's share, then the edge
        for player in players:
            await wait_for(lambda player=player: shows(player.frames, RED), within=MEDIA_TIMEOUT)
