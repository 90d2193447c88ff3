"""A live room's program: WHEP players and the LL-HLS rendition show the same host.

Before the program had one definition, WHEP followed the first host in join order
and LL-HLS the first video anyone published, so a host who joined first but
published second was on every WHEP player and on no HLS player.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from gbmedia.rooms.live import LiveRoom
from tests.helpers import Tenant
from tests.rtc import ColorVideoTrack, ToneAudioTrack, close_to, mean_rgb, wait_for
from tests.signaling.test_whip import BLUE, RED, host_token, live_token, whep


def the_room(node: Node) -> LiveRoom:
    (live,) = node.live_rooms.live.values()
    return live


def track_of(live: LiveRoom, identity: str, kind: str) -> Any:
    participant = next(p for p in live.participants.values() if p.identity == identity)
    return next(t for t in participant.published if t.kind == kind)


async def test_whep_and_hls_follow_the_first_host_in_join_order(rtc, client: TestClient, tenant: Tenant, node: Node):
    assert node.hls is not None
    opened: list[Any] = []
    try:
        early = await rtc()  # a host on stage first, not publishing yet
        await early.join(host_token(tenant, "early"), kind="live")
        late = await rtc()  # joins second, publishes first (VP8, like the early host's: a player keeps its codec)
        await late.join(host_token(tenant, "late"), kind="live")
        await late.publish(ColorVideoTrack(RED), ToneAudioTrack(), sources={"0": "camera", "1": "microphone"})
        live = the_room(node)
        player = await whep(client, live_token(tenant, "player"), opened=opened)
        await wait_for(lambda: len(player.frames.get("video", [])) >= 3, within=30)
        assert close_to(mean_rgb(player.frames["video"][-1]), RED)
        late_video = track_of(live, "late", "video")
        assert node.hls.running[live.room.id].video is late_video  # the only video so far, on both

        # The host who joined first publishes: the program moves to it, for players and for HLS alike.
        await early.publish(ColorVideoTrack(BLUE), sources={"0": "camera"})
        early_video = track_of(live, "early", "video")
        await wait_for(lambda: close_to(mean_rgb(player.frames["video"][-1]), BLUE), within=30)
        running = node.hls.running[live.room.id]
        assert live.audience is not None and live.audience.current_program.video is early_video
        assert running.video is early_video
        # The audio follows the program too: early sends none, so the first host that does (late) is heard.
        assert running.audio is track_of(live, "late", "audio") is live.audience.current_program.audio
    finally:
        for item in opened:
            for task in getattr(item, "tasks", []):
                task.cancel()
            await item.pc.close()


async def test_a_hidden_publisher_is_never_the_program(rtc, client: TestClient, tenant: Tenant, node: Node):
    """A hidden publisher (a recorder, a bot at work) publishing first is neither on WHEP nor on HLS."""
    assert node.hls is not None
    hidden = await rtc()
    await hidden.join(live_token(tenant, "bot", room_join=True, can_publish=True, hidden=True), kind="live")
    await hidden.publish(ColorVideoTrack(RED), sources={"0": "camera"})
    live = the_room(node)
    assert live.audience is not None and live.audience.current_program.video is None
    assert live.room.id not in node.hls.running
    host = await rtc()
    await host.join(host_token(tenant, "host"), kind="live")
    await host.publish(ColorVideoTrack(BLUE), sources={"0": "camera"})
    host_video = track_of(live, "host", "video")
    await wait_for(lambda: live.room.id in node.hls.running, within=10)
    assert node.hls.running[live.room.id].video is host_video is live.audience.current_program.video
