"""TURN credentials handed to clients (``joined``, ``ice_servers``, WHIP/WHEP ``Link`` headers) and used:
aiortc peers restricted to relayed candidates (``iceTransportPolicy: relay``) reach the node
only through the node's coturn, so media that arrives proves the credentials and the relay work.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.turn.credentials import turn_password
from tests.conftest import make_settings
from tests.helpers import Tenant, bearer
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, close_to, mean_rgb, offer_from, wait_for
from tests.signaling.test_whip import SDP, h264_only, host_token, live_token

GREEN = (30, 200, 30)
MAGENTA = (200, 30, 200)
LINK = re.compile(
    r'<(?P<url>[^>]+)>; rel="ice-server"; username="(?P<username>[^"]+)"; '
    r'credential="(?P<credential>[^"]+)"; credential-type="password"'
)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, turnserver: str) -> Settings:
    """A node that starts its own coturn (nothing configured, ``turnserver`` installed)."""
    return make_settings(tmp_path, database_url, turn_embedded=True, turn_relay_ports="42000-42999")


def relay_only(url: str, username: str, credential: str) -> RTCConfiguration:
    """A peer connection that may use only candidates relayed by the TURN server at ``url``."""
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=url, username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )


def pick(ice_servers: list[dict[str, Any]], ending: str) -> RTCConfiguration:
    (server,) = ice_servers
    url = next(u for u in server["urls"] if u.startswith("turn:") and u.endswith(ending))
    return relay_only(url, server["username"], server["credential"])


def local_candidate_types(pc: RTCPeerConnection) -> set[str]:
    gatherers = {t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()}
    return {c.type for gatherer in gatherers for c in gatherer.getLocalCandidates()}


async def relay_client(client: TestClient, token: str, transport: str) -> tuple[RtcClient, dict[str, Any]]:
    """Joins, then makes its connections relay-only through the TURN URL of ``transport`` from ``joined``."""
    rtc = RtcClient(await client.ws_connect("/rtc"))
    joined = await rtc.join(token, auto_subscribe=False)
    assert joined["type"] == "joined", joined
    await rtc.subscriber.close()
    rtc.subscriber = RTCPeerConnection(pick(joined["ice_servers"], f"transport={transport}"))
    rtc.subscriber.on("track", rtc._on_track)
    rtc.publisher = RTCPeerConnection(pick(joined["ice_servers"], f"transport={transport}"))
    return rtc, joined


async def test_joined_carries_turn_credentials_and_relayed_media_flows_over_udp_and_tcp(
    client: TestClient, tenant: Tenant, node: Node
):
    assert node.coturn is not None and node.turn is not None
    token = lambda who: mint_token(tenant.key, tenant.secret, who, Grants.participant("turn"), name=who)  # noqa: E731
    alice, joined = await relay_client(client, token("alice"), "udp")
    bob, _ = await relay_client(client, token("bob"), "tcp")
    try:
        (server,) = joined["ice_servers"]
        assert server["urls"] == list(node.coturn.urls)
        expiry, _, session = server["username"].partition(":")
        assert session == joined["participant"]["id"] and int(expiry) == joined["ice_servers_expire_at"]
        assert int(expiry) - time.time() > node.settings.turn_credential_ttl_seconds - 60
        assert server["credential"] == turn_password(node.coturn.secret, server["username"])
        assert node.coturn.secret not in str(joined)

        reply = await alice.publish(ColorVideoTrack(GREEN))
        assert reply["type"] == "publish_answer", reply
        (track,) = reply["tracks"]
        assert (await bob.request({"type": "subscribe", "track_ids": [track["id"]]}))["type"] == "ack"
        await wait_for(lambda: len(bob.decoded(track["id"])) >= 5, within=40)
        assert close_to(mean_rgb(bob.decoded(track["id"])[-1]), GREEN)
        assert local_candidate_types(alice.publisher) == {"relay"}  # type: ignore[arg-type]
        assert local_candidate_types(bob.subscriber) == {"relay"}
    finally:
        await alice.close()
        await bob.close()


async def test_a_long_session_asks_for_fresh_credentials(client: TestClient, tenant: Tenant, rtc: Any, node: Node):
    carol: RtcClient = await rtc()
    refused = await carol.request({"type": "ice_servers"})
    assert refused["type"] == "error" and refused["code"] == "not_joined"
    joined = await carol.join(mint_token(tenant.key, tenant.secret, "carol", Grants.participant("turn")))
    reply = await carol.request({"type": "ice_servers"})
    assert reply["type"] == "ice_servers" and reply["ice_servers_expire_at"] >= joined["ice_servers_expire_at"]
    (server,) = reply["ice_servers"]
    assert server["credential"] == turn_password(node.coturn.secret, server["username"])  # type: ignore[union-attr]
    # A resumed session gets credentials too.
    await carol.ws.close()
    again = await rtc()
    resumed = await again.join(
        mint_token(tenant.key, tenant.secret, "carol", Grants.participant("turn")), resume=joined["resume_token"]
    )
    assert resumed["resumed"] is True and resumed["ice_servers"][0]["urls"] == server["urls"]


async def first_links(client: TestClient, path: str, token: str, pc: RTCPeerConnection) -> dict[str, re.Match[str]]:
    """POST a plain offer to ``path`` only to learn the ICE servers from the 201's Link headers (by
    transport), then DELETE that session: what a WHIP/WHEP client that cannot connect directly does."""
    resp = await client.post(path, data=await offer_from(pc), headers={**bearer(token), **SDP})
    assert resp.status == 201, await resp.text()
    assert "Link" in resp.headers["Access-Control-Expose-Headers"]
    links = [LINK.fullmatch(value) for value in resp.headers.getall("Link")]
    assert links and all(links), resp.headers.getall("Link")
    session = resp.headers["Location"].rsplit("/", 1)[1]
    assert all(m["username"].endswith(f":{session}") for m in links if m)
    assert (await client.delete(resp.headers["Location"], headers=bearer(token))).status == 200
    return {m["url"].rsplit("=", 1)[1] if m["url"].startswith("turn:") else "tls": m for m in links if m}


async def test_whip_and_whep_answers_carry_link_headers_that_work_relay_only(
    client: TestClient, tenant: Tenant, node: Node
):
    """RFC 9725: the 201 names the ICE servers in Link headers; an encoder over TURN/UDP and a player
    over TURN/TCP, both relay-only, connect with them (the server makes no ICE restart, so a client
    that could not connect directly posts a new offer gathered through them)."""
    opened: list[RTCPeerConnection] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        probe = RTCPeerConnection(NO_STUN)
        opened.append(probe)
        h264_only(probe, ColorVideoTrack(MAGENTA))
        links = await first_links(client, "/whip/show", host_token(tenant), probe)
        assert [m["url"] for m in links.values()] == list(node.coturn.urls)  # type: ignore[union-attr]

        udp = links["udp"]
        encoder = RTCPeerConnection(relay_only(udp["url"], udp["username"], udp["credential"]))
        opened.append(encoder)
        h264_only(encoder, ColorVideoTrack(MAGENTA))
        offer = await offer_from(encoder)
        resp = await client.post("/whip/show", data=offer, headers={**bearer(host_token(tenant)), **SDP})
        assert resp.status == 201, await resp.text()
        await encoder.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))

        viewer = live_token(tenant, "viewer")
        probe_player = RTCPeerConnection(NO_STUN)
        opened.append(probe_player)
        probe_player.addTransceiver("video", direction="recvonly")
        tcp = (await first_links(client, "/whep/show", viewer, probe_player))["tcp"]
        player = RTCPeerConnection(relay_only(tcp["url"], tcp["username"], tcp["credential"]))
        opened.append(player)
        player.addTransceiver("video", direction="recvonly")
        frames: list[Any] = []

        @player.on("track")
        def on_track(track: Any) -> None:
            async def pull() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        frames.append(await track.recv())

            tasks.append(asyncio.ensure_future(pull()))

        played = await client.post("/whep/show", data=await offer_from(player), headers={**bearer(viewer), **SDP})
        assert played.status == 201, await played.text()
        await player.setRemoteDescription(RTCSessionDescription(sdp=await played.text(), type="answer"))
        await wait_for(lambda: len(frames) >= 5, within=40)
        assert close_to(mean_rgb(frames[-1]), MAGENTA)
        assert local_candidate_types(encoder) == {"relay"} and local_candidate_types(player) == {"relay"}
    finally:
        for task in tasks:
            task.cancel()
        for pc in opened:
            await pc.close()
