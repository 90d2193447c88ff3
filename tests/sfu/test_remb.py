"""The native REMB estimator (gbmedia/sfu/_remb.c) against aiortc's, which it replaces.

Both are fed the same packets from a simulated path: a sender pacing frames into a
bottleneck whose capacity drops below the sending rate and recovers (the queue grows,
the detector sees overuse, the rate control decreases, then increases additively near
the measured maximum, then the queue drains and it sees underuse), with jitter,
reordering, pauses longer than the rate window, abs-send-time wrapping around and the
arrival clock stepping back. After every packet the two must return the same REMB (or
None) and at the end hold the same state, floats equal to the last bit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rate import BandwidthUsage, RemoteBitrateEstimator
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from gbmedia.sfu import remb
from gbmedia.sfu.peers import TrackInfo
from tests.conftest import service_missing
from tests.rtc import ColorVideoTrack, wait_for
from tests.sfu.test_forwarding import publish, publisher  # noqa: F401 - publisher: the fixture


def native() -> Any:
    """The extension; scripts/test builds it (a missing one fails in CI, skips elsewhere)."""
    if remb.native is None:
        service_missing(f"the native REMB estimator (python setup.py build_ext --inplace): {remb.IMPORT_ERROR}")
    return remb.native


@dataclass(frozen=True)
class Packet:
    arrival_time_ms: int
    abs_send_time: int
    payload_size: int
    ssrc: int


def path(seed: int, seconds: float = 60.0, start_abs_send_time: float = 0.0) -> Iterator[Packet]:
    """Packets of a 30 fps stream at about 1.2 Mbps through a bottleneck that drops to 0.6 Mbps between
    15 s and 30 s, with jitter, a few reordered pairs and two pauses of more than a second."""
    rnd = random.Random(seed)
    clock_ms = 1_700_000_000_000.0
    queue_free_at = 0.0
    sent_ms = 0.0
    out: list[Packet] = []
    frame = 0
    while sent_ms < seconds * 1000:
        frame += 1
        sent_ms += 1000 / 30 + rnd.uniform(-2, 2)
        if frame in (300, 1200):
            sent_ms += 1500  # the publisher paused (a muted camera): longer than the rate window
        capacity_bps = 600_000 if 15_000 <= sent_ms < 30_000 else 2_000_000
        for index in range(rnd.randint(2, 6)):
            size = rnd.randint(900, 1200) if index else rnd.randint(100, 1200)
            send_at = sent_ms + index * 0.2
            queue_free_at = max(queue_free_at, send_at) + size * 8 / capacity_bps * 1000
            arrival = queue_free_at + 20 + rnd.expovariate(1.0)
            stepped_back = -40 if frame == 1500 else 0  # the arrival clock steps back once
            abs_send_time = int((start_abs_send_time + send_at / 1000) * (1 << 18)) & 0xFFFFFF
            ssrc = 1111 if frame % 50 else 2222  # a second SSRC now and then (RTX, a simulcast layer)
            out.append(Packet(int(clock_ms + arrival + stepped_back), abs_send_time, size, ssrc))
    for i in range(5, len(out) - 1, 97):  # reordered pairs
        out[i], out[i + 1] = out[i + 1], out[i]
    yield from out


def aiortc_state(estimator: RemoteBitrateEstimator) -> dict[str, Any]:
    """aiortc's state under the names the native estimator's state() uses."""
    detector, kalman, control = estimator.detector, estimator.estimator, estimator.rate_control
    total = estimator.incoming_bitrate._total
    return {
        "hypothesis": detector.hypothesis.value,
        "threshold": detector.threshold,
        "offset": kalman._offset,
        "slope": kalman.slope,
        "var_noise": kalman.var_noise,
        "avg_noise": kalman.avg_noise,
        "num_of_deltas": kalman._num_of_deltas,
        "overuse_time": detector.overuse_time,
        "overuse_counter": detector.overuse_counter,
        "var_max_bitrate_kbps": control.var_max_bitrate_kbps,
        "avg_max_bitrate_kbps": control.avg_max_bitrate_kbps,
        "current_bitrate": control.current_bitrate,
        "latest_estimated_throughput": control.latest_estimated_throughput,
        "near_max": int(control.near_max),
        "rate_control_state": control.state.value,
        "last_update_ms": estimator.last_update_ms,
        "e": (kalman.E[0][0], kalman.E[0][1], kalman.E[1][0], kalman.E[1][1]),
        "incoming_total": (total.count, total.value),
    }


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal to the bit: every number as its float's repr (so 6 and 6.0 compare equal, 0.1 + 0.2 and 0.3 do not)."""
    as_text = lambda state: {k: repr(float(v)) if isinstance(v, int | float) else repr(v) for k, v in state.items()}  # noqa: E731
    return as_text(a) == as_text(b)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_native_estimator_returns_what_aiortcs_returns_after_every_packet(seed: int):
    reference, estimator = RemoteBitrateEstimator(), native().Estimator()
    seen_usage: set[BandwidthUsage] = set()
    near_max_increases = decreases = rembs = 0
    for number, packet in enumerate(path(seed, start_abs_send_time=60.0)):  # abs-send-time wraps at 64 s
        expected = reference.add(**vars(packet))
        assert estimator.add(**vars(packet)) == expected, f"packet {number}: {packet}"
        seen_usage.add(reference.detector.hypothesis)
        rembs += expected is not None
        if expected is not None and reference.rate_control.near_max:
            near_max_increases += 1
        if expected is not None and reference.rate_control.avg_max_bitrate_kbps is not None:
            decreases += 1
    assert same_state(estimator.state(), aiortc_state(reference)), (estimator.state(), aiortc_state(reference))
    # The path exercised what it is for: all three hypotheses, decreases, increases near the maximum.
    assert seen_usage == {BandwidthUsage.NORMAL, BandwidthUsage.OVERUSING, BandwidthUsage.UNDERUSING}
    assert near_max_increases > 0 and decreases > 0 and rembs > 50


