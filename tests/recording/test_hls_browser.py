"""hls.js in real Chromium plays a live room's LL-HLS stream in low-latency mode.

hls.js comes with the live viewer page (``web/``); this test uses whichever copy of
it the repository vendors and skips, saying so, where there is none yet.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from tests.browser import Browser
from tests.helpers import Tenant
from tests.recording.test_hls_live import RED, live_room, rtc, tenant, wait_playlist  # noqa: F401 - fixtures
from tests.rtc import ColorVideoTrack, ToneAudioTrack
from tests.signaling.test_ws import token

WEB = Path(__file__).resolve().parents[2] / "web"


def vendored_hls_js() -> Path | None:
    for name in ("hls.min.js", "hls.light.min.js", "hls.js", "hls.mjs"):
        found = sorted(WEB.rglob(name))
        if found:
            return found[0]
    return None


async def test_hls_js_plays_the_live_stream_in_low_latency_mode(rtc, tenant: Tenant, client: TestClient,  # noqa: F811
                                                               browser: Browser):
    script = vendored_hls_js()
    if script is None:
        pytest.skip("no hls.js vendored under web/ yet (it comes with the live viewer page)")
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    await host.publish(ColorVideoTrack(RED, 320, 240), ToneAudioTrack())
    await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2)
    tab = await browser.open(str(client.make_url("/healthz")))  # same origin as the stream
    await tab.page.add_script_tag(content=script.read_text(encoding="utf-8"))
    await tab.evaluate("""(src) => {
        window.hlsErrors = []; window.partsLoaded = 0;
        const video = document.createElement('video'); video.muted = true; document.body.appendChild(video);
        const hls = new Hls({lowLatencyMode: true}); window.hls = hls; window.video = video;
        hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) window.hlsErrors.push(d.details); });
        hls.on(Hls.Events.FRAG_LOADED, (e, d) => { if (d.part) window.partsLoaded += 1; });
        hls.loadSource(src); hls.attachMedia(video); video.play(); }""", f"/hls/{room_id}/live.m3u8")
    await tab.wait_for("window.video.currentTime > 6", timeout=60)
    state = await tab.evaluate("""({w: video.videoWidth, h: video.videoHeight, errors: window.hlsErrors,
        parts: window.partsLoaded, low: hls.lowLatencyMode, partTarget: hls.levels[0].details.partTarget})""")
    assert (state["w"], state["h"]) == (320, 240)
    assert state["errors"] == [] and state["low"] is True and state["partTarget"] == 0.5, state
    assert state["parts"] >= 4  # it fetched partial segments, not just whole ones
