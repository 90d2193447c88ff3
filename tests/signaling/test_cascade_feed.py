"""The feed an edge node pulls from a live room's node (signaling/cascade.py), on one real node.

The "edge" here is an aiortc peer that signs its requests with the cluster secret as
a node would; the cluster tests (tests/test_cascade.py) pull the same feed between
node processes. Only nodes may open a feed; a feed is a server, not a viewer; the
keyframe requests it sends reach the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import av
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from gbmedia.node import Node, cluster_secret_for
from gbmedia.signaling.cascade import PROGRAM_HEADER
from gbmedia.signaling.relay import ClusterAuth
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant
from tests.rtc import NO_STUN, ColorVideoTrack, close_to, mean_rgb, offer_from, wait_for
from tests.test_cascade import PliCounter, keyframe_request_reaches

RED = (220, 30, 30)
SDP = {"Content-Type": "application/sdp"}


def host(tenant: Tenant) -> str:
    return mint_token(tenant.key, tenant.secret, "host", Grants.participant("show"), name="Host")


async def pull_offer(frames: list[av.VideoFrame], tasks: list[asyncio.Task[Any]]) -> RTCPeerConnection:
    pc = RTCPeerConnection(NO_STUN)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await track.recv()
                    if isinstance(frame, av.VideoFrame):
                        frames.append(frame)

        tasks.append(asyncio.ensure_future(pull()))

    return pc


async def test_only_nodes_open_feeds_and_a_feed_is_the_program_not_a_viewer(
    client: TestClient, node: Node, tenant: Tenant, rtc: Any
):
    edge = ClusterAuth(cluster_secret_for(node.settings), "edge-1")
    frames: list[av.VideoFrame] = []
    tasks: list[asyncio.Task[Any]] = []
    pc = await pull_offer(frames, tasks)
    try:
        offer = await offer_from(pc)
        # Nobody may open a feed without the cluster's signature, whatever else it presents.
        path = f"/cluster/cascade/{uuid.uuid4()}"
        resp = await client.post(path, data=offer, headers=SDP)
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "cluster_only"
        forged = ClusterAuth("not-this-clusters-secret", "edge-1").headers("POST", path)
        resp = await client.post(path, data=offer, headers={**SDP, **forged})
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "cluster_auth_failed"

        star = await rtc()
        await star.join(host(tenant), kind="live")
        live = next(iter(node.live_rooms.live.values()))
        path = f"/cluster/cascade/{live.room.id}"
        resp = await client.post(path, data=offer, headers={**SDP, **edge.headers("POST", path)})
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "room_not_live"

        star.publisher = RTCPeerConnection(NO_STUN)
        video = (await star.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
        publisher = PliCounter(star.publisher)
        resp = await client.post(path, data=offer, headers={**SDP, **edge.headers("POST", path)})
        assert resp.status == 201, await resp.text()
        program = json.loads(resp.headers[PROGRAM_HEADER])
        assert program == {
            "key": f"{video}/",
            "identity": "host",
            "name": "Host",
            "tracks": {"video": {"source": "unknown", "name": ""}},
        }
        location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
        await wait_for(lambda: len(frames) >= 5, within=30)
        assert close_to(mean_rgb(frames[-1]), RED)

        # A server, not a viewer: not counted, not charged against the room's size, but measured.
        audience = live.audience
        assert audience is not None
        assert audience.viewer_count() == 0 and audience.occupancy() == 1 and audience.players == []
        text = await (await client.get("/metrics")).text()
        assert "gbmedia_cascade_feeds 1.0" in text and "gbmedia_whep_sessions 0.0" in text

        # The edge's keyframe requests reach the publisher.
        await keyframe_request_reaches(publisher, pc)

        # Only the node that opened the feed ends it.
        other = ClusterAuth(cluster_secret_for(node.settings), "edge-2")
        resp = await client.delete(location, headers=other.headers("DELETE", location))
        assert resp.status == 404
        resp = await client.delete(location, headers=edge.headers("DELETE", location))
        assert resp.status == 200
        assert audience.playback == {}
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
