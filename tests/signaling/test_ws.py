"""The /rtc WebSocket with real aiortc clients: join, publish, subscribe, leave, resume."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription

from gbmedia.app import create_app
from gbmedia.http import ws_output
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import Tenant, create_tenant
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, ToneAudioTrack, close_to, mean_rgb, offer_from, wait_for
from tests.sdp_cases import MALFORMED

RED = (220, 30, 30)
GREEN = (30, 200, 30)


def token(tenant: Tenant, identity: str, room: str = "standup", **grants: bool) -> str:
    chosen = Grants(room=room, **grants) if grants else Grants.participant(room)
    return mint_token(tenant.key, tenant.secret, identity, chosen, name=identity.title())


async def test_two_participants_see_and_hear_each_other(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    assert joined["type"] == "joined"
    assert joined["room"]["name"] == "standup" and joined["participants"] == []
    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    assert reply["type"] == "publish_answer"
    alice_video = next(t for t in reply["tracks"] if t["kind"] == "video")
    assert alice_video["source"] == "camera"

    joined = await bob.join(token(tenant, "bob"))
    assert [p["identity"] for p in joined["participants"]] == ["alice"]
    assert {t["id"] for t in joined["participants"][0]["tracks"]} == {t["id"] for t in reply["tracks"]}
    await alice.wait_event(lambda e: e["type"] == "participant_joined" and e["participant"]["identity"] == "bob")
    bob_reply = await bob.publish(ColorVideoTrack(GREEN))
    bob_video = bob_reply["tracks"][0]

    # Each decodes the other's picture; bob also gets alice's audio.
    await wait_for(lambda: len(bob.decoded(alice_video["id"])) >= 5, within=20)
    await wait_for(lambda: len(alice.decoded(bob_video["id"])) >= 5, within=20)
    assert close_to(mean_rgb(bob.decoded(alice_video["id"])[-1]), RED)
    assert close_to(mean_rgb(alice.decoded(bob_video["id"])[-1]), GREEN)
    alice_audio = next(t for t in reply["tracks"] if t["kind"] == "audio")
    await wait_for(lambda: len(bob.frames.get(alice_audio["id"], [])) >= 10)


async def test_leave_is_announced_and_tracks_go(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    reply = await alice.publish(ColorVideoTrack(RED))
    await bob.join(token(tenant, "bob"))
    track_id = reply["tracks"][0]["id"]
    await wait_for(lambda: len(bob.decoded(track_id)) >= 1, within=20)
    assert (await alice.request({"type": "leave"}))["type"] == "left"
    await bob.wait_event(lambda e: e["type"] == "track_unpublished" and e["track_id"] == track_id)
    left = await bob.wait_event(lambda e: e["type"] == "participant_left")
    assert left["reason"] == "left"


async def test_mute_is_broadcast(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    track_id = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    assert (await alice.request({"type": "mute", "track_id": track_id, "muted": True}))["type"] == "ack"
    event = await bob.wait_event(lambda e: e["type"] == "track_muted")
    assert (event["track_id"], event["muted"]) == (track_id, True)
    error = await bob.request({"type": "mute", "track_id": track_id, "muted": True})
    assert (error["type"], error["code"]) == ("error", "track_not_found")  # not bob's track


async def test_grants_are_enforced(rtc, tenant: Tenant):
    viewer = await rtc()
    await viewer.join(token(tenant, "viewer", room_join=True, can_subscribe=True))
    error = await viewer.publish(ColorVideoTrack(RED))
    assert (error["type"], error["code"], error["details"]) == ("error", "grant_missing", {"grant": "can_publish"})
    outsider = await rtc()
    error = await outsider.join(token(tenant, "outsider", can_publish=True))
    assert error["code"] == "grant_missing"
    assert (await outsider.join(mint_token(tenant.key, tenant.secret, "x", Grants(room_join=True))))[
        "code"
    ] == "room_required"


async def test_resume_after_a_dropped_socket_is_invisible_to_others(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    track_id = (await bob.publish(ColorVideoTrack(GREEN)))["tracks"][0]["id"]
    own = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]
    assert own["muted"] is False
    await alice.request({"type": "mute", "track_id": own["id"], "muted": True})
    await wait_for(lambda: len(alice.decoded(track_id)) >= 1, within=20)

    await alice.ws.close()  # the network drops; alice's media connections stay up
    count = len(alice.decoded(track_id))
    await wait_for(lambda: len(alice.decoded(track_id)) > count + 5)  # media keeps flowing
    again = RtcClient(await client.ws_connect("/rtc"))
    try:
        resumed = await again.join(token(tenant, "alice"), resume=joined["resume_token"])
        assert resumed["type"] == "joined" and resumed["resumed"] is True
        assert resumed["participant"]["id"] == joined["participant"]["id"]
        assert [p["identity"] for p in resumed["participants"]] == ["bob"]
        # Its own tracks come back with the server's view of them.
        assert [(t["id"], t["muted"]) for t in resumed["participant"]["tracks"]] == [(own["id"], True)]
        await asyncio.sleep(0.3)
        assert not any(e["type"] == "participant_left" for e in bob.events)
        bad = await again.join(token(tenant, "alice"), resume="nope")
        assert bad["code"] == "already_joined"
    finally:
        await again.close()


async def test_a_dropped_socket_leaves_after_the_grace_period(rtc, tenant: Tenant, node):
    node.live_rooms.resume_grace = 0.3
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    await alice.ws.close()
    left = await bob.wait_event(lambda e: e["type"] == "participant_left")
    assert (left["participant_id"], left["reason"]) == (joined["participant"]["id"], "disconnected")
    carol = await rtc()
    error = await carol.join(token(tenant, "alice"), resume=joined["resume_token"])
    assert error["code"] == "resume_failed"


async def test_the_same_identity_replaces_its_older_session(rtc, tenant: Tenant):
    first, second = await rtc(), await rtc()
    await first.join(token(tenant, "alice"))
    await second.join(token(tenant, "alice"))
    removed = await first.wait_event(lambda e: e["type"] == "removed")
    assert removed["reason"] == "duplicate_identity"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1]", "invalid_message"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "join"}', "invalid_message"),
        ('{"type": "join", "token": 5}', "invalid_message"),
        ('{"type": "publish", "sdp": "v=0"}', "not_joined"),
        ('{"type": "subscribe", "track_ids": []}', "invalid_message"),
        ('{"type": "join", "token": "not-a-jwt"}', "token_malformed"),
        ('{"type": "join", "token": "x", "protocol": 9}', "unsupported_protocol"),
        # json.loads recursed past Python's limit on these: internal_error before (issue 21, part 2)
        ("[" * 100_000 + "]" * 100_000, "json_too_deep"),
        ('{"type": "ping", "pad": ' + "[" * 5_000 + "]" * 5_000 + "}", "json_too_deep"),
        ('{"type": "ping", "pad": ' + "[" * 32 + "]" * 32 + "}", "json_too_deep"),
    ],
)
async def test_bad_messages_get_protocol_errors_and_the_socket_stays_open(rtc, raw: str, code: str):
    socket = await rtc()
    await socket.ws.send_str(raw)
    error = await socket.wait_event(lambda e: e["type"] == "error")
    assert error["code"] == code, error
    assert (await socket.request({"type": "ping"}))["type"] == "pong"


async def test_oversized_messages_are_refused_without_closing(rtc):
    socket = await rtc()
    await socket.ws.send_str(json.dumps({"type": "ping", "pad": "x" * 300_000}))
    error = await socket.wait_event(lambda e: e["type"] == "error")
    assert error["code"] == "message_too_large"
    assert (await socket.request({"type": "ping"}))["type"] == "pong"


async def test_expired_tokens_and_bad_sdp(rtc, tenant: Tenant):
    import time

    socket = await rtc()
    expired = mint_token(
        tenant.key, tenant.secret, "late", Grants.participant("standup"), ttl_seconds=60, now=time.time() - 3600
    )
    assert (await socket.join(expired))["code"] == "token_expired"
    await socket.join(token(tenant, "alice"))
    error = await socket.request({"type": "publish", "sdp": "garbage"})
    assert error["code"] == "invalid_sdp"
    error = await socket.request({"type": "answer", "sdp": "v=0\r\n"})
    assert error["code"] == "unexpected_answer"
    error = await socket.request(
        {
            "type": "candidate",
            "target": "publisher",
            "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 9 typ host"},
        }
    )
    assert error["code"] == "no_connection"
    error = await socket.request({"type": "subscribe", "track_ids": ["TR_nope"]})
    assert error["code"] == "track_not_found"
    assert (await socket.request({"type": "join", "token": token(tenant, "alice")}))["code"] == "already_joined"


async def test_a_full_room_refuses_the_next_participant(rtc, tenant: Tenant, client: TestClient):
    from tests.helpers import OPERATOR

    resp = await client.post(
        "/api/v1/rooms",
        json={"name": "tiny", "max_participants": 2, "instance_id": tenant.instance_id},
        headers=OPERATOR,
    )
    assert resp.status == 201, await resp.text()
    a, b, c = await rtc(), await rtc(), await rtc()
    await a.join(token(tenant, "a", "tiny"))
    await b.join(token(tenant, "b", "tiny"))
    error = await c.join(token(tenant, "c", "tiny"))
    assert (error["code"], error["details"]) == ("room_full", {"max_participants": 2})
    # The others are unaffected.
    assert (await a.request({"type": "ping"}))["type"] == "pong"


async def test_closing_a_room_over_rest_disconnects_everyone(rtc, tenant: Tenant, client: TestClient):
    from tests.helpers import OPERATOR

    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    resp = await client.delete(f"/api/v1/rooms/{joined['room']['id']}", headers=OPERATOR)
    assert resp.status == 200
    event = await alice.wait_event(lambda e: e["type"] == "room_closed")
    assert event["reason"] == "api"


BLUE = (30, 30, 220)


async def test_a_late_joiner_sees_everyone_at_once(rtc, tenant: Tenant):
    alice, bob, carol = await rtc(), await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    red = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    green = (await bob.publish(ColorVideoTrack(GREEN)))["tracks"][0]["id"]
    await wait_for(lambda: len(alice.decoded(green)) >= 3 and len(bob.decoded(red)) >= 3, within=20)

    joined = await carol.join(token(tenant, "carol"))
    assert {p["identity"] for p in joined["participants"]} == {"alice", "bob"}
    # The forwarded keyframe requests get carol a decodable picture of both without waiting
    # for the publishers' next periodic keyframe.
    await wait_for(lambda: len(carol.decoded(red)) >= 3 and len(carol.decoded(green)) >= 3, within=20)
    assert close_to(mean_rgb(carol.decoded(red)[-1]), RED)
    assert close_to(mean_rgb(carol.decoded(green)[-1]), GREEN)
    # One subscriber connection carries both: a single offer/answer round, two m-lines.
    assert len(carol.subscriber.getTransceivers()) == 2


async def test_selective_subscription(rtc, tenant: Tenant):
    alice, viewer = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack())
    video = next(t["id"] for t in reply["tracks"] if t["kind"] == "video")
    audio = next(t["id"] for t in reply["tracks"] if t["kind"] == "audio")
    await viewer.join(token(tenant, "viewer"), auto_subscribe=False)
    await asyncio.sleep(0.5)
    assert not any(e["type"] == "offer" for e in viewer.events)  # nothing until asked

    assert (await viewer.request({"type": "subscribe", "track_ids": [video]}))["type"] == "ack"
    offer = await viewer.wait_event(lambda e: e["type"] == "offer")
    assert list(offer["tracks"].values()) == [video]
    await wait_for(lambda: len(viewer.decoded(video)) >= 3, within=20)
    assert audio not in viewer.frames

    await viewer.request({"type": "subscribe", "track_ids": [video], "subscribe": False})
    await viewer.wait_event(lambda e: e["type"] == "offer" and e["tracks"] == {})
    await asyncio.sleep(0.5)
    count = len(viewer.decoded(video))
    await asyncio.sleep(1.0)
    assert len(viewer.decoded(video)) <= count + 1  # no longer forwarded


async def test_unpublish_and_republish_over_signaling(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    first = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await wait_for(lambda: len(bob.decoded(first)) >= 3, within=20)

    transceiver = alice.publisher.getTransceivers()[0]  # type: ignore[union-attr]
    transceiver.direction = "inactive"
    reply = await alice.publish()
    assert reply["tracks"] == []
    await bob.wait_event(lambda e: e["type"] == "track_unpublished" and e["track_id"] == first)

    reply = await alice.publish(ColorVideoTrack(BLUE), sources={"1": "screen_share"})
    (second,) = reply["tracks"]
    assert second["id"] != first and second["source"] == "screen_share"
    published = await bob.wait_event(lambda e: e["type"] == "track_published" and e["track"]["id"] == second["id"])
    assert published["track"]["source"] == "screen_share"
    await wait_for(lambda: any(close_to(mean_rgb(f), BLUE) for f in bob.decoded(second["id"])[-3:]), within=20)
    assert len(bob.subscriber.getTransceivers()) == 1  # the subscriber's transceiver was reused


async def test_camera_and_screen_share_travel_on_one_connection(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    reply = await alice.publish(
        ColorVideoTrack(RED), ColorVideoTrack(BLUE), sources={"0": "camera", "1": "screen_share"}
    )
    by_source = {t["source"]: t["id"] for t in reply["tracks"]}
    await wait_for(
        lambda: len(bob.decoded(by_source["camera"])) >= 3 and len(bob.decoded(by_source["screen_share"])) >= 3,
        within=20,
    )
    assert close_to(mean_rgb(bob.decoded(by_source["camera"])[-1]), RED)
    assert close_to(mean_rgb(bob.decoded(by_source["screen_share"])[-1]), BLUE)


async def test_leave_then_rejoin_as_a_new_session(rtc, tenant: Tenant):
    alice, bob = await rtc(), await rtc()
    first = await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    await alice.request({"type": "leave"})
    await bob.wait_event(lambda e: e["type"] == "participant_left")
    error = await alice.request({"type": "ping"})
    assert error["type"] == "pong"  # the socket stays usable after leave
    again = await alice.join(token(tenant, "alice"))
    assert again["type"] == "joined" and again["participant"]["id"] != first["participant"]["id"]
    rejoined = await bob.wait_event(lambda e: e["type"] == "participant_joined")
    assert rejoined["participant"]["id"] == again["participant"]["id"]
    red = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await wait_for(lambda: len(bob.decoded(red)) >= 3, within=20)


async def test_h264_is_forwarded_as_the_publisher_sends_it(rtc, tenant: Tenant):
    from aiortc import RTCRtpSender

    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    alice.publisher = RTCPeerConnection(NO_STUN)
    transceiver = alice.publisher.addTransceiver(ColorVideoTrack(RED), direction="sendonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    )
    reply = await alice.publish()
    track_id = reply["tracks"][0]["id"]
    await wait_for(lambda: len(bob.decoded(track_id)) >= 3, within=20)
    assert close_to(mean_rgb(bob.decoded(track_id)[-1]), RED)
    offer = next(e for e in bob.events if e["type"] == "offer")
    assert "H264/90000" in offer["sdp"] and "VP8/90000" not in offer["sdp"]  # offered exactly the source codec


def metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def test_media_metrics_follow_rooms_and_packets(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    track_id = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(track_id)) >= 5, within=20)
    text = await (await client.get("/metrics")).text()
    assert metric(text, "gbmedia_live_rooms") == 1 and metric(text, "gbmedia_participants") == 2
    assert metric(text, "gbmedia_published_tracks") == 1 and metric(text, "gbmedia_subscriptions") == 1
    forwarded = metric(text, "gbmedia_rtp_packets_forwarded_total")
    received = metric(text, "gbmedia_rtp_packets_received_total")
    assert 0 < forwarded <= received

    await alice.request({"type": "leave"})  # the track ends; its packets stay counted
    await bob.wait_event(lambda e: e["type"] == "participant_left")
    text = await (await client.get("/metrics")).text()
    assert metric(text, "gbmedia_participants") == 1 and metric(text, "gbmedia_published_tracks") == 0
    assert metric(text, "gbmedia_rtp_packets_forwarded_total") >= forwarded
    assert metric(text, "gbmedia_rtp_packets_received_total") >= received


async def test_changes_during_an_offer_fold_into_one_more_offer(rtc, tenant: Tenant, node):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack())
    joined = await bob.join(token(tenant, "bob"), auto_subscribe=False)
    live = next(iter(node.live_rooms.live.values()))
    participant = live.participants[joined["participant"]["id"]]
    video, audio = (t["id"] for t in reply["tracks"])
    # Two subscription changes at once: the second must wait for the first answer.
    await asyncio.gather(
        live.set_subscribed(participant, [video], True), live.set_subscribed(participant, [audio], True)
    )
    await wait_for(lambda: sum(e["type"] == "offer" for e in bob.events) == 2)
    await wait_for(lambda: len(bob.decoded(video)) >= 3, within=20)
    assert not [e for e in bob.events if e["type"] == "error"]
    last = [e for e in bob.events if e["type"] == "offer"][-1]
    assert set(last["tracks"].values()) == {video, audio}


async def test_a_removed_participants_socket_must_join_again(rtc, tenant: Tenant, client: TestClient):
    from tests.helpers import OPERATOR

    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    resp = await client.delete(f"/api/v1/rooms/{joined['room']['id']}/participants/alice", headers=OPERATOR)
    assert resp.status == 200
    error = await alice.request({"type": "mute", "track_id": "TR_x", "muted": True})
    assert error["code"] == "not_joined"
    assert (await alice.join(token(tenant, "alice")))["type"] == "joined"  # the same socket may join again


async def test_track_listeners_hear_publish_and_end(rtc, tenant: Tenant, node):
    events: list[tuple[str, str, str]] = []

    async def listener(event, live, participant, track):  # type: ignore[no-untyped-def]
        events.append((event, participant.identity, track.kind))
        if event == "published":
            raise RuntimeError("a broken recorder")  # never breaks the room

    node.live_rooms.on_track(listener)
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    reply = await alice.publish(ColorVideoTrack(RED))
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(reply["tracks"][0]["id"])) >= 1, within=20)
    assert events == [("published", "alice", "video")]
    await alice.request({"type": "leave"})
    await wait_for(lambda: len(events) == 2)
    assert events[1] == ("ended", "alice", "video")
    node.live_rooms._track_listeners.remove(listener)


async def test_simulcast_over_signaling_track_settings_and_publisher_layers(rtc, tenant: Tenant, monkeypatch):
    from gbmedia.sfu import track as track_module
    from tests.simulcast import SIZES, SimulcastPublisher

    monkeypatch.setattr(track_module, "DYNACAST_PAUSE_DELAY", 0.3)
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    sender = SimulcastPublisher()
    try:
        reply = await alice.request(
            {"type": "publish", "sdp": await sender.offer(), "tracks": {"0": {"source": "camera"}}}
        )
        assert reply["type"] == "publish_answer", reply
        await sender.accept(reply["sdp"])
        track = reply["tracks"][0]
        assert track["layers"] == ["q", "h", "f"]
        # alone: only the lowest layer is needed, and alice is told so
        await alice.wait_event(lambda e: e["type"] == "publisher_layers" and e["active"] == ["q"])
        joined = await bob.join(token(tenant, "bob"))
        assert joined["participants"][0]["tracks"][0]["layers"] == ["q", "h", "f"]
        await alice.wait_event(lambda e: e["type"] == "publisher_layers" and e["active"] == ["q", "f"])
        sender.set_active(["q", "f"])
        await wait_for(lambda: any(f.width == SIZES["f"][0] for f in bob.decoded(track["id"])), within=20)

        small = await bob.request({"type": "track_settings", "track_id": track["id"], "width": 100, "height": 80})
        assert small["type"] == "track_settings" and small["layer"] == 1, small
        assert [layer["rid"] for layer in small["layers"]] == ["q", "h", "f"]
        await alice.wait_event(lambda e: e["type"] == "publisher_layers" and e["active"] == ["q", "h"])
        sender.set_active(["q", "h"])
        count = len(bob.decoded(track["id"]))
        await wait_for(lambda: any(f.width == SIZES["h"][0] for f in bob.decoded(track["id"])[count:]), within=20)
        low = await bob.request({"type": "track_settings", "track_id": track["id"], "quality": "low"})
        assert low["layer"] == 0
        paused = await bob.request({"type": "track_settings", "track_id": track["id"], "paused": True})
        assert paused["paused"] is True and paused["layer"] is None

        half = await bob.request({"type": "track_settings", "track_id": track["id"], "width": 100})
        assert (half["type"], half["code"]) == ("error", "invalid_message")
        unknown = await bob.request({"type": "track_settings", "track_id": "TR_000000000000", "paused": True})
        assert (unknown["type"], unknown["code"]) == ("error", "track_not_subscribed")
        bad = await bob.request({"type": "track_settings", "track_id": track["id"], "quality": "ultra"})
        assert (bad["type"], bad["code"]) == ("error", "invalid_message")
        short = await alice.request(
            {"type": "candidate", "target": "publisher", "candidate": {"candidate": "candidate:1 1 udp", "sdpMid": "0"}}
        )
        assert (short["type"], short["code"]) == ("error", "invalid_candidate")
    finally:
        await sender.close()


async def test_an_offer_made_while_a_join_is_on_its_way_comes_after_joined(
    rtc, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    """Bob's join waits (its room chat lookup is held open) while alice publishes: the offer of her
    track that the server makes bob meanwhile reaches him after his ``joined``, never before it
    (a page drops an offer for a session it has not joined, and would never see her)."""
    from gbmedia.signaling import ws

    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    lookup_reached, go_on = asyncio.Event(), asyncio.Event()
    real_room_chat = ws.room_chat

    async def slow_room_chat(*args, **kwargs):  # type: ignore[no-untyped-def]
        if args[-1] == "bob":
            lookup_reached.set()
            await go_on.wait()
        return await real_room_chat(*args, **kwargs)

    monkeypatch.setattr(ws, "room_chat", slow_room_chat)
    bob = await rtc()
    joining = asyncio.ensure_future(bob.join(token(tenant, "bob")))
    await asyncio.wait_for(lookup_reached.wait(), 15)
    reply = await alice.publish(ColorVideoTrack(RED))  # bob is in the room already: he is offered her track
    await asyncio.sleep(0.5)
    assert not any(e["type"] == "offer" for e in bob.events)  # held back
    go_on.set()
    assert (await joining)["type"] == "joined"
    await bob.wait_event(lambda e: e["type"] == "offer")
    types = [e["type"] for e in bob.events]
    assert types.index("joined") < types.index("offer")
    await wait_for(lambda: len(bob.decoded(reply["tracks"][0]["id"])) >= 3, within=20)


async def test_an_offer_with_more_tracks_than_a_participant_may_publish_is_refused(rtc, tenant: Tenant):
    """One publish may not fan out a thousand tracks to everyone: past GBMEDIA_MAX_TRACKS_PER_PARTICIPANT
    (8 by default) the offer is refused with ``too_many_tracks`` before any connection is made."""
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    alice.publisher = RTCPeerConnection(NO_STUN)
    for _ in range(9):
        alice.publisher.addTransceiver("audio", direction="sendonly")
    offer = await alice.publisher.createOffer()
    await alice.publisher.setLocalDescription(offer)
    reply = await alice.request({"type": "publish", "sdp": alice.publisher.localDescription.sdp, "tracks": {}})
    assert reply["type"] == "error" and reply["code"] == "too_many_tracks"
    assert reply["details"] == {"limit": 8, "requested": 9, "scope": "participant"}
    await asyncio.sleep(0.3)
    assert not any(e["type"] in ("track_published", "offer") for e in bob.events)
    # Within the limit the same participant publishes as usual.
    await alice.publisher.close()
    alice.publisher = None
    ok = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack())
    assert ok["type"] == "publish_answer" and len(ok["tracks"]) == 2


async def test_a_room_past_its_track_limit_refuses_more_and_whip_answers_422(
    rtc, tenant: Tenant, node, client: TestClient
):
    from gbmedia.rooms.live import TrackLimits
    from tests.rtc import offer_from
    from tests.signaling.test_whip import SDP, host_token

    node.live_rooms.track_limits = TrackLimits(per_participant=8, per_room=2)
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    assert (await alice.publish(ColorVideoTrack(RED), ToneAudioTrack()))["type"] == "publish_answer"
    refused = await bob.publish(ColorVideoTrack(RED))
    assert refused["type"] == "error" and refused["code"] == "too_many_tracks"
    assert refused["details"]["scope"] == "room" and refused["details"]["published"] == 2

    # WHIP into a live room: the same limit, as an HTTP 422 with the code.
    node.live_rooms.track_limits = TrackLimits(per_participant=1, per_room=400)
    pc = RTCPeerConnection(NO_STUN)
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        resp = await client.post(
            "/whip/show", data=await offer_from(pc), headers={"Authorization": f"Bearer {host_token(tenant)}", **SDP}
        )
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "too_many_tracks"
    finally:
        await pc.close()


# --- a participant that stops reading (issue 21, part 5) ------------------------------------


@pytest.fixture
async def tight(tmp_path, database_url: str) -> AsyncIterator[tuple[TestClient, Node]]:
    """A node whose sockets may leave 64 KiB unsent before they are cut off (GBMEDIA_SOCKET_MAX_BUFFERED_BYTES)."""
    node = await Node.start(make_settings(tmp_path, database_url, socket_max_buffered_bytes=64 * 1024))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield client, node
    finally:
        await node.stop()


class RawClient:
    """A WebSocket client on a plain TCP socket with a small receive buffer: nothing reads it until
    the test does (an asyncio stream would keep reading into a buffer of its own)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = b""

    @classmethod
    async def connect(cls, client: TestClient) -> RawClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        raw = cls(sock)
        await raw.loop.sock_connect(sock, (client.host, client.port))
        await raw.loop.sock_sendall(
            sock,
            f"GET /rtc HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        while not raw.buffer.endswith(b"\r\n\r\n"):
            raw.buffer += await raw.loop.sock_recv(sock, 1)  # byte by byte: nothing past the handshake
        assert raw.buffer.startswith(b"HTTP/1.1 101")
        raw.buffer = b""
        return raw

    async def send(self, opcode: int, payload: bytes) -> None:
        """A client's frame (masked, with a zero mask key, so the payload is as is)."""
        assert len(payload) < 65536
        size = bytes((0x80 | len(payload),)) if len(payload) < 126 else b"\xfe" + len(payload).to_bytes(2, "big")
        await self.loop.sock_sendall(self.sock, bytes((0x80 | opcode,)) + size + b"\0\0\0\0" + payload)

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def frame(self) -> tuple[int, bytes]:
        """The next (unmasked) frame the server sent: (opcode, payload)."""
        head = await self.read(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.read(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.read(8), "big")
        return head[0] & 0x0F, await self.read(size)


async def test_a_participant_that_stops_reading_holds_up_no_join_and_is_cut_off(
    tight: tuple[TestClient, Node], monkeypatch: pytest.MonkeyPatch
):
    """One participant stops reading its socket while the room is busy: the others' joins complete
    while it is stuck (a broadcast never waits for its socket), and once its unsent output passes the
    limit it leaves the room (``slow_reader``) and gets a 4008 close."""
    client, node = tight
    tenant = await create_tenant(client)
    # The close frame waits behind the unread output; this client reads it late (below): give it time.
    monkeypatch.setattr(ws_output, "CUT_OFF_GRACE", 120.0)
    observer = RtcClient(await client.ws_connect("/rtc"))
    await observer.join(token(tenant, "observer"))
    slow = await RawClient.connect(client)
    await slow.send(0x1, json.dumps({"type": "join", "token": token(tenant, "slow"), "id": "j"}).encode())
    joined = await observer.wait_event(lambda e: e["type"] == "participant_joined")
    slow_id = joined["participant"]["id"]
    live = next(iter(node.live_rooms.live.values()))
    server_side = live.participants[slow_id].send_to_socket.__self__.request.transport  # type: ignore[union-attr]
    server_side.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def slow_left() -> dict | None:
        return next((e for e in observer.events if e.get("participant_id") == slow_id), None)

    name = "N" * 1500  # each join tells the slow participant about 1.6 KB, which it never reads
    joins = stuck = 0
    while slow_left() is None and joins < 300:
        joiner = RtcClient(await client.ws_connect("/rtc"))
        try:
            grants = Grants.participant("standup")
            reply = await joiner.join(mint_token(tenant.key, tenant.secret, f"j{joins}", grants, name=name))
            assert reply["type"] == "joined"
            # Completed while the slow participant is in the room with output it has not read.
            if slow_id in {p["id"] for p in reply["participants"]} and server_side.get_write_buffer_size() > 0:
                stuck += 1
            assert (await joiner.request({"type": "leave"}))["type"] == "left"
        finally:
            await joiner.close()
        joins += 1
    left = slow_left()
    assert left is not None and left["type"] == "participant_left" and left["reason"] == "slow_reader", joins
    assert stuck >= 10 and slow_id not in live.participants, (joins, stuck)
    # The slow client reads at last: all it was sent before the cut-off, then a close with 4008.
    frames = []
    while (frame := await asyncio.wait_for(slow.frame(), 30))[0] != 0x8:
        frames.append(frame)
    assert json.loads(frames[0][1])["type"] == "joined"
    assert int.from_bytes(frame[1][:2], "big") == ws_output.CLOSE_SLOW_READER and frame[1][2:] == b"slow_reader"
    await slow.send(0x8, frame[1][:2])
    with pytest.raises(EOFError):  # the close handshake done, the server ends the connection
        await asyncio.wait_for(slow.frame(), 30)
    slow.sock.close()
    await observer.close()


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_offer_is_refused_and_the_participant_can_publish_after(rtc, tenant: Tenant, case: str):
    """Each of these answered ``internal_error`` (aiortc's parser asserting) or, without a DTLS
    fingerprint, was answered: now ``invalid_sdp`` naming the line, before any connection exists."""
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await bob.join(token(tenant, "bob"))
    alice.publisher = RTCPeerConnection(NO_STUN)
    alice.publisher.addTrack(ColorVideoTrack(RED))
    alice.publisher.addTrack(ToneAudioTrack())
    offer = await offer_from(alice.publisher)
    refused = await alice.request({"type": "publish", "sdp": MALFORMED[case].change(offer), "tracks": {}})
    assert refused["type"] == "error" and refused["code"] == "invalid_sdp", refused
    assert MALFORMED[case].reason in refused["message"] and "line " in refused["message"]
    # The same participant publishes its real offer on the same socket, and bob gets the tracks.
    reply = await alice.request({"type": "publish", "sdp": offer, "tracks": {}})
    assert reply["type"] == "publish_answer" and len(reply["tracks"]) == 2
    await alice.publisher.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    await bob.wait_event(lambda e: e["type"] == "track_published")
