"""The counters and rate arithmetic behind media stats (gbmedia/sfu/stats.py).

The end-to-end figures (with real peers, RTCP and the Room API) are checked in
tests/signaling/test_quality.py; here, the parts whose edge cases a live call
rarely hits: simulcast SSRCs, counters that restart, forgotten keys.
"""

from __future__ import annotations

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu.stats import ParticipantStats, RateTracker, TrackMeter

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def rtp(ssrc: int, size: int, marker: bool) -> RtpPacket:
    return RtpPacket(payload_type=96, marker=marker, ssrc=ssrc, payload=b"x" * size)


def test_video_frames_are_counted_per_ssrc_and_bytes_all_together():
    meter = TrackMeter("video")
    for ssrc in (1, 2, 3):  # three simulcast layers, two frames each, two packets per frame
        for _ in range(2):
            meter.on_rtp(rtp(ssrc, 100, marker=False), VP8)
            meter.on_rtp(rtp(ssrc, 50, marker=True), VP8)
    assert (meter.packets, meter.bytes, meter.frames) == (12, 900, {1: 2, 2: 2, 3: 2})
    meter.on_track_closed()
    assert meter.closed


def test_every_audio_packet_is_a_frame():
    meter = TrackMeter("audio")
    for _ in range(5):
        meter.on_rtp(rtp(7, 80, marker=False), OPUS)
    assert meter.frames == {7: 5} and meter.bytes == 400


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
    assert stats.to_json() == {"participant_id": "PA_a", "identity": "alice",
                               "sampled_at": "2026-12-01T00:00:00+00:00", "rtt_ms": None,
                               "bitrate_in_bps": None, "bitrate_out_bps": None, "published": [], "subscribed": []}


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_a_meter_starts_empty(kind: str):
    meter = TrackMeter(kind)
    assert (meter.packets, meter.bytes, meter.frames, meter.closed) == (0, 0, {}, False)
