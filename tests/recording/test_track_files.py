"""Per-track recording of a known synthetic stream: files, ffprobe, SIGKILL.

The stream is made by aiortc's own encoders and packetisers (tests/recording/synthetic.py),
so the payloads are what a WebRTC publisher sends; a frame source turns them into frames
as a published track's does (its own tests: tests/sfu/test_frames.py); ffprobe and ffmpeg
judge the files.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import av
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.recording.codecs import UnsupportedCodec
from gbmedia.recording.track_recorder import MAX_QUEUED, TrackRecorder, sender_time
from gbmedia.recording.writer import TrackWriter, frame_size, repair
from gbmedia.sfu.frames import EncodedFrame, FrameSink
from tests.recording.helpers import record_then_kill
from tests.recording.synthetic import CODECS, frame_feed, rtp_stream

ROOT = Path(__file__).resolve().parents[2]


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def decodes_cleanly(path: Path) -> tuple[bool, str]:
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True, timeout=120
    )
    return out.returncode == 0, out.stderr


def packets(codec: str, seconds: float, **kwargs) -> list[RtpPacket]:  # type: ignore[no-untyped-def]
    return [t.packet for t in rtp_stream(codec, seconds, **kwargs)]


class Frames(FrameSink):
    """Collects what a frame source hands out."""

    def __init__(self) -> None:
        self.frames: list[EncodedFrame] = []

    def on_frame(self, frame: EncodedFrame) -> bool:
        self.frames.append(frame)
        return True

    def on_track_closed(self) -> None:
        pass


def frames_of(codec: str, stream: list[RtpPacket]) -> list[EncodedFrame]:
    sink = Frames()
    feed = frame_feed(sink, codec)
    for p in stream:
        feed.on_rtp(p, CODECS[codec])
    feed.on_track_closed()
    return sink.frames


async def test_unknown_codecs_are_refused(tmp_path: Path):
    pcmu = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)
    with pytest.raises(UnsupportedCodec):
        TrackRecorder(tmp_path / "never.webm", pcmu, loop=asyncio.get_running_loop())


def test_video_frame_size_from_a_vp8_header_and_an_h264_keyframe():
    for codec, av_name in (("VP8", "vp8"), ("H264", "h264")):
        first = frames_of(codec, packets(codec, 0.2))[0]
        assert first.keyframe and frame_size(av_name, first.data) == (320, 240)
    with pytest.raises(ValueError, match="does not decode"):
        frame_size("h264", b"\x00\x00\x00\x01\x09\xf0")


# --- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "suffix", "expected"), [("VP8", "webm", "vp8"), ("H264", "mp4", "h264"), ("opus", "webm", "opus")]
)
async def test_a_recorded_synthetic_stream_probes_with_its_codec_and_duration(
    tmp_path: Path, codec: str, suffix: str, expected: str
):
    seconds = 4.0
    path = tmp_path / f"track.{suffix}"
    started = asyncio.Event()
    recorder = TrackRecorder(path, CODECS[codec], loop=asyncio.get_running_loop(), on_started=started.set)
    feed = frame_feed(recorder, codec)
    for p in packets(codec, seconds):
        feed.on_rtp(p, CODECS[codec])
    feed.on_track_closed()  # the recorder hears it through its source, like from a track
    result = await recorder.result()
    assert result.error is None and started.is_set()
    assert abs(result.stats.duration - seconds) < 0.1 and result.stats.size_bytes == path.stat().st_size
    info = ffprobe(path)
    assert [s["codec_name"] for s in info["streams"]] == [expected]
    assert abs(float(info["format"]["duration"]) - seconds) <= 0.5
    if codec != "opus":
        assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (320, 240)
    ok, errors = decodes_cleanly(path)
    assert ok and not errors.strip(), errors


async def test_a_sender_report_gives_the_first_frames_time_on_the_publishers_clock(tmp_path: Path):
    stream = packets("opus", 1.0)
    first = stream[0]
    # The publisher says: RTP timestamp first+4800 (0.1 s in) was NTP 1000.5 s.
    ntp = (1000 << 32) | (1 << 31)
    recorder = TrackRecorder(tmp_path / "a.webm", CODECS["opus"], loop=asyncio.get_running_loop())
    recorder.on_sender_report(first.ssrc + 1, 0, 0)  # another stream's report is ignored
    recorder.on_sender_report(first.ssrc, ntp, (first.timestamp + 4800) & 0xFFFFFFFF)
    feed = frame_feed(recorder, "opus")
    for p in stream:
        feed.on_rtp(p, CODECS["opus"])
    feed.on_rtp(RtpPacket(payload_type=111, sequence_number=5, ssrc=first.ssrc + 7, payload=b"x"), CODECS["opus"])
    feed.unsubscribe(recorder)
    recorder.finish()
    result = await recorder.result()
    assert result.first_frame_sender == pytest.approx(1000.4, abs=1e-6)
    assert result.stats.frames == len(stream)  # the packet of another SSRC (simulcast layer) was not mixed in
    assert sender_time(10, (5 << 32, 0xFFFFFFF0), 48000) == pytest.approx(5 + 26 / 48000)  # across the wrap


async def test_a_lost_packet_is_counted_and_a_recorder_that_falls_behind_refuses_frames(tmp_path: Path):
    stream = packets("VP8", 4.0, keyframe_every=60)
    recorder = TrackRecorder(tmp_path / "lossy.webm", CODECS["VP8"], loop=asyncio.get_running_loop())
    feed = frame_feed(recorder, "VP8")
    for i, p in enumerate(stream):
        if i != 10:
            feed.on_rtp(p, CODECS["VP8"])
    key = frames_of("VP8", stream[:1])[0]
    queued, recorder._queued = recorder._queued, MAX_QUEUED  # as if its thread were stuck
    assert not recorder.on_frame(key)
    recorder._queued = queued
    feed.on_track_closed()
    result = await recorder.result()
    assert result.lost_packets == 1 and result.stats.frames == 10 + 60 and result.stats.keyframes == 2


async def test_a_track_with_no_keyframe_writes_no_file(tmp_path: Path):
    path = tmp_path / "never.webm"
    stream = packets("VP8", 1.0)[2:]  # the keyframe's first packets are gone
    recorder = TrackRecorder(path, CODECS["VP8"], loop=asyncio.get_running_loop())
    feed = frame_feed(recorder, "VP8")
    for p in stream:
        feed.on_rtp(p, CODECS["VP8"])
    feed.unsubscribe(recorder)
    recorder.finish()
    result = await recorder.result()
    assert result.stats.frames == 0 and not path.exists() and result.first_frame_wall is None


async def test_a_write_failure_is_reported_not_raised(tmp_path: Path):
    """The target directory vanishes under the recorder (a storage failure): the recorder
    reports the error through on_failed and its result; nothing raises into the caller."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the directory should be")
    failures: list[str] = []
    got = asyncio.Event()

    def failed(error: str) -> None:
        failures.append(error)
        got.set()

    recorder = TrackRecorder(
        blocker / "sub" / "t.webm", CODECS["VP8"], loop=asyncio.get_running_loop(), on_failed=failed
    )
    feed = frame_feed(recorder, "VP8")
    for p in packets("VP8", 0.5):
        feed.on_rtp(p, CODECS["VP8"])
    await asyncio.wait_for(got.wait(), 15)
    assert recorder.on_frame(frames_of("VP8", packets("VP8", 0.1))[0])  # taken, and thrown away
    recorder.finish()
    result = await recorder.result()
    assert result.error and "Error" in result.error and failures == [result.error]