def test_a_path_without_jitter_floors_the_noise_estimate_alike():
    """Frames every 33 ms, each 20 ms in flight to the millisecond: the estimate of the delay's noise decays
    to its floor (1 ms²) in both."""
    reference, estimator = RemoteBitrateEstimator(), native().Estimator()
    floored = False
    for frame in range(900):
        for _ in range(3):  # a frame's packets, sent and arriving in the same millisecond
            sent_ms = frame * 33
            packet = Packet(1_700_000_000_020 + sent_ms, (sent_ms << 18) // 1000 & 0xFFFFFF, 1000, 9)
            assert estimator.add(**vars(packet)) == reference.add(**vars(packet))
        floored = floored or reference.estimator.var_noise == 1
    assert floored
    assert same_state(estimator.state(), aiortc_state(reference))


def test_the_estimate_follows_the_bottleneck():
    """Not only the same as aiortc's: the REMB falls below the bottleneck's 0.6 Mbps while it holds, and rises after."""
    estimator = native().Estimator()
    during, after = [], []
    for packet in path(7):
        result = estimator.add(**vars(packet))
        if result is not None:
            (during if 20_000 <= packet.arrival_time_ms - 1_700_000_000_000 < 30_000 else after).append(result[0])
    assert during and max(during) < 800_000
    assert after and max(after) > 1_000_000
    _bitrate, ssrcs = estimator.add(1_700_000_100_000, 5, 1000, 1111) or (0, [])
    assert ssrcs == [1111, 2222]  # every SSRC it saw, in the order first seen


def test_a_stream_with_nothing_in_its_packets_fails_alike():
    """aiortc divides by zero once its estimate has fallen to 0 bits/s near a measured maximum: after real
    media, packets with no payload and no padding that queue up. The native estimator raises the same
    error at the same packet."""
    reference, estimator = RemoteBitrateEstimator(), native().Estimator()
    last = None
    for packet in path(1, seconds=25):
        assert estimator.add(**vars(packet)) == reference.add(**vars(packet))
        last = packet
    assert last is not None
    failed_at = None
    for frame in range(600):
        delay = min(2 * frame, 240)  # the queue grows, then holds
        for index in range(3):
            args = (
                int(last.arrival_time_ms + frame * 33.3 + delay + index),
                int((25 + frame / 30) * (1 << 18)) & 0xFFFFFF,
                0,
                1111,
            )
            try:
                expected = reference.add(*args)
            except ZeroDivisionError:
                with pytest.raises(ZeroDivisionError):
                    estimator.add(*args)
                failed_at = frame
                break
            assert estimator.add(*args) == expected
        if failed_at is not None:
            break
    assert failed_at is not None


def test_bad_input_is_refused_and_the_estimator_goes_on():
    estimator = native().Estimator()
    for bad in ({"abs_send_time": 1 << 24}, {"abs_send_time": -1}, {"ssrc": 1 << 32}, {"ssrc": -5}):
        args = {"arrival_time_ms": 1000, "abs_send_time": 0, "payload_size": 100, "ssrc": 1} | bad
        with pytest.raises(ValueError):
            estimator.add(**args)
    with pytest.raises(TypeError):
        estimator.add(1000, "soon", 100, 1)
    with pytest.raises(OverflowError):
        estimator.add(1 << 70, 0, 100, 1)
    with pytest.raises(TypeError):
        native().Estimator(1)
    assert estimator.state()["incoming_total"] == (0, 0)  # nothing refused was counted
    for number in range(200):
        estimator.add(1000 + number, number, 100, 1)
    assert estimator.state()["incoming_total"] == (200, 20_000)


def test_a_remb_names_the_first_64_ssrcs():
    """aiortc's estimator remembers every SSRC it ever saw (a publisher inventing SSRCs grows it without
    bound); the native one names the first 64 in its REMB."""
    estimator = native().Estimator()
    result = None
    for number in range(4000):
        result = estimator.add(1_700_000_000_000 + number * 10, number * 2621 & 0xFFFFFF, 1000, number % 100) or result
    assert result is not None and result[1] == list(range(64))


def test_without_the_extension_aiortcs_estimator_runs_and_the_node_says_which(monkeypatch):
    assert isinstance(remb.new_estimator(), native().Estimator)
    assert remb.describe() == "REMB estimate: native (gbmedia.sfu._remb)"
    monkeypatch.setattr(remb, "native", None)
    monkeypatch.setattr(remb, "IMPORT_ERROR", "No module named 'gbmedia.sfu._remb'")
    assert isinstance(remb.new_estimator(), RemoteBitrateEstimator)
    assert remb.describe() == (
        "REMB estimate: aiortc's, in Python, because the native extension is not built"
        " (No module named 'gbmedia.sfu._remb')"
    )


def rembs_to(client: RTCPeerConnection) -> list[tuple[int, list[int]]]:
    """The REMB packets the publisher's (first) sender receives from now on."""
    sender = client.getSenders()[0]
    handle, seen = sender._handle_rtcp_packet, []

    async def recording(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            seen.append(unpack_remb_fci(packet.fci))
        await handle(packet)

    sender._handle_rtcp_packet = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("built", [True, False])
async def test_a_publisher_gets_remb_from_the_estimator_that_runs(publisher, monkeypatch, built: bool):  # noqa: F811
    """A real aiortc publisher: the node's receiver runs the native estimator (or aiortc's where the extension
    is missing) and the publisher receives REMB for its stream's SSRC from it."""
    native()
    if not built:
        monkeypatch.setattr(remb, "native", None)
    server, client = publisher
    sender = client.addTrack(ColorVideoTrack((200, 30, 30)))
    rembs = rembs_to(client)
    (track,), _ = await publish(server, client, {"0": TrackInfo("camera", "cam")})
    estimator = track.receiver._RTCRtpReceiver__remote_bitrate_estimator
    assert isinstance(estimator, native().Estimator if built else RemoteBitrateEstimator)
    # aiortc's rate control waits 3 s of measured throughput before its first estimate.
    await wait_for(lambda: len(rembs) >= 1, within=20)
    bitrate, ssrcs = rembs[0]
    assert sender.track is not None and client.getSenders()[0]._ssrc in ssrcs
    assert 10_000 < bitrate < 100_000_000
