"""A node's metrics move when things happen: a real session of aiortc participants, chat, errors.

Each figure is read from the node's own ``/metrics`` (the Prometheus text a scraper gets),
before and after the thing that should move it.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gbmedia.node import Node
from gbmedia.sfu import fanout
from tests.helpers import Tenant
from tests.messaging.test_chat_socket import ChatClient, conversation_of
from tests.messaging.test_chat_socket import token as chat_token
from tests.rtc import ColorVideoTrack, ToneAudioTrack, wait_for
from tests.signaling.test_ws import RED, token


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, keyed by sample name and sorted labels."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_session_moves_the_media_join_and_quality_metrics(rtc, tenant: Tenant, client: TestClient, node: Node):
    before = await scrape(client)
    assert value(before, "gbmedia_participants") == 0 and value(before, "gbmedia_join_duration_seconds_count") == 0

    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    joined = await scrape(client)
    assert value(joined, "gbmedia_join_duration_seconds_count") == 1
    assert value(joined, "gbmedia_join_duration_seconds_sum") > 0
    assert value(joined, "gbmedia_participants") == 1 and value(joined, "gbmedia_live_rooms") == 1

    reply = await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
    video = next(t["id"] for t in reply["tracks"] if t["kind"] == "video")
    bob = await rtc()
    await bob.join(token(tenant, "bob"))
    await wait_for(lambda: len(bob.decoded(video)) >= 5, within=20)

    # Forwarded media, and one quality observation per track (loss, jitter) and subscriber (RTT)
    # at every stats interval: Bob's receiver reports bring his RTT about a second in.
    async def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        for _ in range(150):
            now = await scrape(client)
            if value(now, "gbmedia_media_rtt_seconds_count") > 0 and all(
                value(now, "gbmedia_media_loss_ratio_count", kind=k) > 0 for k in ("audio", "video")
            ):
                return now
            await asyncio.sleep(0.2)
        raise AssertionError("no quality observations")

    during = await moved()
    assert value(during, "gbmedia_participants") == 2 and value(during, "gbmedia_join_duration_seconds_count") == 2
    assert value(during, "gbmedia_published_tracks") == 2 and value(during, "gbmedia_subscriptions") == 2
    assert value(during, "gbmedia_rtp_packets_received_total") > 50
    assert value(during, "gbmedia_rtp_bytes_received_total") > value(during, "gbmedia_rtp_packets_received_total")
    assert value(during, "gbmedia_rtp_bytes_forwarded_total") > value(during, "gbmedia_rtp_packets_forwarded_total")
    # Bob's two down tracks go through the native fan-out where it is built; loopback drops nothing.
    path = "native" if fanout.native is not None else "python"
    assert value(during, "gbmedia_down_tracks_by_path", path=path) == 2
    assert value(during, "gbmedia_down_tracks_by_path", path={"native": "python", "python": "native"}[path]) == 0
    assert value(during, "gbmedia_rtp_send_drops_total") == 0
    for kind in ("audio", "video"):  # loopback loses nothing: every observation in the lowest bucket
        count = value(during, "gbmedia_media_loss_ratio_count", kind=kind)
        assert value(during, "gbmedia_media_loss_ratio_bucket", kind=kind, le="0.0") == count
        assert value(during, "gbmedia_media_jitter_seconds_count", kind=kind) > 0
    assert 0 < value(during, "gbmedia_media_rtt_seconds_sum") < value(during, "gbmedia_media_rtt_seconds_count")

    # Counters keep what ended tracks carried; the gauges go back to zero.
    await alice.request({"type": "leave"})
    await bob.request({"type": "leave"})
    await wait_for(lambda: not any(live.participants for live in node.live_rooms.live.values()), 10)
    after = await scrape(client)
    assert value(after, "gbmedia_participants") == 0 and value(after, "gbmedia_published_tracks") == 0
    assert value(after, "gbmedia_rtp_bytes_forwarded_total") >= value(during, "gbmedia_rtp_bytes_forwarded_total")


async def test_signaling_errors_are_counted_by_code(rtc, tenant: Tenant, client: TestClient):
    stranger = await rtc()
    reply = await stranger.request({"type": "publish", "sdp": "v=0"})
    assert reply["type"] == "error" and reply["code"] == "not_joined", reply
    assert value(await scrape(client), "gbmedia_signaling_errors_total", code="not_joined") == 1
    bad = await stranger.request({"type": "join", "token": "not-a-token"})
    assert bad["type"] == "error", bad
    samples = await scrape(client)
    assert value(samples, "gbmedia_signaling_errors_total", code=bad["code"]) == 1
    assert value(samples, "gbmedia_signaling_errors_total", code="not_joined") == 1


async def test_a_chat_message_pushed_to_a_recipient_observes_its_delivery_latency(client: TestClient, tenant: Tenant):
    cid = await conversation_of(client, tenant, "alice", "bob")
    alice = ChatClient(await client.ws_connect("/rtc"))
    bob = ChatClient(await client.ws_connect("/rtc"))
    try:
        for who, chat in (("alice", alice), ("bob", bob)):
            assert (await chat.request({"type": "auth", "token": chat_token(tenant, who)}))["type"] == "authenticated"
        assert value(await scrape(client), "gbmedia_chat_delivery_seconds_count") == 0
        ack = await alice.request(
            {"type": "chat_send", "conversation_id": cid, "content": "hi", "idempotency_key": "1"}
        )
        assert ack["type"] == "chat_ack", ack
        await bob.wait(lambda e: e["type"] == "chat_message")
        samples = await scrape(client)
        # Two sockets got it (bob, and alice's own for her other devices): two observations.
        assert value(samples, "gbmedia_chat_delivery_seconds_count") == 2
        assert value(samples, "gbmedia_chat_delivery_seconds_sum") >= 0
        assert value(samples, "gbmedia_chat_events_delivered_total") == 2
    finally:
        await alice.close()
        await bob.close()


async def test_process_figures_and_event_loop_lag_are_exported(client: TestClient, node: Node):
    samples = await scrape(client)
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_open_fds") > 3 and value(samples, "process_max_fds") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    for _ in range(100):  # the probe observes every 0.25 s
        if value(samples := await scrape(client), "gbmedia_event_loop_lag_seconds_count") >= 2:
            break
        await asyncio.sleep(0.1)
    assert value(samples, "gbmedia_event_loop_lag_seconds_count") >= 2


async def test_a_blocked_event_loop_shows_as_lag(client: TestClient, node: Node):
    """CPU work left on the loop (here a blocking sleep of a second) is what the lag histogram catches."""
    await asyncio.sleep(0.3)  # the probe's timer is set
    time.sleep(1.0)  # noqa: ASYNC251 - the point: a blocking call on the event loop
    for _ in range(50):
        samples = await scrape(client)
        if value(samples, "gbmedia_event_loop_lag_seconds_bucket", le="0.5") < value(
            samples, "gbmedia_event_loop_lag_seconds_count"
        ):
            break
        await asyncio.sleep(0.1)
    # At least one probe ran 0.75 s late or more: past the 0.5 s bucket.
    assert value(samples, "gbmedia_event_loop_lag_seconds_bucket", le="0.5") < value(
        samples, "gbmedia_event_loop_lag_seconds_count"
    )
