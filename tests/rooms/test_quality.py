"""Media quality per participant and track, with real aiortc peers: the Room API's stats
route, the Prometheus gauges, and their bad inputs.

The expectations come from the peers themselves: the publisher's own aiortc sender
says how many bytes it sent (its ``outbound-rtp``), the synthetic tracks send 30
video frames and 50 audio packets a second, and nothing is lost on this machine's
own interface.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gbmedia.rooms import quality
from gbmedia.sfu.stats import RateTracker
from tests.docs.test_openapi import DOC, validate
from tests.helpers import Tenant, bearer, create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, ToneAudioTrack, wait_for
from tests.signaling.test_ws import RED, token

STATS = "/api/v1/rooms/{room}/participants/{participant}/stats"


async def sent_bytes(client: RtcClient) -> dict[str, int]:
    """What the publisher's aiortc senders report having sent, by kind."""
    report = await client.publisher.getStats()  # type: ignore[union-attr]
    return {s.kind: s.bytesSent for s in report.values() if s.type == "outbound-rtp"}


async def stats_of(client: TestClient, tenant: Tenant, room: str, who: str) -> dict[str, Any]:
    resp = await client.get(STATS.format(room=room, participant=who), headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert validate(body, DOC["components"]["schemas"]["ParticipantStats"]) == []  # as documented
    return body


async def test_stats_of_a_publisher_and_a_subscriber_match_what_the_peers_send(rtc, tenant: Tenant, client: TestClient):
    alice, bob = await rtc(), await rtc()
    joined = await alice.join(token(tenant, "alice"))
    room = joined["room"]["id"]
    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    tracks = {t["kind"]: t["id"] for t in reply["tracks"]}
    bob_joined = await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(tracks["video"])) >= 5, within=20)

    # The publisher's own send rate over a few seconds: what the server should measure.
    before, started = await sent_bytes(alice), time.monotonic()
    await asyncio.sleep(4)
    after, ended = await sent_bytes(alice), time.monotonic()
    client_bps = {kind: (after[kind] - before[kind]) * 8 / (ended - started) for kind in after}

    # Bob's receiver reports (RTT) arrive about a second after the first sender report.
    async def with_rtt() -> dict[str, Any]:
        for _ in range(100):
            stats = await stats_of(client, tenant, room, "bob")
            if stats["rtt_ms"] is not None and all(d["bitrate_bps"] for d in stats["subscribed"]):
                return stats
            await asyncio.sleep(0.2)
        raise AssertionError(f"no RTT for bob: {stats}")

    bob_stats = await with_rtt()
    alice_stats = await stats_of(client, tenant, room, "alice")
    assert alice_stats["participant_id"] == joined["participant"]["id"] and alice_stats["identity"] == "alice"
    assert alice_stats["interval_seconds"] == 1.0 and alice_stats["subscribed"] == []
    published = {p["kind"]: p for p in alice_stats["published"]}
    assert set(published) == {"audio", "video"}
    for kind, track in published.items():
        assert track["track_id"] == tracks[kind]
        assert track["packets_received"] > 50 and track["bytes_received"] > 0
        assert (track["packets_lost"], track["loss"]) == (0, 0.0), track  # loopback: nothing lost
        assert 0 <= track["jitter_ms"] < 100, track
        assert 0.5 * client_bps[kind] <= track["bitrate_bps"] <= 2 * client_bps[kind], (track, client_bps)
        assert track["layers"] == [] and track["muted"] is False  # one layer: no simulcast
    assert published["video"]["codec"] == "video/VP8" and published["audio"]["codec"] == "audio/opus"
    assert 15 <= published["video"]["fps"] <= 40, published["video"]  # ColorVideoTrack: 30 fps
    assert 40 <= published["audio"]["fps"] <= 60, published["audio"]  # 20 ms Opus frames: 50 a second
    assert alice_stats["bitrate_in_bps"] > 0 and alice_stats["rtt_ms"] is None  # it only publishes

    assert bob_stats["participant_id"] == bob_joined["participant"]["id"] and bob_stats["published"] == []
    subscribed = {d["kind"]: d for d in bob_stats["subscribed"]}
    assert {d["track_id"] for d in subscribed.values()} == set(tracks.values())
    for kind, down in subscribed.items():
        assert down["publisher_id"] == joined["participant"]["id"]
        assert down["packets_sent"] > 50 and down["bytes_sent"] > 0
        assert down["packets_lost"] == 0 and down["fraction_lost"] == 0.0, down
        assert 0.5 * client_bps[kind] <= down["bitrate_bps"] <= 2 * client_bps[kind], (down, client_bps)
        assert down["layer"] is None and down["paused"] is False  # no simulcast: one layer
    assert 15 <= subscribed["video"]["fps"] <= 40 and subscribed["audio"]["fps"] is None
    assert 0 < bob_stats["rtt_ms"] < 1000, bob_stats
    assert bob_stats["bitrate_out_bps"] > 0

    # The same figures as Prometheus gauges, one series per track.
    resp = await client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    series = {(s.labels["track"], s.labels["kind"]): s for s in families["gbmedia_track_bits_per_second"].samples}
    assert set(series) == {(tracks["video"], "video"), (tracks["audio"], "audio")}
    assert {(s.labels["room"], s.labels["participant"]) for s in series.values()} == {
        (room, joined["participant"]["id"])
    }
    assert all(s.value > 0 for s in series.values())
    fps = {s.labels["kind"]: s.value for s in families["gbmedia_track_frames_per_second"].samples}
    assert 15 <= fps["video"] <= 40 and 40 <= fps["audio"] <= 60
    assert {s.value for s in families["gbmedia_track_loss_ratio"].samples} == {0.0}
    assert {s.value for s in families["gbmedia_track_packets_lost"].samples} == {0.0}
    assert all(0 <= s.value < 0.1 for s in families["gbmedia_track_jitter_seconds"].samples)
    (rtt,) = families["gbmedia_participant_rtt_seconds"].samples
    assert rtt.labels["participant"] == bob_joined["participant"]["id"] and 0 < rtt.value < 1
    (out,) = families["gbmedia_participant_send_bits_per_second"].samples
    assert out.labels["participant"] == bob_joined["participant"]["id"] and out.value > 0

    # A muted track is not forwarded: bob's down track stops (the publisher's aiortc keeps sending it).
    assert (await alice.request({"type": "mute", "track_id": tracks["audio"], "muted": True}))["type"] == "ack"
    for _ in range(100):
        stats = await stats_of(client, tenant, room, "alice")
        audio = next(p for p in stats["published"] if p["kind"] == "audio")
        down = next(d for d in (await stats_of(client, tenant, room, "bob"))["subscribed"] if d["kind"] == "audio")
        if audio["muted"] and down["bitrate_bps"] == 0:
            break
        await asyncio.sleep(0.2)
    assert audio["muted"] and audio["fps"] is None and audio["bitrate_bps"] > 0, audio
    assert down["bitrate_bps"] == 0, down

    # Gone participants and tracks leave the gauges.
    await alice.request({"type": "leave"})
    await bob.request({"type": "leave"})
    for _ in range(100):
        text = await (await client.get("/metrics")).text()
        if "gbmedia_track_bits_per_second{" not in text and "gbmedia_participant_rtt_seconds{" not in text:
            break
        await asyncio.sleep(0.2)
    assert "gbmedia_track_bits_per_second{" not in text and "gbmedia_participant_rtt_seconds{" not in text


