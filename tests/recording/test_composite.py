"""Composite recording of two real participants: both pictures in the grid, both voices in the mix."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import av
import numpy as np
from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.recording.composite import CompositeJob
from gbmedia.recording.track_recorder import MAX_QUEUED
from gbmedia.sfu.frames import EncodedFrame
from gbmedia.sfu.track import PublishedTrack
from tests.helpers import create_tenant
from tests.recording.helpers import create_room, download, ffprobe, join, recorder_frames
from tests.recording.synthetic import CODECS, rtp_stream
from tests.rtc import ColorVideoTrack, ToneAudioTrack, close_to, wait_for

RED = (220, 30, 30)
BLUE = (30, 30, 220)


def _tile_colours(frame: av.VideoFrame) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = frame.to_ndarray(format="rgb24")
    h, w, _ = image.shape
    left = image[h // 2 - 20 : h // 2 + 20, w // 4 - 20 : w // 4 + 20].reshape(-1, 3).mean(axis=0)
    right = image[h // 2 - 20 : h // 2 + 20, 3 * w // 4 - 20 : 3 * w // 4 + 20].reshape(-1, 3).mean(axis=0)
    return tuple(int(v) for v in left), tuple(int(v) for v in right)


def _tone_strength(samples: np.ndarray, rate: int, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (freqs > frequency - 15) & (freqs < frequency + 15)
    return float(spectrum[band].max() / spectrum.max())


async def test_a_composite_of_two_participants_shows_both_and_mixes_their_audio(
    client: TestClient, node: Node, tmp_path: Path
):
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(
        f"/api/v1/rooms/{room['id']}/recordings", json={"kinds": ["composite"]}, headers=tenant.admin
    )
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    bob = await join(client, tenant, "bob")
    try:
        await alice.publish(ColorVideoTrack(RED), ToneAudioTrack(440.0))
        await bob.publish(ColorVideoTrack(BLUE), ToneAudioTrack(1200.0))
        job = node.recordings.active[uuid.UUID(rid)].composite
        await wait_for(lambda: len(job._order) == 2, within=30)
        both_from = recorder_frames(node, rid)["composite"]
        await wait_for(lambda: recorder_frames(node, rid)["composite"] >= both_from + 45, within=40)  # 3 s of grid
        resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
        stopped = await resp.json()
    finally:
        await alice.close()
        await bob.close()
    assert stopped["status"] == "completed", stopped
    (entry,) = stopped["files"]
    assert (entry["name"], entry["kind"], entry["content_type"]) == ("composite.mp4", "composite", "video/mp4")
    path = await download(client, tenant.admin, rid, "composite.mp4", tmp_path / "composite.mp4")
    info = ffprobe(path)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert abs(float(info["format"]["duration"]) - entry["duration_seconds"]) <= 0.5

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    left, right = _tile_colours(frames[-5])
    assert close_to(left, RED) and close_to(right, BLUE), (left, right)  # tiles in the order they joined

    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    rate = int(streams["audio"]["sample_rate"])
    last = audio[-3 * rate // 2 : -rate // 2]  # a second near the end: both were talking
    assert _tone_strength(last, rate, 440.0) > 0.3 and _tone_strength(last, rate, 1200.0) > 0.3
    assert _tone_strength(last, rate, 800.0) < 0.05  # and nothing else


async def test_the_composite_takes_frames_from_each_tracks_frame_source_and_leaves_it(tmp_path: Path):
    """Its sinks share the tracks' frame sources with any other consumer; one that is behind refuses."""
    track = PublishedTrack("p", "video", "camera", None, CODECS["VP8"], "0")  # type: ignore[arg-type]
    track.request_keyframe = lambda layer=None: None  # type: ignore[method-assign]
    job = CompositeJob(tmp_path / "composite.mp4", loop=asyncio.get_running_loop())
    job.add_track(track)
    job.add_track(track)  # once
    (sink,) = track.frames().sinks
    frame = EncodedFrame(b"\x00", 0, True, 0.0, 0, 1, CODECS["VP8"])
    job._queued = MAX_QUEUED  # as if its thread were stuck (nothing is queued yet)
    assert not sink.on_frame(frame)  # refused: the source resumes it at a keyframe
    job._queued = 0
    for timed in rtp_stream("VP8", 0.5):
        track.on_packet(timed.packet, CODECS["VP8"])
    job.remove_track(track)
    assert track.frames().sinks == [] and track.sinks == []
    job.finish()
    job.finish()  # twice: harmless
    result = await job.result()
    assert result.error is None and result.stats.frames > 0
    assert sink.on_frame(frame)  # after the end: taken, and nothing is made of it
