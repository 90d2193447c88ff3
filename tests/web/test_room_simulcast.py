"""Simulcast from a real Chromium page: layers, sizes a viewer asks for, dynacast.

The page publishes its camera (Chromium's fake device, asked for 1280x720) with rids
q/h/f (320x180, 640x360, 1280x720); the server forwards each viewer the smallest layer
at least as large as the viewer's <video> element (CSS pixels times the screen's density,
counted up to 1.5) and tells the publisher to stop encoding layers nobody watches.
Viewers here hold tokens that cannot publish: their pages send nothing (two shared
cores encode one camera), and show only the tiles of the others.
"""

from __future__ import annotations

import math
import time

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from tests.browser import Browser, Tab
from tests.helpers import Tenant
from tests.rtc import wait_for
from tests.web.test_room_page import (
    MEDIA_TIMEOUT,
    STATE_TIMEOUT,
    join_link,
    open_joined,
    video_of,
    viewer_grants,
    wait_decoding,
)

MAX_PIXEL_DENSITY = 1.5  # web/room/layers.js
LAYER_SIZES = ((320, 180), (640, 360), (1280, 720))  # q, h, f of the page's 1280x720 camera


async def open_viewer(
    browser: Browser, site: TestClient, tenant: Tenant, identity: str, viewport: tuple[int, int], density: float = 1
) -> Tab:
    """A joined page that may only watch, in a window of ``viewport`` CSS pixels at ``density``."""
    tab = await browser.open(
        join_link(site, tenant, identity, grants=viewer_grants(), autojoin="1"),
        viewport=viewport,
        device_scale_factor=density,
    )
    await tab.wait_for("window.gbroom && gbroom.joined", timeout=STATE_TIMEOUT)
    return tab


async def tile_size(tab: Tab, name: str) -> tuple[int, int]:
    """What the page should report for ``name``'s camera: its <video> in CSS pixels times the density (capped)."""
    width, height, ratio = await tab.evaluate(
        "() => { const t = [...document.querySelectorAll('#grid .tile:not(.self)')]"
        f".find(t => t.querySelector('.name').textContent === {name!r}); const r = t.querySelector('video')"
        ".getBoundingClientRect(); return [r.width, r.height, devicePixelRatio]; }"
    )
    density = min(ratio, MAX_PIXEL_DENSITY)
    return math.floor(width * density + 0.5), math.floor(height * density + 0.5)  # JavaScript's Math.round


def camera_of(node: Node, identity: str):  # type: ignore[no-untyped-def]
    for live in node.live_rooms.live.values():
        for participant in live.participants.values():
            if participant.identity == identity:
                return next((t for t in participant.published if t.source == "camera"), None)
    return None


def subscription_of(node: Node, identity: str, track_id: str):  # type: ignore[no-untyped-def]
    for live in node.live_rooms.live.values():
        for participant in live.participants.values():
            if participant.identity == identity:
                return participant.subscriptions.get(track_id)
    return None


