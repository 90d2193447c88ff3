"""A track's frame source: reordering, loss, keyframes, wraps, and one assembly for every consumer.

The packets are real: aiortc's own encoders and packetisers (tests/recording/synthetic.py),
so the payloads are what a WebRTC publisher sends. Time is a fake clock where it matters.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import random
from collections.abc import Callable

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu.frames import REORDER_WINDOW, EncodedFrame, FrameSink, FrameSource
from gbmedia.sfu.track import PublishedTrack
from gbmedia.sfu.unwrap import Unwrapper, wrap_delta
from tests.recording.synthetic import CODECS, rtp_stream
from tests.rtc import wait_for


class Frames(FrameSink):
    """A consumer that keeps what it gets and what it is told."""

    def __init__(self, reorder_wait: float = 10.0, refuse: Callable[[EncodedFrame], bool] | None = None) -> None:
        self.reorder_wait = reorder_wait
        self.refuse = refuse
        self.frames: list[EncodedFrame] = []
        self.lost_packets = 0
        self.missed_frames = 0
        self.closed = False

    def on_frame(self, frame: EncodedFrame) -> bool:
        if self.refuse is not None and self.refuse(frame):
            return False
        self.frames.append(frame)
        return True

    def on_loss(self, packets: int, frames: int) -> None:
        self.lost_packets += packets
        self.missed_frames += frames

    def on_track_closed(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Feed:
    """A standalone frame source with a fake clock, counting its keyframe requests."""

    def __init__(self, codec: str, *sinks: FrameSink) -> None:
        self.codec = CODECS[codec]
        self.clock = Clock()
        self.requests: list[float] = []
        self.source = FrameSource(
            "audio" if codec == "opus" else "video",
            lambda: self.requests.append(self.clock.now),
            clock=self.clock,
            wall_clock=self.clock,
        )
        for sink in sinks:
            self.source.subscribe(sink)

    def send(self, packets: list[RtpPacket], *, spacing: float = 0.0) -> None:
        for packet in packets:
            self.source.on_rtp(packet, self.codec)
            self.clock.now += spacing


def packets(codec: str, seconds: float, **kwargs) -> list[RtpPacket]:  # type: ignore[no-untyped-def]
    return [t.packet for t in rtp_stream(codec, seconds, **kwargs)]


def frame_order(stream: list[RtpPacket]) -> list[int]:
    """The RTP timestamps of the stream's frames, in sending order."""
    return list(dict.fromkeys(p.timestamp for p in stream))


def indices(frames: list[EncodedFrame], order: list[int]) -> list[int]:
    return [order.index(f.rtp_timestamp) for f in frames]


# --- unwrapping --------------------------------------------------------------------------


def test_wrap_delta_and_the_unwrapper_extend_both_counters():
    assert wrap_delta(65535, 0, 16) == 1 and wrap_delta(0, 65535, 16) == -1
    assert wrap_delta(0xFFFFFFF0, 0x10, 32) == 0x20 and wrap_delta(0x10, 0xFFFFFFF0, 32) == -0x20
    assert wrap_delta((7 << 16) + 65535, 2, 16) == 3  # an extended value counts by its low bits
    seq = Unwrapper(16)
    first = seq(65534)
    assert [seq(s) - first for s in (65535, 0, 65533, 1, 2)] == [1, 2, -1, 3, 4]
    assert seq.highest == first + 4
    ts = Unwrapper(32)
    start = ts(0xFFFFFF00)
    assert ts(0x100) - start == 0x200 and ts(0xFFFFFF80) - start == 0x80 and start > 0


# --- order, wraps, reordering ------------------------------------------------------------------


def test_in_order_packets_give_every_frame_across_the_sequence_and_timestamp_wraps():
    stream = packets("VP8", 2.0, first_seq=65500)
    assert {p.sequence_number for p in stream} >= {65535, 0}
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send(stream)
    frames = sink.frames
    assert len(frames) == 60 and feed.source.frames_assembled == 60
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    assert {b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)} <= {2999, 3000, 3001}
    assert frames[-1].rtp_timestamp < frames[0].rtp_timestamp  # the 32-bit timestamp wrapped on the way
    assert all(f.timestamp & 0xFFFFFFFF == f.rtp_timestamp and f.ssrc == 1234 for f in frames)
    assert sink.lost_packets == sink.missed_frames == 0 and feed.requests == [100.0]  # asked once, to start


