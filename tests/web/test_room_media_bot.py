"""A media bot on the meeting page (web/room) in real Chromium: its tile, its name, its picture.

The bot joins in process (gbmedia/bots/media/bot.py); the page learns of it only
through the room's ordinary events, so this is the page showing a bot "like any
participant". The picture is read back from the tile's <video> through a canvas.
"""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from gbmedia.bots.media.bot import MediaBot
from gbmedia.bots.media.renderers import Slide
from gbmedia.node import Node
from gbmedia.tenancy.models import Actor
from tests.browser import Browser
from tests.helpers import Tenant
from tests.web.test_room_page import STATE_TIMEOUT, open_joined, tile, wait_decoding, wait_hearing

# The mean brightness of the top sixth (the slide's dark title bar) and the bottom sixth (its white page).
PICTURE = """(name) => {
    const tile = [...document.querySelectorAll('#grid .tile:not(.self)')]
        .find(t => t.querySelector('.name').textContent === name);
    const video = tile.querySelector('video');
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const g = canvas.getContext('2d');
    g.drawImage(video, 0, 0);
    const band = Math.floor(canvas.height / 6);
    const mean = (y) => {
        const d = g.getImageData(0, y, canvas.width, band).data;
        let sum = 0;
        for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
        return sum / (d.length / 4) / 3;
    };
    return {width: canvas.width, height: canvas.height, top: mean(0), bottom: mean(canvas.height - band)};
}"""


async def test_the_page_shows_a_media_bot_as_a_participant_with_its_picture_and_tone(
    site: TestClient, tenant: Tenant, browser: Browser, node: Node
):
    alice = await open_joined(browser, site, tenant, "alice")
    room = await node.rooms.open(Actor("tests", "api_key"), uuid.UUID(tenant.instance_id), "standup")
    bot = await MediaBot.join(node.live_rooms, room, name="Slide Bot", renderer=Slide("Welcome", ["to the meeting"]))
    try:
        await alice.wait_for(tile("Slide Bot") + " !== undefined", timeout=STATE_TIMEOUT)
        assert [p["name"] for p in await alice.evaluate("gbroom.participants")] == ["Slide Bot"]
        decoding = await wait_decoding(alice, "Slide Bot")
        assert (decoding["frameWidth"], decoding["videoWidth"]) == (640, 640)
        await wait_hearing(alice, "Slide Bot")
        picture = await alice.evaluate(PICTURE, "Slide Bot")
        assert (picture["width"], picture["height"]) == (640, 360)
        assert picture["top"] < 110 < 200 < picture["bottom"], picture  # dark title bar over a white page

        await bot.leave()
        await alice.wait_for(tile("Slide Bot") + " === undefined", timeout=STATE_TIMEOUT)
        assert await alice.evaluate("gbroom.participants") == []
        alice.assert_no_errors()
    finally:
        await bot.leave()
