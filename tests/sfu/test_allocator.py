"""The layer cap from a subscriber's bandwidth estimate: down on congestion, up without flapping."""

from __future__ import annotations

from gbmedia.sfu.allocator import HOLD_SECONDS, STABLE_SECONDS, LayerAllocator, video_share

RATES = [150_000.0, 500_000.0, 1_500_000.0]


def feed(allocator: LayerAllocator, share: float, start: float, seconds: float, step: float = 0.5) -> float:
    t = start
    while t < start + seconds:
        allocator.update(share, RATES, t)
        t += step
    return t


def test_the_share_splits_the_estimate_between_video_tracks_after_audio():
    assert video_share(1_128_000, 2, 1) == 532_000
    assert video_share(50_000, 1, 1) == 0
    assert video_share(300_000, 0, 2) == 300_000


def test_a_falling_estimate_below_the_layer_steps_down_at_once_to_what_fits():
    allocator = LayerAllocator(cap=2)
    assert allocator.update(3_000_000, RATES, 0.0) == 2
    assert allocator.update(600_000, RATES, 0.5) == 1  # 600k < 0.85 x 1.5M, and falling
    assert allocator.update(100_000, RATES, 1.0) == 0  # even q does not fit: the lowest anyway


def test_a_low_but_rising_estimate_is_a_ramp_not_congestion():
    """Receive-side estimators start low and grow ~8 %/s: that must not push the layer down."""
    allocator = LayerAllocator(cap=2)
    share = 200_000.0
    for i in range(30):
        assert allocator.update(share, RATES, i * 0.5) == 2
        share *= 1.04


def test_stepping_up_waits_for_the_hold_and_a_stable_estimate():
    allocator = LayerAllocator(cap=2)
    allocator.update(3_000_000, RATES, 0.0)
    allocator.update(400_000, RATES, 0.1)
    assert allocator.cap == 0
    t = feed(allocator, 3_000_000, 0.2, HOLD_SECONDS - 0.5)
    assert allocator.cap == 0  # within the hold after a step down
    t = feed(allocator, 3_000_000, t, STABLE_SECONDS + 1.0)
    assert allocator.cap == 1  # one layer at a time
    feed(allocator, 3_000_000, t, STABLE_SECONDS + 1.0)
    assert allocator.cap == 2


def test_an_uncongested_estimate_probes_the_next_layer_even_below_its_bitrate():
    """At 1.3x the current rate the link has room, though less than h's nominal bitrate."""
    allocator = LayerAllocator(cap=0)
    feed(allocator, RATES[0] * 1.4, 0.0, STABLE_SECONDS + 1.0)
    assert allocator.cap == 1
    allocator2 = LayerAllocator(cap=0)
    feed(allocator2, RATES[0] * 1.1, 0.0, 20.0)
    assert allocator2.cap == 0  # no room: stays


def test_a_link_that_cannot_carry_a_layer_is_retried_less_and_less_often():
    allocator = LayerAllocator(cap=1)
    allocator.update(2_000_000, RATES, 0.0)
    holds = []
    t = 0.0
    for _ in range(4):
        # it steps up to f, then the estimate falls below f: down again
        while allocator.cap < 2:
            t += 0.5
            allocator.update(2_000_000, RATES, t)
        t += 0.5
        allocator.update(1_000_000, RATES, t)
        assert allocator.cap == 1
        holds.append(allocator.hold)
        t += 0.5
        allocator.update(2_000_000, RATES, t)
    assert holds == sorted(holds) and holds[-1] > holds[0]


def test_unknown_bitrates_fit():
    allocator = LayerAllocator(cap=2)
    assert allocator.update(100_000, [0.0, 0.0, 0.0], 0.0) == 2
    assert allocator.update(50_000, [0.0, 0.0, 0.0], 1.0) == 2