def test_reordered_and_duplicated_packets_across_the_wrap_still_give_every_frame():
    stream = packets("H264", 2.0, first_seq=65530)
    rng = random.Random(7)
    shuffled = list(stream[:3])
    rest = stream[3:]
    for i in range(0, len(rest), 6):  # shuffle within windows of 6 packets, duplicate some
        window = rest[i : i + 6]
        rng.shuffle(window)
        shuffled += window + window[:1]
    sink = Frames()
    feed = Feed("H264", sink)
    feed.send(shuffled)
    feed.source.on_track_closed()
    assert indices(sink.frames, frame_order(stream)) == list(range(60))
    assert sink.lost_packets == 0 and sink.closed
    assert [f.timestamp for f in sink.frames] == sorted(f.timestamp for f in sink.frames)


def test_audio_timestamps_go_on_past_2_32_and_reordering_at_the_sequence_wrap():
    def opus(seq: int, index: int) -> RtpPacket:
        return RtpPacket(
            payload_type=111,
            sequence_number=seq & 0xFFFF,
            timestamp=(0xFFFFFFFF - 2 * 960 + index * 960) & 0xFFFFFFFF,
            ssrc=5,
            payload=bytes([0xF8, index]),
        )

    sink = Frames()
    feed = Feed("opus", sink)
    feed.send([opus(65534 + i, i) for i in (0, 2, 1, 3, 5, 4, 4)])  # 65534, 0, 65535, 1, 3, 2, 2 (dup)
    assert [f.data[1] for f in sink.frames] == [0, 1, 2, 3, 4, 5]
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(sink.frames)}
    assert steps == {960} and sink.frames[3].rtp_timestamp < sink.frames[2].rtp_timestamp  # wrapped at 2**32
    assert sink.lost_packets == 0 and feed.requests == []  # audio never asks for keyframes


def test_padding_only_packets_take_a_sequence_number_and_nothing_else():
    stream = packets("VP8", 1.0)
    padded: list[RtpPacket] = []
    seq = stream[0].sequence_number
    for p in stream:
        p.sequence_number = seq & 0xFFFF
        padded.append(p)
        seq += 1
        if p.marker and len(padded) % 3 == 0:  # a bandwidth probe between two frames
            padded.append(RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=p.timestamp, ssrc=1234))
            seq += 1
    assert any(not p.payload for p in padded)
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send([*padded[:5], padded[6], padded[5], *padded[7:]])  # reordered around one, too
    assert len(sink.frames) == 30 and sink.lost_packets == 0 and sink.missed_frames == 0


# --- loss ----------------------------------------------------------------------------------


def test_a_lost_video_packet_drops_frames_until_the_next_keyframe_and_asks_for_one():
    stream = packets("VP8", 4.0, keyframe_every=60)
    order = frame_order(stream)
    lost = next(i for i, p in enumerate(stream) if p.timestamp == order[10])
    sink = Frames()  # patient: the packet window gives up
    feed = Feed("VP8", sink)
    feed.send([p for i, p in enumerate(stream) if i != lost], spacing=0.001)
    kept = indices(sink.frames, order)
    assert kept == list(range(10)) + list(range(60, 120))  # nothing between the loss and the keyframe
    assert sink.frames[10].keyframe
    assert sink.lost_packets == 1 and sink.missed_frames == 50  # frame 10 broken, 11-59 useless
    assert len(feed.requests) == 2  # to start; at the loss (the retries are a second apart)


def encoded(encoder: type, count: int = 8, keyframes: tuple[int, ...] = (0, 5)) -> list[list[RtpPacket]]:
    """Real frames of aiortc's encoders, one list of packets each: noise, so that a frame takes
    several packets (H.264: FU-A)."""
    coder = encoder()
    rng = np.random.default_rng(3)
    seq = 100
    frames: list[list[RtpPacket]] = []
    for i in range(count):
        image = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="rgb24")
        image.pts, image.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = coder.encode(image, force_keyframe=i in keyframes)
        frames.append([])
        for j, payload in enumerate(payloads):
            marker = j == len(payloads) - 1
            frames[-1].append(
                RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp, payload=payload, marker=marker)
            )
            seq += 1
    return frames


