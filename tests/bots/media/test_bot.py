"""A media bot in a real room: aiortc participants over /rtc see, hear and decode what it publishes.

Everything is real: the node, its SFU, the bot's two peer connections, the people's
aiortc clients. The pictures are checked on decoded pixels, never on timing.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator

import av
import cv2
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import VIDEO_TIME_BASE

from gbmedia.bots.media.bot import BotOptions, MediaBot, bot_identity
from gbmedia.bots.media.filters import blur, edges, sharpen
from gbmedia.bots.media.renderers import Clock, Slide
from gbmedia.errors import ApiError
from gbmedia.node import Node
from gbmedia.rooms.store import Room
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.bots.media.test_filters import laplacian_variance
from tests.helpers import Tenant
from tests.rtc import RtcClient, receiver_threads, wait_for

SMALL = BotOptions(width=320, height=240, fps=10)
MEDIA_WAIT = 30.0


def token(tenant: Tenant, identity: str, room: str = "standup") -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants.participant(room), name=identity.title())


async def open_room(node: Node, tenant: Tenant, name: str = "standup") -> Room:
    return await node.rooms.open(Actor("tests", "api_key"), uuid.UUID(tenant.instance_id), name)


class CheckerTrack(MediaStreamTrack):
    """A black-and-white checkerboard (sharp borders: lots of high frequencies) at 15 fps, drifting slowly."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, square: int = 16) -> None:
        super().__init__()
        self.width, self.height, self.square = width, height, square
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 15)
        shift = self._count // 15 % self.square
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        board = ((((xx + shift) // self.square) + (yy // self.square)) % 2 * 200 + 28).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(board, cv2.COLOR_GRAY2RGB), format="rgb24")
        frame.pts, frame.time_base = self._count * 6000, VIDEO_TIME_BASE
        self._count += 1
        return frame


@pytest.fixture
async def bots() -> AsyncIterator[list[MediaBot]]:
    """Bots a test starts; each leaves after the test (a failed test too)."""
    started: list[MediaBot] = []
    yield started
    for bot in started:
        await bot.leave()


def bgr(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="bgr24")


async def frames_after(client: RtcClient, track_id: str, count: int) -> list[av.VideoFrame]:
    """The next ``count`` video frames ``client`` decodes of ``track_id``, skipping a few in flight."""
    start = len(client.decoded(track_id)) + 8  # encoded (or in the jitter buffer) before the caller's change
    await wait_for(lambda: len(client.decoded(track_id)) >= start + count, within=MEDIA_WAIT)
    return client.decoded(track_id)[start : start + count]


async def test_a_bot_s_slide_clock_and_tone_are_decoded_by_a_participant(rtc, tenant: Tenant, node: Node, bots):
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    room = await open_room(node, tenant)
    bot = await MediaBot.join(
        node.live_rooms, room, name="Slide Bot", renderer=Slide("Hello gbmedia", ["a bot drew this"]), options=SMALL
    )
    bots.append(bot)

    joined = await alice.wait_event(lambda e: e["type"] == "participant_joined")
    assert joined["participant"]["name"] == "Slide Bot"
    assert joined["participant"]["identity"] == bot_identity("Slide Bot") == "bot:slide-bot"
    await wait_for(lambda: len(_published(alice, bot)) == 2, within=MEDIA_WAIT)
    tracks = _published(alice, bot)
    video, audio = tracks["video"], tracks["audio"]

    # The slide, decoded by alice: its dark title bar carries light text; the white body dark text.
    (slide,) = await frames_after(alice, video, 1)
    image = bgr(slide)
    assert image.shape == (240, 320, 3)
    bar, body = image[4:44].astype(int), image[60:110].astype(int)
    assert bar.mean() < 110 and (bar > 180).all(axis=2).any(), "light title text on the dark bar"
    assert body.mean() > 180 and (body < 90).all(axis=2).any(), "dark text on the white slide"
    assert image[200:].mean() > 230, "the slide's empty bottom is white"

    # The tone: alice hears a 440 Hz sine (not silence).
    await wait_for(lambda: len(alice.frames.get(audio, [])) >= 20, within=MEDIA_WAIT)
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in alice.frames[audio][-10:]]).astype(float)
    assert np.sqrt(np.mean(samples**2)) > 500

    # The bot switches to a clock on the same track: the picture is dark now, and its bar sweeps.
    await bot.show(Clock())
    clock = [bgr(f) for f in await frames_after(alice, video, 12)]
    assert all(image.mean() < 110 for image in clock)
    lengths = {round(bar_length(image) * 20) for image in clock}
    assert len(lengths) > 3, "the clock moves from frame to frame"
    assert bot.video.rendered > 0 and bot.video.processed == 0
    assert all(name.startswith(f"gbmedia-mediabot-{bot.id}") for name in bot.worker.threads)


def bar_length(image: np.ndarray) -> float:
    """How far the clock's orange seconds bar reaches along the bottom, as a share of the width."""
    row = image[-4].astype(int)
    orange = (row[:, 2] > 180) & (row[:, 0] < 140)
    return float(orange.mean())


def _published(client: RtcClient, bot: MediaBot) -> dict[str, str]:
    return {
        e["track"]["kind"]: e["track"]["id"]
        for e in client.events
        if e["type"] == "track_published" and e["participant_id"] == bot.participant.id
    }


async def test_a_processing_bot_blurs_sharpens_and_finds_edges_off_the_loop(rtc, tenant: Tenant, node: Node, bots):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    alice_video = (await alice.publish(CheckerTrack()))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    room = await open_room(node, tenant)
    bot = await MediaBot.join(node.live_rooms, room, name="Lens", options=BotOptions(320, 240, 15, audio=False))
    bots.append(bot)
    assert await bot.process("alice", blur) == alice_video
    await wait_for(lambda: "video" in _published(bob, bot), MEDIA_WAIT)
    processed = _published(bob, bot)["video"]

    # Bob decodes both: alice's own video (what the bot decoded) and the bot's blurred copy.
    blurred = [bgr(f) for f in await frames_after(bob, processed, 5)]
    originals = [bgr(f) for f in await frames_after(bob, alice_video, 5)]
    original_energy = np.median([laplacian_variance(i) for i in originals])
    blurred_energy = np.median([laplacian_variance(i) for i in blurred])
    assert blurred_energy < original_energy / 4, (blurred_energy, original_energy)
    assert abs(np.mean(blurred) - np.mean(originals)) < 20, "the same picture, only softer"

    await bot.process("alice", sharpen)
    sharpened = [bgr(f) for f in await frames_after(bob, processed, 5)]
    assert np.median([laplacian_variance(i) for i in sharpened]) > blurred_energy * 4

    await bot.process("alice", edges)
    outlines = [bgr(f) for f in await frames_after(bob, processed, 5)]
    assert np.median([o.mean() for o in originals]) > 90  # half the board is light
    assert np.median([o.mean() for o in outlines]) < 80, "edges: mostly black"
    assert 0.01 < np.median([(o[:, :, 1] > 128).mean() for o in outlines]) < 0.35, "with white outlines"

    # All the pixel work ran in the bot's worker thread, never on the event loop's.
    assert bot.video.processed >= 15
    assert bot.video.filter_threads and all(n.startswith("gbmedia-mediabot-") for n in bot.video.filter_threads)
    assert threading.current_thread().name not in bot.video.filter_threads


async def test_a_bot_draws_again_when_the_processed_participant_leaves(rtc, tenant: Tenant, node: Node, bots):
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    await alice.publish(CheckerTrack())
    await bob.join(token(tenant, "bob"))
    bot = await MediaBot.join(node.live_rooms, await open_room(node, tenant), name="Lens", options=SMALL)
    bots.append(bot)
    await bot.process("alice", edges)
    await wait_for(lambda: "video" in _published(bob, bot), MEDIA_WAIT)
    processed = _published(bob, bot)["video"]
    await frames_after(bob, processed, 3)
    await alice.request({"type": "leave"})
    await wait_for(lambda: bot.processing is None, within=MEDIA_WAIT)
    rendered = bot.video.rendered
    clock = [bgr(f) for f in await frames_after(bob, processed, 3)]
    assert bot.video.rendered > rendered
    assert max(bar_length(image) for image in clock) > 0, "the clock's orange bar: not the grey edges any more"

    with pytest.raises(ApiError) as missing:
        await bot.process("alice", blur)
    assert missing.value.code == "participant_not_found"
    with pytest.raises(ApiError) as no_video:
        await bot.process("bob", blur)
    assert no_video.value.code == "track_not_found"


async def test_a_bot_leaves_cleanly_and_the_others_see_it_go(rtc, tenant: Tenant, node: Node):
    before = receiver_threads()
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    await alice.publish(CheckerTrack())
    room = await open_room(node, tenant)
    bot = await MediaBot.join(node.live_rooms, room, name="Lens", options=SMALL)
    await bot.process("alice", blur)
    await wait_for(lambda: bot.video.processed >= 3, within=MEDIA_WAIT)
    live = node.live_rooms.live[room.id]
    server_side = [bot.participant.publisher, bot.participant.subscriber]

    await bot.leave()
    await bot.leave()  # twice is once
    left = await alice.wait_event(lambda e: e["type"] == "participant_left")
    assert left["participant_id"] == bot.participant.id
    assert bot.participant.id not in live.participants
    peers = [bot.publisher, bot.subscriber] + [p.pc for p in server_side if p is not None]
    assert [pc.connectionState for pc in peers] == ["closed"] * 4
    assert not [t for t in threading.enumerate() if t.name.startswith(f"gbmedia-mediabot-{bot.id}")]
    await alice.close()
    await wait_for(lambda: not receiver_threads() - before, within=10)  # every decoder thread ended


async def test_bots_of_one_name_share_a_room_and_leave_when_it_closes(tenant: Tenant, node: Node):
    room = await open_room(node, tenant, "closing")
    first = await MediaBot.join(node.live_rooms, room, name="Clock", options=SMALL)
    second = await MediaBot.join(node.live_rooms, room, name="Clock", options=SMALL)
    live = node.live_rooms.live[room.id]
    assert sorted(p.identity for p in live.participants.values()) == ["bot:clock", "bot:clock-2"]
    await wait_for(lambda: first.video.rendered >= 2 and second.video.rendered >= 2, within=MEDIA_WAIT)
    await node.rooms.close(Actor("tests", "api_key"), room)
    for bot in (first, second):
        await wait_for(lambda bot=bot: bot.left and bot.publisher.connectionState == "closed", within=MEDIA_WAIT)
        await bot.leave()  # returns at once: it has left
        assert not [t for t in threading.enumerate() if t.name.startswith(f"gbmedia-mediabot-{bot.id}")]