def test_writer_keeps_timestamps_increasing(tmp_path: Path):
    """A repeated timestamp (a publisher glitch) must not stop the muxer."""
    frames = frames_of("opus", packets("opus", 0.2))
    writer = TrackWriter(tmp_path / "a.webm", "opus", 48000)
    for frame in frames[:5] + frames[4:5] + frames[5:]:
        writer.write(frame)
    stats = writer.close()
    assert stats.frames == len(frames) + 1
    assert writer.close().size_bytes == stats.size_bytes  # closing twice is harmless
    with av.open(str(tmp_path / "a.webm")) as container:
        pts = [p.pts for p in container.demux() if p.pts is not None]
    assert pts == sorted(set(pts))


@pytest.mark.parametrize(("codec", "suffix"), [("VP8", "webm"), ("H264", "mp4")])
def test_a_recorder_killed_mid_way_leaves_a_playable_file(tmp_path: Path, codec: str, suffix: str):
    """The recorder runs in a child process fed in real time; SIGKILL it after a few
    seconds: what is on disk decodes, up to about the last second before the kill."""
    path = tmp_path / f"cut.{suffix}"
    assert record_then_kill(codec, path) == -signal.SIGKILL
    info = ffprobe(path)  # a cut WebM has no duration in its header (written at a clean close)
    assert [s["codec_name"] for s in info["streams"]] == [codec.lower()]
    ok, errors = decodes_cleanly(path)
    assert ok, errors
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    assert len(times) >= 30 and times == sorted(times)  # over a second of 30 fps video survived the kill
    assert 1.0 <= times[-1] < 30
    # What the node does with it at its next start: a remux gives it its duration and index back.
    assert repair(path)
    repaired = ffprobe(path)
    assert abs(float(repaired["format"]["duration"]) - times[-1]) <= 0.5
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(times)


def test_repair_leaves_an_unreadable_file_alone(tmp_path: Path):
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"not a media file at all")
    assert not repair(junk) and junk.read_bytes() == b"not a media file at all"
    assert not (tmp_path / "junk.webm.repair").exists()


async def test_local_storage_keeps_files_in_place_and_refuses_bad_keys(tmp_path: Path):
    from gbmedia.recording.storage import LocalStorage, StorageError

    storage = LocalStorage(tmp_path / "store")
    await storage.check()
    path = storage.spool_path("i/r/a.webm")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 300_000)
    assert await storage.store("i/r/a.webm", "video/webm") == 300_000 == await storage.size("i/r/a.webm")
    assert b"".join([chunk async for chunk in storage.read("i/r/a.webm")]) == b"x" * 300_000
    await storage.delete("i/r/a.webm")
    with pytest.raises(StorageError, match="missing"):
        await storage.store("i/r/a.webm", "video/webm")
    for bad in ("", "../x", "a//b", "a/./b", "a\\b"):
        with pytest.raises(StorageError, match="invalid storage key"):
            storage.spool_path(bad)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StorageError, match="unusable"):
        await LocalStorage(blocked / "sub").check()
