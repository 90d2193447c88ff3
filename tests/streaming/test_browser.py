"""hls.js in real Chromium plays a live room's LL-HLS stream in low-latency mode.

hls.js comes with the live viewer page (``web/live/vendor``): the test loads the same
module the page loads on its LL-HLS fallback.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient

from tests.browser import Browser
from tests.helpers import Tenant
from tests.rtc import ColorVideoTrack, ToneAudioTrack
from tests.signaling.test_ws import token
from tests.streaming.test_live import RED, live_room, wait_playlist

WEB = Path(__file__).resolve().parents[2] / "web"


HLS_JS = WEB / "live" / "vendor" / "hls.light.min.mjs"  # what web/live loads on its LL-HLS fallback


async def test_hls_js_plays_the_live_stream_in_low_latency_mode(
    rtc, tenant: Tenant, client: TestClient, browser: Browser
):
    assert HLS_JS.is_file(), "web/live vendors hls.js"
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    await host.publish(ColorVideoTrack(RED, 320, 240), ToneAudioTrack())
    await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2)
    tab = await browser.open(str(client.make_url("/healthz")))  # same origin as the stream
    # the same ES module the live page imports, served by the node under /web/
    await tab.evaluate("async () => { window.Hls = (await import('/web/live/vendor/hls.light.min.mjs')).default; }")
    await tab.evaluate(
        """(src) => {
        window.hlsErrors = []; window.partsLoaded = 0;
        const video = document.createElement('video'); video.muted = true; document.body.appendChild(video);
        const hls = new Hls({lowLatencyMode: true}); window.hls = hls; window.video = video;
        hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) window.hlsErrors.push(d.details); });
        hls.on(Hls.Events.FRAG_LOADED, (e, d) => { if (d.part) window.partsLoaded += 1; });
        hls.loadSource(src); hls.attachMedia(video); video.play(); }""",
        f"/hls/{room_id}/live.m3u8",
    )
    await tab.wait_for("window.video.currentTime > 6", timeout=60)
    state = await tab.evaluate("""({w: video.videoWidth, h: video.videoHeight, errors: window.hlsErrors,
        parts: window.partsLoaded, low: hls.lowLatencyMode, partTarget: hls.levels[0].details.partTarget})""")
    assert (state["w"], state["h"]) == (320, 240)
    assert state["errors"] == [] and state["low"] is True and state["partTarget"] == 0.5, state
    assert state["parts"] >= 4  # it fetched partial segments, not just whole ones
