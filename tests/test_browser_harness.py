"""The real-browser harness works here: camera, microphone, rendering and WebRTC in headless Chromium.

The page is served on the machine's interface address, as gbmedia serves rooms, so
this also proves such an origin gets getUserMedia (tests/browser.py explains how).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gbmedia.config import detect_public_host
from tests.browser import Browser, insecure_origin

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>harness</title>
<video id="local" autoplay muted playsinline></video>
<video id="remote" autoplay muted playsinline></video>
<script>
const counts = {local: 0, remote: 0};  // frames presented, per <video>

function countFrames(video, key) {
  const tick = () => { counts[key]++; video.requestVideoFrameCallback(tick); };
  video.requestVideoFrameCallback(tick);
}

async function startCamera() {
  window.camera = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  const local = document.getElementById('local');
  local.srcObject = camera;
  countFrames(local, 'local');
  const [video] = camera.getVideoTracks(), audio = camera.getAudioTracks();
  const {width, height} = video.getSettings();
  return {width, height, video: video.readyState, audio: audio.map(t => t.readyState)};
}

// pc1 sends the camera, pc2 receives it; candidates are handed over directly.
async function loopback() {
  const pc1 = new RTCPeerConnection(), pc2 = new RTCPeerConnection();
  window.pcs = [pc1, pc2];
  pc1.onicecandidate = e => { if (e.candidate) pc2.addIceCandidate(e.candidate); };
  pc2.onicecandidate = e => { if (e.candidate) pc1.addIceCandidate(e.candidate); };
  const remote = document.getElementById('remote');
  pc2.ontrack = e => {
    if (e.track.kind === 'video') { remote.srcObject = e.streams[0]; countFrames(remote, 'remote'); }
  };
  for (const track of camera.getTracks()) pc1.addTrack(track, camera);
  await pc1.setLocalDescription();
  await pc2.setRemoteDescription(pc1.localDescription);
  await pc2.setLocalDescription();
  await pc1.setRemoteDescription(pc2.localDescription);
}

async function selectedPair(pc) {
  const stats = [...(await pc.getStats()).values()];
  const transport = stats.find(s => s.type === 'transport' && s.selectedCandidatePairId);
  const pair = stats.find(s => s.id === transport.selectedCandidatePairId);
  const local = stats.find(s => s.id === pair.localCandidateId);
  const remote = stats.find(s => s.id === pair.remoteCandidateId);
  return {local: [local.candidateType, local.address], remote: [remote.candidateType, remote.address]};
}
</script>
"""


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    async with TestServer(app, host=detect_public_host()) as server:
        yield str(server.make_url("/"))


def test_only_plain_http_origins_off_loopback_get_the_secure_origin_flag():
    assert insecure_origin("http://192.0.2.2:8080/web/room?x=1") == "http://192.0.2.2:8080"
    assert insecure_origin("http://Example.test/") == "http://example.test"
    # Loopback is secure already; other schemes the flag cannot help.
    for url in (
        "http://localhost:1/",
        "http://127.0.0.1:1/",
        "http://[::1]:1/",
        "http://a.localhost/",
        "https://192.0.2.2/",
        "about:blank",
        "data:text/html,hi",
    ):
        assert insecure_origin(url) is None, url


async def test_camera_renders_and_webrtc_loopback_decodes(browser: Browser, page_url: str):
    tab = await browser.open(page_url)
    assert await tab.evaluate("isSecureContext")

    camera = await tab.evaluate("startCamera()")
    assert 600 <= camera["width"] <= 700 and 440 <= camera["height"] <= 520, camera  # fake camera: 640x480
    assert camera["video"] == "live" and camera["audio"] == ["live"], camera

    # Rendered, and frames keep coming.
    await tab.wait_for("local.videoWidth > 0 && counts.local >= 3")
    seen = await tab.evaluate("counts.local")
    await tab.wait_for(f"counts.local >= {seen + 5}")
    assert await tab.evaluate("local.getVideoPlaybackQuality().totalVideoFrames") > 0

    await tab.evaluate("loopback()")
    await tab.wait_for("pcs[0].connectionState === 'connected' && pcs[1].connectionState === 'connected'")
    await tab.wait_for("remote.videoWidth > 0 && counts.remote >= 3")
    seen = await tab.evaluate("counts.remote")
    await tab.wait_for(f"counts.remote >= {seen + 5}")
    kinds = await tab.evaluate("pcs[1].getReceivers().map(r => r.track.kind).sort()")
    assert kinds == ["audio", "video"]

    # Real addresses, not mDNS names: what an aiortc peer needs from Chromium's candidates.
    pair = await tab.evaluate("selectedPair(pcs[1])")
    for kind, address in pair.values():
        assert kind == "host" and not address.endswith(".local"), pair
    tab.assert_no_errors()


async def test_tab_reports_errors_and_timeouts(browser: Browser, page_url: str):
    tab = await browser.open(page_url)
    await tab.evaluate("console.error('boom'); setTimeout(() => { throw new Error('late'); })")
    await tab.evaluate("new Promise(done => setTimeout(done, 50))")  # events arrive before this answer
    assert any("error: boom" in e for e in tab.errors) and any("late" in e for e in tab.errors), tab.errors
    with pytest.raises(AssertionError, match=re.escape("waited 0.2 s for `counts.local > 0`; last value False")):
        await tab.wait_for("counts.local > 0", timeout=0.2)
    with pytest.raises(AssertionError, match="boom"):
        tab.assert_no_errors()

    # Each tab has its own context: storage is not shared.
    await tab.evaluate("localStorage.setItem('who', 'first')")
    async with await browser.open(page_url) as other:
        assert await other.evaluate("localStorage.getItem('who')") is None