async def test_a_participant_who_just_joined_gets_counters_without_rates(rtc, tenant: Tenant, client: TestClient):
    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    await alice.publish(ToneAudioTrack())
    stats = await stats_of(client, tenant, joined["room"]["id"], joined["participant"]["id"])
    assert stats["identity"] == "alice" and len(stats["published"]) == 1
    (track,) = stats["published"]
    assert track["kind"] == "audio" and track["bitrate_bps"] is None and track["fps"] is None


async def test_stats_bad_inputs_and_tenant_isolation(rtc, tenant: Tenant, client: TestClient):
    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    room = joined["room"]["id"]

    async def error(path: str, headers: dict[str, str]) -> tuple[int, str]:
        resp = await client.get(path, headers=headers)
        return resp.status, (await resp.json())["error"]["code"]

    assert await error(STATS.format(room=room, participant="nobody"), tenant.admin) == (404, "participant_not_found")
    assert await error(STATS.format(room="nope", participant="alice"), tenant.admin) == (400, "invalid_id")
    assert await error(STATS.format(room=uuid.uuid4(), participant="alice"), tenant.admin) == (404, "room_not_found")
    participant = bearer(token(tenant, "carol"))  # a participant token: no room_create or room_admin
    assert await error(STATS.format(room=room, participant="alice"), participant) == (403, "grant_missing")
    other = await create_tenant(client, "globex")
    assert await error(STATS.format(room=room, participant="alice"), other.admin) == (404, "room_not_found")
    creator = bearer(tenant.token("app", room_create=True))  # reading is open to room_create
    resp = await client.get(STATS.format(room=room, participant="alice"), headers=creator)
    assert resp.status == 200

    # A room that exists but has nobody in it on this node.
    resp = await client.post("/api/v1/rooms", json={"name": "empty"}, headers=tenant.admin)
    empty = (await resp.json())["id"]
    assert await error(STATS.format(room=empty, participant="alice"), tenant.admin) == (404, "participant_not_found")