@pytest.mark.parametrize("lost", [0, 1], ids=["first-packet", "second-packet"])
@pytest.mark.parametrize(("codec", "encoder"), [("VP8", Vp8Encoder), ("H264", H264Encoder)])
def test_a_frame_with_a_lost_packet_is_dropped_and_a_keyframe_repairs(codec: str, encoder: type, lost: int):
    """Frame 2 loses a packet; keyframes at 0 and 5."""
    frames = encoded(encoder)
    assert len(frames[2]) > 2  # the rest of frame 2 follows the lost packet
    sink = Frames(reorder_wait=0.1)
    feed = Feed(codec, sink)
    for i, frame in enumerate(frames):
        feed.send(frame[:lost] + frame[lost + 1 :] if i == 2 else frame)
        feed.clock.now += 1 / 30  # the 0.1 s give-up comes before the next keyframe
    assert [f.rtp_timestamp for f in sink.frames] == [frames[i][0].timestamp for i in (0, 1, 5, 6, 7)]
    assert [f.keyframe for f in sink.frames] == [True, False, True, False, False]
    assert sink.lost_packets == 1 and sink.missed_frames == 3  # frame 2 broken, 3 and 4 useless
    if codec == "H264":
        assert all(f.data.startswith(b"\x00\x00\x00\x01") for f in sink.frames)  # Annex B access units


def test_a_stream_joined_in_the_middle_of_a_frame_and_ended_in_the_middle_of_one():
    frames = encoded(Vp8Encoder, count=7, keyframes=(0, 3))
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send([p for frame in frames[:6] for p in frame][1:] + frames[6][:-1])  # frame 0's start, 6's end never come
    assert [f.rtp_timestamp for f in sink.frames] == [frames[i][0].timestamp for i in (3, 4, 5)]
    assert sink.missed_frames == 3  # 0 broken, 1 and 2 useless
    feed.source.on_track_closed()
    assert len(sink.frames) == 3 and sink.missed_frames == 4 and sink.lost_packets == 0 and sink.closed


def test_audio_loss_loses_only_that_frame():
    stream = packets("opus", 1.0)
    sink = Frames(reorder_wait=0.05)
    feed = Feed("opus", sink)
    feed.send([p for i, p in enumerate(stream) if i != 20], spacing=0.02)
    feed.source.on_track_closed()
    assert len(sink.frames) == 49 and sink.lost_packets == 1 and sink.missed_frames == 0
    assert feed.requests == []


def test_a_malformed_payload_counts_as_a_broken_frame():
    stream = packets("H264", 0.2)
    order = frame_order(stream)
    first = [p for p in stream if p.timestamp == order[0]]
    rest = [p for p in stream if p.timestamp != order[0]]
    seq = first[-1].sequence_number + 1
    broken = RtpPacket(
        payload_type=102, sequence_number=seq & 0xFFFF, timestamp=order[1], marker=1, payload=b"\x1f\x00"
    )
    for p in rest:  # renumbered to follow the broken frame
        seq += 1
        p.sequence_number = seq & 0xFFFF
    sink = Frames()
    feed = Feed("H264", sink)
    feed.send([*first, broken, *rest])
    assert len(sink.frames) == 1 and sink.frames[0].keyframe  # NAL unit type 31 does not depayload
    assert sink.missed_frames == 1 + len(order) - 1 and sink.lost_packets == 0 and len(feed.requests) == 2


def test_the_least_patient_consumer_sets_how_long_a_gap_may_hold_frames_back():
    stream = packets("opus", 1.0)
    patient, live = Frames(reorder_wait=1.0), Frames(reorder_wait=0.1)
    feed = Feed("opus", patient)
    feed.send(stream[:10] + stream[11:15], spacing=0.02)  # packet 10 is missing for 0.08 s
    feed.clock.now += 0.3
    feed.send(stream[15:16])
    assert len(patient.frames) == 10  # still waiting: it allows a second
    feed.source.subscribe(live)
    feed.send(stream[16:17])
    assert len(patient.frames) == 16 and [f.data for f in live.frames] == [p.payload for p in stream[11:17]]
    feed.source.unsubscribe(live)
    feed.send(stream[17:18] + stream[19:22], spacing=0.02)
    feed.clock.now += 0.3
    feed.send(stream[22:23])
    assert len(patient.frames) == 17  # patient again once alone


async def test_a_missing_packet_is_given_up_on_in_time_even_when_nothing_follows():
    stream = packets("opus", 0.4)
    sink = Frames(reorder_wait=0.05)
    source = FrameSource("audio", lambda: None)
    source.subscribe(sink)
    for p in stream[:5] + stream[6:10]:
        source.on_rtp(p, CODECS["opus"])
    assert len(sink.frames) == 5
    await wait_for(lambda: len(sink.frames) == 9, within=5)  # the timer, not a later packet
    assert sink.lost_packets == 1
    source.on_rtp(stream[10], CODECS["opus"])
    assert len(sink.frames) == 10
    source.unsubscribe(sink)


