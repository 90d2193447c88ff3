"""The counters and rate arithmetic behind media stats (gbmedia/sfu/stats.py).

The end-to-end figures (with real peers, RTCP and the Room API) are checked in
tests/rooms/test_quality.py; here, the parts whose edge cases a live call
rarely hits: simulcast SSRCs, counters that restart, forgotten keys.
"""

from __future__ import annotations

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu.stats import ParticipantStats, RateTracker, TrackMeter
from tests.sfu.test_simulcast import RawViewer, simulcast  # noqa: F401 - fixture

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def rtp(ssrc: int, size: int, marker: bool) -> RtpPacket:
    return RtpPacket(payload_type=96, marker=marker, ssrc=ssrc, payload=b"x" * size)


def test_video_frames_are_counted_by_marker_bits_per_ssrc():
    meter = TrackMeter("video")
    for ssrc in (1, 2):  # a source, then a republished one; two frames each, two packets per frame
        for _ in range(2):
            meter.on_rtp(rtp(ssrc, 100, marker=False), VP8)
            meter.on_rtp(rtp(ssrc, 50, marker=True), VP8)
    assert meter.frames == {1: 2, 2: 2}
    meter.on_track_closed()
    assert meter.closed


def test_every_audio_packet_is_a_frame():
    meter = TrackMeter("audio")
    for _ in range(5):
        meter.on_rtp(rtp(7, 80, marker=False), OPUS)
    assert meter.frames == {7: 5}


def test_rates_span_the_interval_between_two_readings():
    rates = RateTracker()
    assert rates.rates("TR_a", {"bytes": 1000, "frames": 10}, now=10.0) is None  # the first reading
    assert rates.delta("TR_a", "bytes", 3000) == 2000
    assert rates.rates("TR_a", {"bytes": 3000, "frames": 30}, now=12.0) == {"bytes": 1000.0, "frames": 10.0}
    assert rates.rates("TR_a", {"bytes": 3000, "frames": 30}, now=12.0) is None  # no time passed
    # A counter that went backwards (a new stream behind the key) has no rate this time.
    assert rates.rates("TR_a", {"bytes": 10, "frames": 40}, now=13.0) == {"frames": 10.0}
    assert rates.delta("TR_a", "bytes", 5) is None
    assert rates.delta("TR_a", "missing", 5) is None and rates.delta("TR_b", "bytes", 5) is None


def test_forgotten_keys_start_over():
    rates = RateTracker()
    rates.rates("TR_a", {"bytes": 1}, now=1.0)
    rates.rates("TR_b", {"bytes": 1}, now=1.0)
    rates.forget({"TR_b"})
    assert rates.rates("TR_a", {"bytes": 2}, now=2.0) is None
    assert rates.rates("TR_b", {"bytes": 2}, now=2.0) == {"bytes": 1.0}


def test_a_participant_without_subscriptions_has_no_rtt():
    stats = ParticipantStats("PA_a", "alice", "2026-12-01T00:00:00+00:00")
    assert stats.rtt_ms is None
    assert stats.to_json() == {
        "participant_id": "PA_a",
        "identity": "alice",
        "sampled_at": "2026-12-01T00:00:00+00:00",
        "rtt_ms": None,
        "bitrate_in_bps": None,
        "bitrate_out_bps": None,
        "published": [],
        "subscribed": [],
    }


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_a_meter_starts_empty(kind: str):
    meter = TrackMeter(kind)
    assert (meter.frames, meter.closed) == ({}, False)


async def test_a_simulcast_track_reports_its_layers_and_the_layer_each_subscriber_gets(simulcast):  # noqa: F811
    """With the real three-layer publisher of tests/simulcast.py, and no packet sink: a sink would keep
    the top layer flowing (the monitor never adds one to a simulcast track)."""
    import asyncio
    import time

    from gbmedia.sfu.peers import SubscriberPeer
    from gbmedia.sfu.stats import down_stats, published_stats
    from tests.rtc import wait_for

    _server, _client, track, _answer = simulcast
    await wait_for(lambda: all(layer.active(time.monotonic()) and layer.bitrate > 0 for layer in track.layers))
    sub, viewer = SubscriberPeer("bob"), RawViewer()
    try:
        down = sub.add(track)
        await viewer.answer(sub)
        await wait_for(lambda: down.current_layer == 2)
        rates = RateTracker()
        await published_stats(track, None, rates)
        await down_stats(down, None, rates, "bob/track")
        await asyncio.sleep(1.0)
        stats = await published_stats(track, None, rates)
        assert [(layer["rid"], layer["index"], layer["active"]) for layer in stats.layers] == [
            ("q", 0, True),
            ("h", 1, True),
            ("f", 2, True),
        ]
        assert [(layer["width"], layer["height"]) for layer in stats.layers] == [(80, 60), (160, 120), (320, 240)]
        assert stats.bitrate_bps and stats.bitrate_bps > 0
        assert stats.fps is None and stats.frames_received is None  # no sink counts its frames
        assert stats.bytes_received == sum(layer.bytes for layer in track.layers)
        sent = await down_stats(down, None, rates, "bob/track")
        assert (sent.layer, sent.paused) == (2, False) and sent.bitrate_bps and sent.bitrate_bps > 0
        down.set_preferences(layer=0)
        await wait_for(lambda: down.current_layer == 0)
        assert (await down_stats(down, None, rates, "bob/track")).layer == 0
        assert track.sinks == []
    finally:
        await viewer.pc.close()
        await sub.close()