async def test_a_simulcast_publisher_shows_its_layers_and_gets_no_meter(rtc, tenant: Tenant, client: TestClient, node):
    """No packet sink on a simulcast track: a sink would keep its top layer flowing (no dynacast)."""
    from tests.simulcast import SimulcastPublisher

    alice = await rtc()
    joined = await alice.join(token(tenant, "alice"))
    publisher = SimulcastPublisher()
    try:
        reply = await alice.request(
            {"type": "publish", "sdp": await publisher.offer(), "tracks": {"0": {"source": "camera"}}}
        )
        assert reply["type"] == "publish_answer", reply
        await publisher.accept(reply["sdp"])
        (track,) = node.live_rooms.live[uuid.UUID(joined["room"]["id"])].tracks().values()
        assert track.simulcast and track.sinks == [] and track.id not in node.quality.meters
        for _ in range(100):
            stats = await stats_of(client, tenant, joined["room"]["id"], "alice")
            (video,) = stats["published"]
            if len(video["layers"]) == 3 and all(layer["active"] for layer in video["layers"]) and video["bitrate_bps"]:
                break
            await asyncio.sleep(0.2)
        assert [layer["rid"] for layer in video["layers"]] == ["q", "h", "f"], video
        assert video["bitrate_bps"] > 0 and video["fps"] is None and video["frames_received"] is None
    finally:
        await publisher.close()


# --- how sampling shares the loop --------------------------------------------------------


async def loop_turns_while(work: Any) -> int:
    """How many times another task ran while ``work`` was awaited: the yields it made to the loop."""
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count())
    await asyncio.sleep(0)  # the counter runs once before the work starts
    started = turns
    try:
        await work
    finally:
        counter.cancel()
    return turns - started


def room_of(participants: int) -> SimpleNamespace:
    people = {
        f"p{i}": SimpleNamespace(id=f"p{i}", identity=f"viewer-{i}", published=[], subscriptions={"TR_x": object()})
        for i in range(participants)
    }
    return SimpleNamespace(participants=people)


async def test_sampling_a_large_room_yields_to_the_forwarding_by_time_slices_not_per_participant(monkeypatch):
    async def quick(down: Any, *args: Any) -> str:
        return "figures"

    monitor = quality.QualityMonitor(SimpleNamespace(on_track=lambda listener: None), 1.0)  # type: ignore[arg-type]
    monkeypatch.setattr(quality, "down_stats", quick)
    work = monitor._sample_room(room_of(500), RateTracker(), time.monotonic())  # type: ignore[arg-type]
    assert await loop_turns_while(work) <= 2  # 500 participants in well under a slice: not 500 loop turns

    async def slow(down: Any, *args: Any) -> str:
        busy_until = time.perf_counter() + quality.SAMPLING_SLICE * 1.5  # a room whose sampling takes long
        while time.perf_counter() < busy_until:
            pass
        return "figures"

    monkeypatch.setattr(quality, "down_stats", slow)
    results: list[Any] = []

    async def sample() -> None:
        results.extend(await monitor._sample_room(room_of(6), RateTracker(), time.monotonic()))  # type: ignore[arg-type]

    assert await loop_turns_while(sample()) >= 5  # the forwarding ran between participants
    assert [r.participant_id for r in results] == [f"p{i}" for i in range(6)]
    assert all(r.subscribed == ["figures"] for r in results)