async def test_a_page_publishes_simulcast_and_viewers_get_the_layer_their_tile_needs(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    alice = await open_joined(browser, site, tenant, "alice")
    await wait_for(lambda: camera_of(node, "alice") is not None, within=MEDIA_TIMEOUT)
    camera = camera_of(node, "alice")
    assert camera.simulcast and camera.rids == ("q", "h", "f")
    # Alone in the room: nobody watches, so dynacast keeps only the lowest layer encoding.
    await alice.wait_for(f"JSON.stringify(gbroom.activeLayers[{camera.id!r}]) === '[\"q\"]'", timeout=MEDIA_TIMEOUT)
    await alice.wait_for(
        "(async () => (await gbroom.publishing()).filter(l => l.active).map(l => l.rid).join() === 'q')()",
        timeout=MEDIA_TIMEOUT,
    )
    await wait_for(
        lambda: [lay.active(time.monotonic()) for lay in camera.layers] == [True, False, False], within=MEDIA_TIMEOUT
    )

    # Bob watches in a large window: his only tile (768x432) is larger than the h layer.
    bob = await open_viewer(browser, site, tenant, "bob", (1600, 1000))
    await wait_decoding(bob, "Alice")
    # A large tile: the layers resume and bob gets more than the lowest one.
    try:
        big = await bob.wait_for(
            f"(async () => {{ const v = {video_of('Alice')}; return v && v.frameWidth > "
            f"{camera.layers[0].size[0]} && v; }})()",
            timeout=MEDIA_TIMEOUT,
        )
    except AssertionError as exc:
        down = subscription_of(node, "bob", camera.id)
        state = (
            None
            if down is None
            else {
                "desired": down.desired,
                "requested": down.requested_layer,
                "cap": down.bandwidth_cap,
                "current": down.current_layer,
                "paused": down.paused,
                "hold": down.allocator.hold,
            }
        )
        sub = next(
            (
                p.subscriber
                for live in node.live_rooms.live.values()
                for p in live.participants.values()
                if p.identity == "bob"
            ),
            None,
        )
        raise AssertionError(
            f"{exc}; bob's down track {state}; estimate {sub.estimate_bps if sub else None}; layers "
            f"{[lay.to_json(time.monotonic()) for lay in camera.layers]}; announced {camera.announced_rids}; alice "
            f"{await alice.evaluate('async () => [gbroom.activeLayers, await gbroom.publishing()]')}"
        ) from None
    sent = await alice.evaluate("async () => await gbroom.publishing()")
    assert len({layer["rid"] for layer in sent if layer["active"]}) >= 2, sent
    down = subscription_of(node, "bob", camera.id)
    assert down is not None
    await wait_for(lambda: down.requested_layer == 2, within=MEDIA_TIMEOUT)  # a tile wider than the h layer
    assert down.view_size == await tile_size(bob, "Alice")

    # A small window: the tile shrinks, the page reports it, the server sends a smaller layer.
    await bob.page.set_viewport_size({"width": 360, "height": 300})
    await wait_for(lambda: down.requested_layer < 2, within=MEDIA_TIMEOUT)
    wanted = camera.layers[down.requested_layer]
    await wait_for(lambda: wanted.size is not None, within=MEDIA_TIMEOUT)  # it resumed: its keyframes arrive
    smaller = wanted.size
    small = await bob.wait_for(
        f"(async () => {{ const v = {video_of('Alice')}; return v && v.frameWidth <= {smaller[0]} && v; }})()",
        timeout=MEDIA_TIMEOUT,
    )
    assert small["framesDecoded"] > big["framesDecoded"]  # it kept decoding across the switch

    # Dynacast: nobody watches the top layer now, so alice's page is told to stop encoding it.
    await alice.wait_for(f"!(gbroom.activeLayers[{camera.id!r}] || ['f']).includes('f')", timeout=MEDIA_TIMEOUT)
    await alice.wait_for(
        "(async () => (await gbroom.publishing()).some(l => l.rid === 'f' && !l.active))()", timeout=MEDIA_TIMEOUT
    )

    # The tile hidden: the page pauses the video, the server sends none of it.
    await bob.evaluate("() => { document.querySelector('#grid .tile:not(.self) video').style.display = 'none'; }")
    await wait_for(lambda: down.paused, within=MEDIA_TIMEOUT)
    await bob.evaluate("() => { document.querySelector('#grid .tile:not(.self) video').style.display = ''; }")
    await wait_for(lambda: not down.paused, within=MEDIA_TIMEOUT)
    alice.assert_no_errors()
    bob.assert_no_errors()


async def received_layer(tab: Tab, node: Node, identity: str, camera) -> int:  # type: ignore[no-untyped-def]
    """Once the page has told the server its tile's size, the layer the server picked and the
    page decodes: the smallest at least that large (the top when none is)."""
    down = subscription_of(node, identity, camera.id)
    assert down is not None
    wanted = await tile_size(tab, "Alice")
    try:
        await wait_for(lambda: down.view_size == wanted, within=STATE_TIMEOUT)
    except AssertionError:
        raise AssertionError(f"{identity}'s page reported {down.view_size}, not its tile's {wanted}") from None
    fits = [i for i, (width, height) in enumerate(LAYER_SIZES) if width >= wanted[0] and height >= wanted[1]]
    expected = fits[0] if fits else len(LAYER_SIZES) - 1
    try:
        await wait_for(lambda: down.requested_layer == expected, within=STATE_TIMEOUT)
    except AssertionError:
        raise AssertionError(
            f"{identity} ({wanted}) asks for layer {down.requested_layer}, not {expected}; sizes {camera.layer_sizes()}"
        ) from None
    width = LAYER_SIZES[expected][0]
    try:
        await tab.wait_for(
            f"(async () => {{ const v = {video_of('Alice')}; return v && v.frameWidth === {width} && v; }})()",
            timeout=MEDIA_TIMEOUT,
        )
    except AssertionError as exc:  # an encoder short of CPU may have scaled its layers: say so
        raise AssertionError(f"{exc}; the layers as the server sees them: {camera.layer_sizes()}") from None
    return expected


async def test_a_desk_a_phone_and_a_small_window_each_get_the_layer_their_tile_needs(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    await open_joined(browser, site, tenant, "alice")
    await wait_for(lambda: camera_of(node, "alice") is not None, within=MEDIA_TIMEOUT)
    camera = camera_of(node, "alice")
    await wait_for(lambda: camera.layers[0].size is not None, within=MEDIA_TIMEOUT)
    assert camera.layers[0].size == LAYER_SIZES[0]  # the sizes of the layers not flowing yet are inferred from it

    # A desk: alone in a 1600x1000 window, alice's tile is 768x432; the top layer.
    desk = await open_viewer(browser, site, tenant, "desk", (1600, 1000))
    assert await received_layer(desk, node, "desk", camera) == 2
    assert camera.layers[2].size == LAYER_SIZES[2]

    # A phone (360x640 at three device pixels per CSS pixel): its tile is 328 CSS pixels wide,
    # 492x277 at the capped density; the middle layer, never the top one.
    phone = await open_viewer(browser, site, tenant, "phone", (360, 640), density=3)
    assert await received_layer(phone, node, "phone", camera) == 1
    # The desk now shows two tiles side by side, each still larger than the h layer.
    await desk.wait_for("document.querySelectorAll('#grid .tile').length === 2", timeout=STATE_TIMEOUT)
    assert await received_layer(desk, node, "desk", camera) == 2

    # A small window (360x300): a 328x185 tile; the middle layer.
    small = await open_viewer(browser, site, tenant, "small", (360, 300))
    assert await received_layer(small, node, "small", camera) == 1

    # Layout changes are reported too: three tiles on the desk make each 520 px wide (h);
    # a window as small as 300x300 (a 268x151 tile) gets the lowest layer; the phone turned
    # to landscape (640x360) shows its three tiles two abreast, under 300 CSS pixels wide (h).
    await desk.wait_for("document.querySelectorAll('#grid .tile').length === 3", timeout=STATE_TIMEOUT)
    assert await received_layer(desk, node, "desk", camera) == 1
    await small.page.set_viewport_size({"width": 300, "height": 300})
    assert await received_layer(small, node, "small", camera) == 0
    await phone.page.set_viewport_size({"width": 640, "height": 360})
    assert await received_layer(phone, node, "phone", camera) == 1
    for tab in (desk, phone, small):
        tab.assert_no_errors()
