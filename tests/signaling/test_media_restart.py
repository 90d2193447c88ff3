"""A media path that fails is replaced without leaving the room (issue 16, part 3), with aiortc peers.

aiortc (the server's and these clients') has no ICE restart, so a client whose
connection failed makes a fresh one over the same session: ``publish`` with
``restart`` for what it sends, ``subscriber_restart`` for what it receives. The
others must see nothing but a short freeze: no participant_left, no track ending or
starting, the same track ids. The stats API says which path each connection took.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription

from gbmedia.rooms import live as live_module
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.docs.test_openapi import DOC, validate
from tests.helpers import Tenant
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, ToneAudioTrack, close_to, mean_rgb, offer_from, wait_for
from tests.signaling.test_whip import host_token, live_token, peers, whep  # noqa: F401 (peers: a fixture)

RED = (220, 30, 30)
STATS = "/api/v1/rooms/{room}/participants/{participant}/stats"
DIRECT = ("host", "prflx")
MEMBERSHIP = ("participant_left", "participant_joined", "track_unpublished", "track_published")


def token(tenant: Tenant, identity: str, **grants: bool) -> str:
    chosen = Grants(room="restarts", **grants) if grants else Grants.participant("restarts")
    return mint_token(tenant.key, tenant.secret, identity, chosen, name=identity.title())


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{name}{{") and all(p in ln for p in wanted.split(","))]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


async def stats(client: TestClient, tenant: Tenant, room: str, who: str) -> dict[str, Any]:
    resp = await client.get(STATS.format(room=room, participant=who), headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert validate(body, DOC["components"]["schemas"]["ParticipantStats"]) == []  # as documented
    return body


def fresh_subscriber(rtc: RtcClient) -> RTCPeerConnection:
    """What a client does when its subscriber connection failed: a new one, whose offers it answers."""
    rtc.subscriber = RTCPeerConnection(NO_STUN)
    rtc.subscriber.on("track", rtc._on_track)
    return rtc.subscriber


async def test_a_failed_publisher_and_subscriber_connection_are_replaced_within_the_session(
    rtc: Any, tenant: Tenant, client: TestClient
):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    room = joined["room"]["id"]
    first = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    ids = {t["kind"]: t["id"] for t in first["tracks"]}
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(ids["video"])) >= 5, within=20)
    before = await stats(client, tenant, room, "alice")
    publisher = before["connections"]["publisher"]
    # The client's address, signalled in its SDP (host) or first seen in its checks (prflx): no NAT, no TURN.
    assert publisher["state"] == "connected" and publisher["server"]["remote_type"] in DIRECT, before
    assert publisher["server"]["protocol"] == "udp" and publisher["client"] is None
    assert before["connections"]["restarts"] == 0
    watched = len(bob.events)

    # Alice's path fails (her network changed): her old connection is gone, a fresh one offers the same media.
    old = alice.publisher
    await old.close()
    alice.publisher = RTCPeerConnection(NO_STUN)
    alice.publisher.addTrack(ColorVideoTrack(RED))
    alice.publisher.addTrack(ToneAudioTrack())
    sources = {"0": {"source": "camera"}, "1": {"source": "microphone"}}
    reply = await alice.request(
        {"type": "publish", "sdp": await offer_from(alice.publisher), "tracks": sources, "restart": True}
    )
    assert reply["type"] == "publish_answer", reply
    assert {t["kind"]: t["id"] for t in reply["tracks"]} == ids  # the same tracks, not new ones
    await alice.publisher.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    count = len(bob.decoded(ids["video"]))
    await wait_for(lambda: len(bob.decoded(ids["video"])) >= count + 10, within=20)  # media resumed
    assert close_to(mean_rgb(bob.decoded(ids["video"])[-1]), RED)

    # Bob's receiving side fails: a fresh connection, and the server offers it what he received.
    await bob.subscriber.close()
    fresh_subscriber(bob)
    assert (await bob.request({"type": "subscriber_restart"}))["type"] == "ack"
    offer = await bob.wait_event(lambda e: e["type"] == "offer" and e.get("restart") is True)
    assert set(offer["tracks"].values()) == set(ids.values())
    count = len(bob.decoded(ids["video"]))
    await wait_for(lambda: len(bob.decoded(ids["video"])) >= count + 10, within=20)

    # Nobody saw anyone leave or a track end or start.
    assert [e["type"] for e in bob.events[watched:] if e["type"] in MEMBERSHIP] == []
    assert [e["type"] for e in alice.events if e["type"] in ("participant_left", "track_unpublished")] == []
    after_alice = await stats(client, tenant, room, "alice")
    after_bob = await stats(client, tenant, room, "bob")
    assert after_alice["connections"]["restarts"] == 1 and after_bob["connections"]["restarts"] == 1
    assert after_alice["participant_id"] == before["participant_id"]
    assert {s["track_id"] for s in after_bob["subscribed"]} == set(ids.values())
    assert after_bob["connections"]["subscriber"]["server"]["remote_type"] in DIRECT
    text = await (await client.get("/metrics")).text()
    # alice's publisher twice, bob's subscriber twice, alice's subscriber once (bob publishes nothing).
    assert metric(text, "gbmedia_media_connections_total", connection="publisher") == 2
    assert metric(text, "gbmedia_media_connections_total", connection="subscriber") >= 2
    assert metric(text, "gbmedia_media_connections_total", path="relay") == 0


async def test_clients_report_their_path_and_bad_reports_and_restarts_are_refused(
    rtc: Any, tenant: Tenant, client: TestClient
):
    carol, viewer = await rtc(), await rtc()
    refused = await carol.request({"type": "subscriber_restart"})
    assert refused["type"] == "error" and refused["code"] == "not_joined"
    joined = await carol.join(token(tenant, "carol"))
    room = joined["room"]["id"]
    report = {"type": "media_path", "target": "subscriber", "candidate_type": "relay", "protocol": "udp"}
    assert (await carol.request({**report, "relay_protocol": "tcp"}))["type"] == "ack"
    assert (await carol.request({**report, "relay_protocol": "tcp"}))["type"] == "ack"  # the same: counted once
    for bad in ({"candidate_type": "tunnel"}, {"relay_protocol": "quic"}, {"target": "both"}):
        error = await carol.request({**report, **bad})
        assert error["type"] == "error" and error["code"] == "invalid_message", error
    body = await stats(client, tenant, room, "carol")
    assert body["connections"]["subscriber"]["client"] == {
        "candidate_type": "relay",
        "protocol": "udp",
        "relay_protocol": "tcp",
        "label": "relay_tcp",
    }
    assert body["connections"]["publisher"] is None  # carol published nothing
    text = await (await client.get("/metrics")).text()
    assert metric(text, "gbmedia_client_media_paths_total", connection="subscriber", path="relay_tcp") == 1

    await viewer.join(token(tenant, "dave", room_join=True, can_publish=False, can_subscribe=False))
    refused = await viewer.request({"type": "subscriber_restart"})
    assert refused["type"] == "error" and refused["code"] == "grant_missing"


async def test_a_track_a_restart_leaves_out_waits_for_a_later_offer_then_ends(
    rtc: Any, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    """web/room sends a screen share again in a second negotiation after a restart: a track the restart's
    offer leaves out keeps its id for a later offer, and ends (announced) only if none carries it."""
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    first = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    ids = {t["kind"]: t["id"] for t in first["tracks"]}
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(ids["video"])) >= 3, within=20)

    async def restart_with(*tracks: Any, sources: dict[str, Any]) -> dict[str, Any]:
        await alice.publisher.close()  # type: ignore[union-attr]
        alice.publisher = RTCPeerConnection(NO_STUN)
        for track in tracks:
            alice.publisher.addTrack(track)
        sdp = await offer_from(alice.publisher)
        reply = await alice.request({"type": "publish", "sdp": sdp, "tracks": sources, "restart": True})
        await alice.publisher.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        return reply

    reply = await restart_with(ColorVideoTrack(RED), sources={"0": {"source": "camera"}})
    assert [t["id"] for t in reply["tracks"]] == [ids["video"]]  # the microphone waits, unannounced
    alice.publisher.addTrack(ToneAudioTrack())  # type: ignore[union-attr]
    later = await alice.request(
        {
            "type": "publish",
            "sdp": await offer_from(alice.publisher),  # type: ignore[arg-type]
            "tracks": {"0": {"source": "camera"}, "1": {"source": "microphone"}},
        }
    )
    await alice.publisher.setRemoteDescription(RTCSessionDescription(sdp=later["sdp"], type="answer"))  # type: ignore[union-attr]
    assert {t["kind"]: t["id"] for t in later["tracks"]} == ids  # taken over by the later offer
    assert not [e for e in bob.events if e["type"] in ("track_unpublished", "track_published")]

    monkeypatch.setattr(live_module, "RESTART_HOLD_SECONDS", 0.2)
    await restart_with(ColorVideoTrack(RED), sources={"0": {"source": "camera"}})  # no later offer this time
    gone = await bob.wait_event(lambda e: e["type"] == "track_unpublished", within=10)
    assert gone["track_id"] == ids["audio"]
    assert not [e for e in bob.events if e["type"] == "participant_left"]


async def test_a_player_arriving_while_the_hosts_connection_is_replaced_gets_the_program(
    rtc: Any,
    tenant: Tenant,
    client: TestClient,
    node: Any,
    peers: list[Any],  # noqa: F811
):
    """A live host's restart closes its old connection and answers the new one, both awaited: a WHEP
    player that starts meanwhile must still be pointed at the host's video (it once got nothing for good,
    the program having seemed empty for that moment), and so must the players already there."""
    host = await rtc()
    await host.join(host_token(tenant, "star"), kind="live")
    first = await host.publish(ColorVideoTrack(RED), sources={"0": "camera"})
    (video,) = [t["id"] for t in first["tracks"]]
    early = await whep(client, live_token(tenant, "early"), opened=peers)
    await wait_for(lambda: len(early.frames.get("video", [])) >= 3, within=30)
    live = next(iter(node.live_rooms.live.values()))
    participant = next(p for p in live.participants.values() if p.identity == "star")
    track = live.tracks()[video]

    closing, release = asyncio.Event(), asyncio.Event()
    previous = participant.publisher
    close = previous.close

    async def close_when_released() -> None:
        closing.set()
        await release.wait()
        await close()

    previous.close = close_when_released
    await host.publisher.close()
    host.publisher = RTCPeerConnection(NO_STUN)
    host.publisher.addTrack(ColorVideoTrack(RED))
    restart = asyncio.ensure_future(
        host.request(
            {
                "type": "publish",
                "sdp": await offer_from(host.publisher),
                "tracks": {"0": {"source": "camera"}},
                "restart": True,
            }
        )
    )
    await asyncio.wait_for(closing.wait(), 10)
    assert participant.published == [track] and live.audience.current_program.video is track
    late = await whep(client, live_token(tenant, "late"), opened=peers)  # while the old connection closes
    assert live.audience.current_program.video is track
    release.set()
    reply = await restart
    assert [t["id"] for t in reply["tracks"]] == [video] and participant.published == [track]
    await host.publisher.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    count = len(early.frames.get("video", []))
    await wait_for(lambda: len(late.frames.get("video", [])) >= 3, within=30)
    await wait_for(lambda: len(early.frames.get("video", [])) >= count + 3, within=30)
    assert close_to(mean_rgb(late.frames["video"][-1]), RED)