def test_the_track_end_hands_out_what_is_complete_behind_a_gap_then_closes_every_consumer():
    stream = packets("opus", 0.4)
    first, second = Frames(), Frames()
    feed = Feed("opus", first, second)
    feed.send(stream[:3] + stream[4:8])
    assert len(first.frames) == 3
    feed.source.on_track_closed()
    assert len(first.frames) == len(second.frames) == 7 and first.closed and second.closed
    assert first.lost_packets == 1 and feed.source.sinks == []


# --- several consumers ---------------------------------------------------------------------


def _track(codec: str = "VP8") -> tuple[PublishedTrack, list[int]]:
    track = PublishedTrack("p", "audio" if codec == "opus" else "video", "camera", None, CODECS[codec], "0")  # type: ignore[arg-type]
    requests: list[int] = []
    track.request_keyframe = lambda layer=None: requests.append(1)  # type: ignore[method-assign]
    return track, requests


def test_two_consumers_on_one_track_get_the_same_frames_assembled_once():
    track, _ = _track()
    recorder, live = Frames(), Frames(reorder_wait=0.1)
    track.add_sink(recorder)
    track.add_sink(live)
    track.add_sink(live)  # twice: fed once
    source = track.frames()
    assert track.sinks == [source] and track.frames() is source  # one packet sink, one source
    stream = packets("H264", 1.0)
    for p in stream:
        track.on_packet(p, CODECS["H264"])
    assert len(recorder.frames) == 30 and source.frames_assembled == 30
    assert all(a is b for a, b in zip(recorder.frames, live.frames, strict=True))  # the very same objects
    track.remove_sink(live)
    assert track.sinks == [source] and source.sinks == [recorder]
    track.remove_sink(recorder)  # the last one: the source leaves the track
    assert track.sinks == [] and source.sinks == []
    track.remove_sink(recorder)  # not there: nothing happens
    source.unsubscribe(live)
    track.on_packet(stream[0], CODECS["H264"])
    assert len(recorder.frames) == 30


def test_a_consumer_that_joins_a_running_track_starts_at_a_keyframe():
    track, requests = _track()
    early, late = Frames(), Frames()
    track.add_sink(early)
    stream = packets("VP8", 3.0, keyframe_every=45)
    for i, p in enumerate(stream):
        if i == 10:
            track.add_sink(late)
            assert len(requests) == 2  # on the first sink; again for the late one
        track.on_packet(p, CODECS["VP8"])
    order = frame_order(stream)
    assert indices(early.frames, order) == list(range(90))
    assert indices(late.frames, order) == list(range(45, 90)) and late.frames[0].keyframe
    assert late.missed_frames == 45 - indices(early.frames[10:11], order)[0]
    track.close()
    assert early.closed and late.closed and track.frame_source is not None and track.frame_source.sinks == []


def test_a_consumer_that_falls_behind_resumes_at_a_keyframe_without_holding_up_the_other():
    stream = packets("VP8", 3.0, keyframe_every=30)
    order = frame_order(stream)
    slow = Frames(refuse=lambda frame: order.index(frame.rtp_timestamp) in (5, 6))
    steady = Frames()
    feed = Feed("VP8", slow, steady)
    feed.send(stream)
    assert indices(steady.frames, order) == list(range(90))
    assert indices(slow.frames, order) == list(range(5)) + list(range(30, 90))
    assert slow.missed_frames == 25 and steady.missed_frames == 0  # 5 refused, 6-29 useless
    assert len(feed.requests) == 3  # one for each consumer to start; one at the refusal


def test_a_consumer_that_raises_is_dropped_and_the_others_go_on():
    class Broken(Frames):
        def on_frame(self, frame: EncodedFrame) -> bool:
            raise RuntimeError("disk full")

        def on_track_closed(self) -> None:
            raise RuntimeError("still broken")

    class Fragile(Frames):
        def on_loss(self, packets: int, frames: int) -> None:
            raise RuntimeError("cannot count")

    track, _ = _track("opus")
    broken, fine = Broken(), Frames()
    track.add_sink(broken)
    track.add_sink(fine)
    stream = packets("opus", 0.2)
    for p in stream:
        track.on_packet(p, CODECS["opus"])
    source = track.frames()
    assert source.sinks == [fine] and len(fine.frames) == 10
    track.remove_sink(fine)
    lonely = Broken()
    track.add_sink(lonely)
    track.on_packet(stream[0], CODECS["opus"])  # a new stream for it; it fails, and was the last
    assert source.sinks == [] and track.sinks == []
    track.add_sink(lonely)
    track.close()  # its failing close is logged, not raised
    fragile, other = Fragile(), Frames()
    feed = Feed("opus", fragile, other)
    feed.send(stream[:2] + stream[3:5])
    feed.source.on_track_closed()  # the gap is given up on: the one that fails to hear it is dropped
    assert feed.source.sinks == [] and other.lost_packets == 1 and not fragile.closed and other.closed


