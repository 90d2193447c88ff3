"""LL-HLS of live rooms end to end: a real aiortc publisher, the node's packager, ffprobe/ffmpeg.

The publisher joins a ``live`` room over /rtc; the rendition appears at
``/hls/{room_id}/live.m3u8``; its init segment plus segments decode with ffprobe
(H.264 + AAC at the published size); it grows while live; ffmpeg reads the playlist
URL itself; an H.264 source is remuxed without encoding; blocking reloads hold until
the part exists; closing the room removes everything.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCRtpSender

from gbmedia.node import Node
from tests.helpers import Tenant
from tests.rtc import NO_STUN, ColorVideoTrack, ToneAudioTrack, wait_for
from tests.signaling.test_ws import token

RED = (220, 30, 30)
pytestmark = pytest.mark.usefixtures("media_tools")  # every test here checks the stream with ffprobe/ffmpeg


async def live_room(client: TestClient, tenant: Tenant, name: str = "show") -> str:
    resp = await client.post("/api/v1/rooms", json={"name": name, "kind": "live"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def get_text(client: TestClient, path: str, **params: str) -> tuple[int, str, Any]:
    resp = await client.get(path, params=params)
    return resp.status, await resp.text(), resp.headers


def parse_playlist(text: str) -> dict[str, Any]:
    """The tags a player relies on, checked for syntax on the way."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    tags: dict[str, Any] = {"parts": [], "segments": [], "durations": [], "open_parts": []}
    for i, line in enumerate(lines[1:], 1):
        assert line, "no blank lines"
        if line.startswith("#EXTINF:"):
            assert re.fullmatch(r"#EXTINF:\d+(\.\d+)?,", line), line
            tags["durations"].append(float(line[8:-1]))
            assert not lines[i + 1].startswith("#"), "a URI follows EXTINF"
            tags["segments"].append(lines[i + 1])
            tags["open_parts"] = []  # parts after the last segment belong to the one being made
        elif line.startswith("#EXT-X-PART:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line[12:]))
            assert set(attrs) <= {"DURATION", "URI", "INDEPENDENT"} and {"DURATION", "URI"} <= set(attrs), line
            tags["parts"].append((float(attrs["DURATION"]), attrs["URI"].strip('"'), attrs.get("INDEPENDENT")))
            tags["open_parts"].append(tags["parts"][-1])
        elif line.startswith("#"):
            name, _, value = line.partition(":")
            tags[name] = value
    return tags


async def media(client: TestClient, room_id: str, uri: str) -> bytes:
    resp = await client.get(f"/hls/{room_id}/{uri}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    return await resp.read()


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-count_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


async def wait_playlist(client: TestClient, room_id: str, predicate, within: float = 40) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    found: dict[str, Any] = {}

    async def check() -> bool:
        status, text, _ = await get_text(client, f"/hls/{room_id}/live.m3u8")
        if status == 200:
            found.update(parse_playlist(text), text=text)
            return bool(predicate(found))
        return False

    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"playlist never matched; last: {found.get('text')}")


async def test_vp8_live_room_is_transcoded_to_playable_ll_hls(
    rtc, tenant: Tenant, client: TestClient, node: Node, tmp_path: Path
):
    room_id = await live_room(client, tenant)
    status, body, headers = await get_text(client, f"/hls/{room_id}/live.m3u8")
    assert status == 404 and json.loads(body)["error"]["code"] == "hls_not_found"  # nobody publishes yet
    assert headers["Cache-Control"] == "no-cache" and headers["Access-Control-Allow-Origin"] == "*"

    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    await host.publish(ColorVideoTrack(RED, 320, 240), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})

    first = await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2 and t["open_parts"])
    assert first["#EXT-X-VERSION"] == "9"
    assert first["#EXT-X-TARGETDURATION"] == "3"
    assert first["#EXT-X-PART-INF"] == "PART-TARGET=0.5"
    assert first["#EXT-X-SERVER-CONTROL"] == "CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5"
    assert re.fullmatch(r'URI="[0-9a-f]{8}-init\.mp4"', first["#EXT-X-MAP"])
    assert "#EXT-X-PRELOAD-HINT" in first and "#EXT-X-PROGRAM-DATE-TIME" in first
    assert all(0 < d <= 0.5 + 1e-6 for d, _, _ in first["parts"][:-1])  # the part target holds
    assert all(d <= 3.5 for d in first["durations"])
    assert first["parts"][0][2] == "YES" or any(p[2] == "YES" for p in first["parts"])
    total = sum(first["durations"])

    init = await media(client, room_id, first["#EXT-X-MAP"][5:-1])
    segments = [await media(client, room_id, uri) for uri in first["segments"]]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(init + b"".join(segments))
    probed = ffprobe(clip)
    streams = {s["codec_type"]: s for s in probed["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (320, 240)
    assert streams["audio"]["codec_name"] == "aac" and streams["audio"]["sample_rate"] == "48000"
    assert int(streams["video"]["nb_read_frames"]) >= 30  # decoded, not just listed
    assert int(streams["audio"]["nb_read_frames"]) >= 40
    assert abs(float(probed["format"]["duration"]) - total) < 0.5

    # A part of the open segment decodes after the init segment too.
    last_part = await media(client, room_id, first["open_parts"][-1][1])
    part_clip = tmp_path / "part.mp4"
    part_clip.write_bytes(init + b"".join(segments) + last_part)
    assert int({s["codec_type"]: s for s in ffprobe(part_clip)["streams"]}["video"]["nb_read_frames"]) > int(
        streams["video"]["nb_read_frames"]
    )

    # The duration grows while live, and ffmpeg itself plays the playlist URL.
    later = await wait_playlist(
        client,
        room_id,
        lambda t: (
            int(t["#EXT-X-MEDIA-SEQUENCE"]) + len(t["segments"])
            > int(first["#EXT-X-MEDIA-SEQUENCE"]) + len(first["segments"]) + 1
        ),
    )
    assert later["segments"][-1] != first["segments"][-1]
    url = str(client.make_url(f"/hls/{room_id}/live.m3u8"))
    played = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-i", url, "-t", "2", "-f", "null", "-", stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(played.communicate(), 60)
    assert played.returncode == 0, err.decode()
    assert node.hls is not None and node.hls.program(__import__("uuid").UUID(room_id)).stats.frames_encoded > 0
    metrics = await (await client.get("/metrics")).text()
    assert re.search(r"^gbmedia_hls_renditions 1\.0$", metrics, re.MULTILINE)
    assert re.search(r"^gbmedia_hls_frames_transcoded_total [1-9]", metrics, re.MULTILINE)

    # Closing the room removes the rendition: its playlist and media answer 404.
    resp = await client.delete(f"/api/v1/rooms/{room_id}", headers=tenant.admin)
    assert resp.status == 200
    status, body, _ = await get_text(client, f"/hls/{room_id}/live.m3u8")
    assert status == 404 and json.loads(body)["error"]["code"] == "hls_not_found"
    status, _, _ = await get_text(client, f"/hls/{room_id}/{first['segments'][0]}")
    assert status == 404
    assert node.hls.running == {}


async def test_blocking_reload_and_bad_queries(rtc, tenant: Tenant, client: TestClient):
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    await host.publish(ColorVideoTrack(RED), ToneAudioTrack())
    current = await wait_playlist(client, room_id, lambda t: len(t["parts"]) >= 1)
    hint = re.search(r'URI="[0-9a-f]{8}-(\d+)\.(\d+)\.m4s"', current["#EXT-X-PRELOAD-HINT"])
    assert hint is not None
    msn, part = int(hint[1]), int(hint[2])

    # Asking for the hinted part blocks until the playlist lists it.
    status, text, headers = await get_text(client, f"/hls/{room_id}/live.m3u8", _HLS_msn=str(msn), _HLS_part=str(part))
    assert status == 200, text
    assert headers["Cache-Control"].startswith("public, max-age=")
    listed = parse_playlist(text)
    assert any(uri.endswith(f"-{msn}.{part}.m4s") for _, uri, _ in listed["parts"])
    # The preload hint's part itself is held until it exists, then served.
    hinted = re.search(r'URI="([^"]+)"', listed["#EXT-X-PRELOAD-HINT"])[1]  # type: ignore[index]
    resp = await client.get(f"/hls/{room_id}/{hinted}")
    assert resp.status == 200 and resp.content_type == "video/iso.segment"
    assert len(await resp.read()) > 100

    # Blocking on a whole segment (no _HLS_part) waits for it to complete.
    status, text, _ = await get_text(client, f"/hls/{room_id}/live.m3u8", _HLS_msn=str(msn))
    assert status == 200 and any(uri.endswith(f"-{msn}.m4s") for uri in parse_playlist(text)["segments"])

    for params in (
        {"_HLS_msn": "-1"},
        {"_HLS_msn": "x"},
        {"_HLS_part": "1"},
        {"_HLS_msn": "1", "_HLS_part": "a"},
        {"_HLS_msn": "100000"},
    ):
        status, body, _ = await get_text(client, f"/hls/{room_id}/live.m3u8", **params)
        assert status == 400, params
        assert json.loads(body)["error"]["code"] == "invalid_hls_query"
    for name in ("nope.m4s", "00000000-1.m4s", "00000000-init.mp4", "live.m3u8.bak"):
        status, body, _ = await get_text(client, f"/hls/{room_id}/{name}")
        assert status == 404 and json.loads(body)["error"]["code"] == "hls_file_not_found", name
    status, body, _ = await get_text(client, "/hls/not-a-uuid/live.m3u8")
    assert status == 404 and json.loads(body)["error"]["code"] == "hls_not_found"
    status, _, headers = await get_text(client, f"/hls/{room_id}/live.m3u8")
    assert headers["Cache-Control"] == "no-cache" and headers["Content-Type"] == "application/vnd.apple.mpegurl"


async def test_h264_source_is_remuxed_without_encoding(
    rtc, tenant: Tenant, client: TestClient, node: Node, tmp_path: Path
):
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    host.publisher = RTCPeerConnection(NO_STUN)
    transceiver = host.publisher.addTransceiver(ColorVideoTrack(RED, 320, 240), direction="sendonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    )
    await host.publish()
    found = await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2)
    program = node.hls.program(__import__("uuid").UUID(room_id))  # type: ignore[union-attr]
    assert program is not None and program.video_codec == "h264"
    assert program.stats.frames_encoded == 0 and program.stats.video_frames > 30  # remuxed, never encoded
    assert program.has_audio is False
    init = await media(client, room_id, found["#EXT-X-MAP"][5:-1])
    clip = tmp_path / "h264.mp4"
    clip.write_bytes(init + b"".join([await media(client, room_id, uri) for uri in found["segments"]]))
    (video,) = ffprobe(clip)["streams"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert int(video["nb_read_frames"]) >= 30
    # Segments end on the publisher's keyframes, which the packager asks for: none runs past the target.
    assert all(d <= 3.5 for d in found["durations"])

    # The program track ends: the rendition goes away with it.
    await host.request({"type": "leave"})
    await wait_for(lambda: not node.hls.running, within=10)  # type: ignore[union-attr]
    status, _, _ = await get_text(client, f"/hls/{room_id}/live.m3u8")
    assert status == 404


async def test_meeting_rooms_get_no_rendition(rtc, tenant: Tenant, client: TestClient, node: Node):
    host = await rtc()
    await host.join(token(tenant, "host", room="meeting"))
    await host.publish(ColorVideoTrack(RED))
    await asyncio.sleep(0.5)
    assert node.hls is not None and node.hls.running == {}


async def test_the_program_hands_over_when_its_video_ends(
    rtc, tenant: Tenant, client: TestClient, node: Node, tmp_path: Path
):
    import uuid

    room_id = await live_room(client, tenant)
    host, guest = await rtc(), await rtc()
    await host.join(token(tenant, "host", room="show"))
    await host.publish(ColorVideoTrack(RED), ToneAudioTrack())
    await guest.join(token(tenant, "guest", room="show"))
    await guest.publish(ColorVideoTrack((30, 30, 220)))
    first = await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 1)
    program = node.hls.program(uuid.UUID(room_id))  # type: ignore[union-attr]
    assert program is not None and program.has_audio

    # The host stops its audio: the program goes on, its audio track now silence.
    audio = next(t for t in host.publisher.getTransceivers() if t.kind == "audio")  # type: ignore[union-attr]
    audio.direction = "inactive"
    await host.publish()
    await wait_for(lambda: node.hls.running[uuid.UUID(room_id)].audio is None, within=10)  # type: ignore[union-attr]
    segments_before = int(first["#EXT-X-MEDIA-SEQUENCE"]) + len(first["segments"])
    later = await wait_playlist(
        client, room_id, lambda t: int(t["#EXT-X-MEDIA-SEQUENCE"]) + len(t["segments"]) >= segments_before + 2
    )
    clip = tmp_path / "silent.mp4"
    clip.write_bytes(
        await media(client, room_id, later["#EXT-X-MAP"][5:-1]) + await media(client, room_id, later["segments"][-1])
    )
    streams = {s["codec_type"]: s for s in ffprobe(clip)["streams"]}
    assert int(streams["audio"]["nb_read_frames"]) >= 40  # about 2 s of (silent) AAC: players never stall

    # The host leaves: the guest's video becomes the program, under a new rendition id.
    await host.request({"type": "leave"})
    await wait_for(
        lambda: (
            (p := node.hls.program(uuid.UUID(room_id))) is not None  # type: ignore[union-attr]
            and p is not program
        ),
        within=10,
    )
    handed = await wait_playlist(client, room_id, lambda t: t["#EXT-X-MAP"] != first["#EXT-X-MAP"])
    assert handed["#EXT-X-MEDIA-SEQUENCE"] == "0"
    assert node.hls.program(uuid.UUID(room_id)).has_audio is False  # type: ignore[union-attr]
    status, _, _ = await get_text(client, f"/hls/{room_id}/{first['#EXT-X-MAP'][5:-1]}")
    assert status == 404  # the old rendition's media went with it
