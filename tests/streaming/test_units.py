"""The LL-HLS pieces one by one: fMP4 boxes, the playlist and its rules, the program's frame
sinks, segmenting, audio continuity. Media checks use ffprobe. (Reordering and depacketizing
are the track's frame source's: tests/sfu/test_frames.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import fractions
import json
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder

from gbmedia.sfu.frames import EncodedFrame
from gbmedia.streaming import fmp4
from gbmedia.streaming.fmp4 import Sample
from gbmedia.streaming.packager import QUEUE_LIMIT, AudioTranscoder, Program, Segmenter, VideoTranscoder
from gbmedia.streaming.playlist import HlsConfig, Part, Rendition
from tests.recording.synthetic import CODECS

NOW = dt.datetime(2026, 12, 1, 23, 0, tzinfo=dt.UTC)


# --- fMP4 --------------------------------------------------------------------------


def test_annexb_split_and_avcc():
    stream = b"\x00\x00\x00\x01\x67\x42\x00\x1f" + b"\x00\x00\x01\x68\xce" + b"\x00\x00\x00\x01\x65\x88\x84"
    units = fmp4.split_annexb(stream)
    assert units == [b"\x67\x42\x00\x1f", b"\x68\xce", b"\x65\x88\x84"]
    assert [fmp4.nal_type(u) for u in units] == [fmp4.NAL_SPS, fmp4.NAL_PPS, fmp4.NAL_IDR]
    assert fmp4.to_avcc(units[1:2]) == b"\x00\x00\x00\x02\x68\xce"
    assert fmp4.split_annexb(b"no start code") == []


def _children(data: bytes, start: int, size: int, header: int = 8) -> dict[bytes, tuple[int, int]]:
    return {kind: (s, n) for kind, s, n in fmp4.iter_boxes(data, start + header, start + size)}


def test_fragment_offsets_point_at_each_tracks_samples():
    video = [Sample(0, b"V" * 10, True, 3000), Sample(3000, b"v" * 7, False, 3000)]
    audio = [Sample(0, b"A" * 5, True, 1024)]
    data = fmp4.fragment(7, [fmp4.TrackRun(1, video), fmp4.TrackRun(2, audio), fmp4.TrackRun(3, [])])
    (moof_kind, moof_start, moof_size), (mdat_kind, _, mdat_size) = list(fmp4.iter_boxes(data))
    assert (moof_kind, mdat_kind) == (b"moof", b"mdat") and mdat_size == 8 + 22
    trafs = [(s, n) for kind, s, n in fmp4.iter_boxes(data, moof_start + 8, moof_start + moof_size) if kind == b"traf"]
    assert len(trafs) == 2
    expected = [
        (b"V" * 10 + b"v" * 7, [(3000, 10, fmp4.SYNC_SAMPLE_FLAGS), (3000, 7, fmp4.NON_SYNC_SAMPLE_FLAGS)]),
        (b"A" * 5, [(1024, 5, fmp4.SYNC_SAMPLE_FLAGS)]),
    ]
    for (start, size), (payload, entries) in zip(trafs, expected, strict=True):
        boxes = _children(data, start, size)
        tfdt_start, _ = boxes[b"tfdt"]
        assert struct.unpack_from(">Q", data, tfdt_start + 12)[0] == 0
        trun_start, _ = boxes[b"trun"]
        count, offset = struct.unpack_from(">Ii", data, trun_start + 12)
        assert count == len(entries)
        assert data[moof_start + offset : moof_start + offset + len(payload)] == payload
        assert [struct.unpack_from(">III", data, trun_start + 20 + 12 * i) for i in range(count)] == entries
    with pytest.raises(ValueError):
        fmp4.fragment(1, [fmp4.TrackRun(1, [])])
    with pytest.raises(ValueError):
        list(fmp4.iter_boxes(b"\x00\x00\x00\x04moov"))


def test_init_segment_layout_and_codec_strings():
    video = fmp4.VideoTrackInfo(640, 360, b"\x67\x42\xc0\x1e\xda", b"\x68\xce\x3c\x80")
    audio = fmp4.AudioTrackInfo(48000, 2, b"\x11\x90")
    assert (video.codec_string, audio.codec_string) == ("avc1.42c01e", "mp4a.40.2")
    data = fmp4.init_segment(video, audio)
    assert [kind for kind, _, _ in fmp4.iter_boxes(data)] == [b"ftyp", b"moov"]
    _, moov_start, moov_size = list(fmp4.iter_boxes(data))[1]
    assert [k for k, _, _ in fmp4.iter_boxes(data, moov_start + 8, moov_start + moov_size)] == [
        b"mvhd",
        b"trak",
        b"trak",
        b"mvex",
    ]
    assert b"avcC" in data and b"esds" in data and b"\x11\x90" in data
    video_only = fmp4.init_segment(video, None)
    assert b"mp4a" not in video_only and b"soun" not in video_only


def _x264_stream(frames: int, keyframe_every: int) -> list[tuple[bytes, int, bool]]:
    """Real H.264 access units (Annex-B): what a remuxed publisher would send."""
    transcoder = VideoTranscoder(400_000)
    vp8 = Vp8Encoder()
    out = []
    for i in range(frames):
        image = np.full((120, 160, 3), (i * 7) % 255, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = vp8.encode(frame, force_keyframe=i == 0)
        data = b"".join(fmp4_vp8(p) for p in payloads)
        out += transcoder.transcode(data, i * 3000, i % keyframe_every == 0)
    assert transcoder.frames_encoded == frames
    return out


def fmp4_vp8(payload: bytes) -> bytes:
    from aiortc.codecs.vpx import vp8_depayload

    return vp8_depayload(payload)


@pytest.mark.usefixtures("media_tools")
def test_segmenter_output_decodes_and_keeps_part_and_segment_rules(tmp_path: Path):
    config = HlsConfig(segment_seconds=1.0, part_seconds=0.3, window_segments=3)
    parts: list[Part] = []
    segments: list[tuple[int, float]] = []
    segmenter = Segmenter(
        config, lambda part, start: parts.append(part), lambda m, d: segments.append((m, d)), audio=True
    )
    assert segmenter.wants_keyframe(0)
    audio = AudioTranscoder()
    sps = pps = None
    for data, pts, keyframe in _x264_stream(100, 30):
        units = fmp4.split_annexb(data)
        sps = sps or next((u for u in units if fmp4.nal_type(u) == fmp4.NAL_SPS), None)
        pps = pps or next((u for u in units if fmp4.nal_type(u) == fmp4.NAL_PPS), None)
        segmenter.add_video(Sample(pts, fmp4.to_avcc(units), keyframe))
        for sample in audio.fill_to(pts * 48000 // 90000):
            segmenter.add_audio(sample)
    assert segments and [m for m, _ in segments] == list(range(len(segments)))
    assert all(0.9 <= d <= 1.5 for _, d in segments)
    assert all(p.duration <= 0.3 + 1e-9 for p in parts)
    assert all(p.independent == (p.index == 0) for p in parts)  # keyframes every 30 frames: only at segment starts
    init = fmp4.init_segment(
        fmp4.VideoTrackInfo(160, 120, sps, pps),  # type: ignore[arg-type]
        fmp4.AudioTrackInfo(48000, 2, audio.audio_specific_config),
    )
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(init + b"".join(p.data for p in parts))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(clip)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    streams = {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert int(streams["video"]["nb_read_frames"]) == 99  # all but the last, which waits for its duration


def test_segmenter_cuts_without_a_keyframe_at_the_target_duration():
    config = HlsConfig(segment_seconds=1.0, part_seconds=0.5)  # target duration 2
    segments: list[tuple[int, float]] = []
    parts: list[Part] = []
    segmenter = Segmenter(config, lambda p, s: parts.append(p), lambda m, d: segments.append((m, d)), audio=False)
    segmenter.add_video(Sample(0, b"\x00\x00\x00\x01\x65", False))  # no keyframe yet: ignored
    assert not segmenter.started
    for i in range(200):
        segmenter.add_video(Sample(i * 3000, b"\x00\x00\x00\x01\x65", i == 0))
    segmenter.add_video(Sample(199 * 3000, b"x", False))  # not later than the last frame: ignored
    assert segments and all(d <= 2.0 for _, d in segments)
    assert [p.independent for p in parts if p.index == 0][1:] == [False] * len(segments)


# --- playlist -----------------------------------------------------------------------


def _rendition(config: HlsConfig | None = None) -> Rendition:
    rendition = Rendition(config or HlsConfig(segment_seconds=2.0, part_seconds=0.5, window_segments=3))
    rendition.set_init(b"init", "avc1.42c01e", (320, 240))
    return rendition


def _fill(rendition: Rendition, segments: int, parts_per_segment: int = 4, open_parts: int = 0) -> None:
    msn = rendition.next_part()[0]
    for s in range(segments):
        for i in range(parts_per_segment):
            rendition.add_part(Part(msn + s, i, 0.5, i == 0, f"{msn + s}.{i}".encode()), NOW)
        rendition.end_segment(msn + s, 0.5 * parts_per_segment)
    for i in range(open_parts):
        rendition.add_part(Part(msn + segments, i, 0.5, i == 0, b"open"), NOW)


async def test_playlist_lists_a_window_parts_near_the_edge_and_a_preload_hint():
    rendition = _rendition()
    assert not rendition.ready and rendition.next_part() == (0, 0) and rendition.last_complete_msn == -1
    _fill(rendition, 8, open_parts=2)
    text = rendition.playlist()
    lines = text.splitlines()
    rid = rendition.id
    assert lines[:7] == [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        "#EXT-X-TARGETDURATION:3",
        "#EXT-X-PART-INF:PART-TARGET=0.5",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5",
        "#EXT-X-MEDIA-SEQUENCE:5",
        f'#EXT-X-MAP:URI="{rid}-init.mp4"',
    ]
    assert lines[7] == "#EXT-X-PROGRAM-DATE-TIME:2026-12-01T23:00:00.000Z"
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == 4  # every listed segment, the open one too
    assert [ln for ln in lines if not ln.startswith("#")] == [f"{rid}-{m}.m4s" for m in (5, 6, 7)]
    parts = [ln for ln in lines if ln.startswith("#EXT-X-PART:")]
    # Within three target durations (9 s) of the edge: every listed segment here (6 s), plus the open one.
    assert len(parts) == 3 * 4 + 2
    assert parts[0] == f'#EXT-X-PART:DURATION=0.5,URI="{rid}-5.0.m4s",INDEPENDENT=YES'
    assert lines[-1] == f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{rid}-8.2.m4s"'
    # Two segments past the window stay fetchable; older ones are gone.
    assert rendition.file(f"{rid}-3.m4s") is not None and rendition.file(f"{rid}-2.m4s") is None
    assert rendition.file(f"{rid}-5.m4s").body == b"5.05.15.25.3"  # type: ignore[union-attr]
    assert rendition.file(f"{rid}-8.1.m4s").content_type == "video/iso.segment"  # type: ignore[union-attr]
    assert rendition.file(f"{rid}-8.m4s") is None and rendition.file(f"{rid}-8.7.m4s") is None
    assert rendition.file(f"{rid}-init.mp4").body == b"init"  # type: ignore[union-attr]
    assert rendition.file("00000000-5.m4s") is None and rendition.file("junk") is None
    rendition.end()
    assert rendition.playlist().endswith("#EXT-X-ENDLIST\n")


def test_parts_far_from_the_edge_are_not_listed():
    rendition = _rendition(HlsConfig(segment_seconds=0.5, part_seconds=0.25, window_segments=20))
    _fill(rendition, 12, parts_per_segment=2)
    text = rendition.playlist()
    # Target duration 1 s: parts only for the last three seconds' segments.
    assert text.count("#EXT-X-PART:") == 3 * 2 and text.count("#EXTINF:") == 12


async def test_reached_and_upcoming_follow_the_rfc_rules():
    rendition = _rendition()
    _fill(rendition, 2, open_parts=1)  # segments 0, 1 complete; segment 2 has part 0
    assert rendition.reached(0, None) and rendition.reached(1, 3) and rendition.reached(2, 0)
    assert not rendition.reached(2, 1) and not rendition.reached(2, None) and not rendition.reached(3, 0)
    assert rendition.reached(1, 9)  # past segment 1's last part: part 0 of segment 2
    assert not rendition.reached(9, 0)
    rid = rendition.id
    assert rendition.is_upcoming(f"{rid}-2.1.m4s") and rendition.is_upcoming(f"{rid}-2.2.m4s")
    assert rendition.is_upcoming(f"{rid}-3.0.m4s") and rendition.is_upcoming(f"{rid}-2.m4s")
    assert not rendition.is_upcoming(f"{rid}-2.5.m4s") and not rendition.is_upcoming(f"{rid}-1.m4s")
    assert not rendition.is_upcoming("00000000-2.1.m4s")
    with pytest.raises(ValueError):
        rendition.add_part(Part(2, 5, 0.5, False, b""), NOW)
    with pytest.raises(ValueError):
        rendition.add_part(Part(3, 0, 0.5, False, b""), NOW)  # segment 2 is still open

    waiter = asyncio.ensure_future(rendition.wait_until(lambda: rendition.reached(2, 1), 5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    rendition.add_part(Part(2, 1, 0.5, False, b"p"), NOW)
    assert await waiter
    assert not await rendition.wait_until(lambda: rendition.reached(5, 0), 0.05)  # times out
    rendition.end_segment(7, 1.0)  # not the open segment: ignored
    assert not rendition.segments[-1].complete
    rendition.end()
    assert rendition.reached(99, 0) and not rendition.is_upcoming(f"{rid}-2.2.m4s")
    rendition.add_part(Part(2, 2, 0.5, False, b"late"), NOW)  # after the end: ignored
    assert len(rendition.segments[-1].parts) == 2
    old = _rendition()
    _fill(old, 8)
    assert old.reached(0, 0)  # already left the window


# --- the program's frame sinks --------------------------------------------------------


async def test_the_programs_sinks_count_losses_and_refuse_frames_when_the_worker_is_behind():
    program = Program("room", HlsConfig(), video_bitrate=500_000, request_keyframe=lambda: None, audio=True)
    program.video_sink.on_loss(3, 2)
    program.audio_sink.on_loss(1, 5)  # audio frames are not "dropped": their packets are lost
    assert (program.stats.packets_lost, program.stats.frames_dropped) == (4, 2)
    frame = EncodedFrame(b"\x00", 1, True, 0.0, 1, 1, CODECS["VP8"])
    assert all(program.video_sink.on_frame(frame) for _ in range(QUEUE_LIMIT + 1))
    assert not program.video_sink.on_frame(frame) and program.stats.frames_refused == 1
    assert program.video_sink.reorder_wait == program.audio_sink.reorder_wait == 0.1  # live: latency counts


# --- audio -------------------------------------------------------------------------


def _opus_packets(count: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.bit_rate = 64000
    encoder.time_base = fractions.Fraction(1, 48000)
    encoder.open()
    out = []
    for i in range(count):
        tone = (np.sin(np.arange(960) / 10.0) * 3000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in encoder.encode(frame)]
    return out


def test_audio_timeline_is_continuous_through_gaps_and_late_packets():
    audio = AudioTranscoder()
    packets = _opus_packets(60)
    samples: list[Sample] = []
    for i, payload in enumerate(packets[:20]):
        samples += audio.add(payload, 48000 + i * 960)
    # 20 packets lost (a gap of 0.4 s), then audio resumes at its own time: silence fills the gap.
    for i, payload in enumerate(packets[40:], start=40):
        samples += audio.add(payload, 48000 + i * 960)
    assert audio.add(packets[5], 48000) == []  # late: overlaps the timeline, dropped
    assert audio.next_index == 48000 + 60 * 960
    dts = [s.dts for s in samples]
    assert dts == [dts[0] + 1024 * k for k in range(len(dts))]
    assert all(s.duration == 1024 and s.data for s in samples)
    assert audio.fill_to(0) == []
    filled = audio.fill_to(48000 + 60 * 960 + 48000)  # a second of silence when nothing comes
    assert len(filled) >= 45 and filled[0].dts == dts[-1] + 1024
    before = audio.next_index
    audio.add(b"\xff\xff\xff\xff", before)  # garbage never raises (the decoder may conceal it)
    assert audio.next_index >= before
    fresh = AudioTranscoder()
    assert fresh.fill_to(5000) == [] and fresh.next_index == 5000


def test_a_video_stall_ends_the_segment_where_its_media_ends():
    config = HlsConfig(segment_seconds=2.0, part_seconds=0.5)
    segments: list[tuple[int, float]] = []
    parts: list[Part] = []
    segmenter = Segmenter(config, lambda p, s: parts.append(p), lambda m, d: segments.append((m, d)), audio=False)
    for i in range(20):
        segmenter.add_video(Sample(i * 3000, b"\x00", i == 0))
    segmenter.add_video(Sample(19 * 3000 + 10 * 90000, b"\x00", True))  # ten seconds later
    assert segments == [(0, 20 * 3000 / 90000)]  # twenty frames, not ten seconds
    assert parts[-1].msn == 0 and segmenter.segment_start == 19 * 3000 + 10 * 90000
    for i in range(1, 70):
        segmenter.add_video(Sample(19 * 3000 + 10 * 90000 + i * 3000, b"\x00", i % 60 == 0))
    assert segments[1][0] == 1 and abs(segments[1][1] - 2.0) < 0.04
    assert [p.independent for p in parts if p.msn == 1 and p.index == 0] == [True]