def test_a_new_ssrc_starts_a_new_stream_and_the_timeline_goes_on():
    """The track moved its sinks to another simulcast layer: other SSRC, numbering, timestamps."""
    first = packets("VP8", 1.0, ssrc=1, first_seq=100)
    second = packets("VP8", 1.0, ssrc=2, first_seq=40_000)
    for p in second:
        p.timestamp = (p.timestamp + 123_456_789) & 0xFFFFFFFF
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send(first[:-1], spacing=1 / 30)  # the old layer's last frame is still arriving
    feed.send(second, spacing=1 / 30)
    assert [f.ssrc for f in sink.frames] == [1] * 29 + [2] * 30 and sink.frames[29].keyframe
    steps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(sink.frames)]
    assert all(2990 <= step <= 3010 for step in steps[:28] + steps[29:]) and 0 < steps[28] <= 2 * 3000 + 10
    assert sink.lost_packets == 0 and sink.missed_frames == 0


def test_a_new_ssrc_first_hands_out_what_the_old_stream_had_behind_a_gap():
    first = packets("opus", 0.2, ssrc=1)
    second = packets("opus", 0.2, ssrc=2, first_seq=7)
    sink = Frames()
    feed = Feed("opus", sink)
    feed.send(first[:5] + first[6:], spacing=0.02)
    assert len(sink.frames) == 5
    feed.send(second, spacing=0.02)
    assert [f.ssrc for f in sink.frames] == [1] * 9 + [2] * 10 and sink.lost_packets == 1
    assert [f.timestamp for f in sink.frames] == sorted(f.timestamp for f in sink.frames)


async def test_a_failing_consumer_leaves_the_track_after_its_packet_loop():
    track, _ = _track("opus")

    class Broken(Frames):
        def on_frame(self, frame: EncodedFrame) -> bool:
            raise RuntimeError("boom")

    track.add_sink(Broken())
    track.on_packet(packets("opus", 0.1)[0], CODECS["opus"])
    assert track.sinks != []  # still inside the track's loop over its sinks: it leaves just after
    track.on_packet(packets("opus", 0.1)[1], CODECS["opus"])  # nobody to assemble for
    await asyncio.sleep(0)
    assert track.sinks == []


def test_an_unknown_video_codec_is_cut_at_its_markers():
    vp9 = RTCRtpCodecParameters(mimeType="video/VP9", clockRate=90000, payloadType=98)
    sink = Frames()
    source = FrameSource("video", lambda: None)
    source.subscribe(sink)
    sent = [(1, 0, b"a"), (1, 1, b"b"), (2, 0, b"c"), (3, 1, b"d")]  # frame 2's marker bit is not set
    for seq, (ts, marker, payload) in enumerate(sent):
        source.on_rtp(
            RtpPacket(payload_type=98, sequence_number=seq, timestamp=ts, marker=marker, payload=payload), vp9
        )
    assert [(f.data, f.keyframe) for f in sink.frames] == [(b"ab", True), (b"c", True), (b"d", True)]


def test_a_vp8_packet_without_frame_data_gives_no_frame():
    stream = packets("VP8", 0.1)
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send(stream[:1])
    empty = RtpPacket(
        payload_type=96, sequence_number=stream[1].sequence_number, timestamp=1, marker=1, payload=b"\x10"
    )
    feed.send([empty, *stream[2:]])
    assert len(sink.frames) == 2 and sink.missed_frames == 0


def test_a_frame_of_more_packets_than_the_window_is_not_given_up_on_while_it_arrives():
    """The window counts packets after a missing one: a big keyframe still arriving has none missing."""
    count = REORDER_WINDOW * 2
    sent = [
        RtpPacket(
            payload_type=96,
            sequence_number=(65500 + i) & 0xFFFF,
            timestamp=9000,
            marker=i == count - 1,
            payload=(b"\x10\x00" if i == 0 else b"\x00\x01") + bytes(100),
        )
        for i in range(count)
    ]
    sink = Frames()
    feed = Feed("VP8", sink)
    feed.send(sent)
    assert len(sink.frames) == 1 and sink.frames[0].keyframe and sink.missed_frames == 0
    assert len(sink.frames[0].data) == 1 + count * 100 + (count - 1)
