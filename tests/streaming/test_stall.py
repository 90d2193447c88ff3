"""A stalled program (its video muted): blocking requests time out with 503, then the stream resumes.

Short segments here (1 s, parts of 0.25 s: target duration 2, blocking timeout 6 s) keep the waits short.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.rtc import ColorVideoTrack
from tests.signaling.test_ws import token
from tests.streaming.test_live import RED, get_text, live_room, wait_playlist


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, hls_segment_seconds=1.0, hls_part_seconds=0.25)


async def test_a_stalled_stream_times_out_blocking_requests_then_resumes(rtc, tenant: Tenant, client: TestClient):
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    track_id = (await host.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    live = await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2)
    assert live["#EXT-X-TARGETDURATION"] == "2" and live["#EXT-X-PART-INF"] == "PART-TARGET=0.25"
    assert all(d <= 0.25 + 1e-6 for d, _, _ in live["parts"][:-1])

    assert (await host.request({"type": "mute", "track_id": track_id, "muted": True}))["type"] == "ack"
    stalled = await wait_playlist(client, room_id, lambda t: True)
    hint = re.search(r'URI="([0-9a-f]{8})-(\d+)\.(\d+)\.m4s"', stalled["#EXT-X-PRELOAD-HINT"])
    assert hint is not None
    rid, msn = hint[1], int(hint[2])
    status, body, _ = await get_text(client, f"/hls/{room_id}/live.m3u8", _HLS_msn=str(msn + 1), _HLS_part="3")
    assert status == 503 and json.loads(body)["error"]["code"] == "hls_timeout"
    status, body, _ = await get_text(client, f"/hls/{room_id}/{rid}-{msn + 1}.0.m4s")  # held, then given up
    assert status == 404 and json.loads(body)["error"]["code"] == "hls_file_not_found"

    # Unmuted, the publisher's next keyframe restarts the stream; the playlist moves on.
    await host.request({"type": "mute", "track_id": track_id, "muted": False})
    status, text, _ = await get_text(client, f"/hls/{room_id}/live.m3u8", _HLS_msn=str(msn + 1), _HLS_part="0")
    assert status == 200 and f"{rid}-{msn + 1}.0.m4s" in text
    resumed = await wait_playlist(client, room_id, lambda t: len(t["open_parts"]) >= 1)
    assert all(d <= 2 for d in resumed["durations"])  # the stall did not stretch a segment past the target
