"""Simulcast from a real Chromium page: layers, sizes a viewer asks for, dynacast.

The page publishes its camera (Chromium's fake 640x480 device) with rids q/h/f; the
server forwards each viewer the smallest layer at least as large as the viewer's
<video> element and tells the publisher to stop encoding layers nobody watches.
"""

from __future__ import annotations

import time

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from tests.browser import Browser
from tests.helpers import Tenant
from tests.rtc import wait_for
from tests.web.test_room_page import MEDIA_TIMEOUT, open_joined, video_of, wait_decoding


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

    bob = await open_joined(browser, site, tenant, "bob")
    await bob.page.set_viewport_size({"width": 1280, "height": 900})
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
