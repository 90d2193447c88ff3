"""LL-HLS viewer minutes: the media time players fetched, as ``viewer_minutes`` with channel ``hls``.

A real aiortc host publishes H.264 into a live room (remuxed, not encoded); the test
plays the rendition as a player would (segments, then parts at the live edge) and the
node's meter writes exactly the media time served: each part's or segment's duration,
the init segment and playlists nothing.
"""

from __future__ import annotations

import uuid

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCRtpSender

from gbmedia.node import Node
from tests.helpers import Tenant
from tests.rtc import NO_STUN, ColorVideoTrack
from tests.signaling.test_ws import token
from tests.streaming.test_live import live_room, media, wait_playlist


async def test_hls_viewer_minutes_are_the_media_time_served(rtc, tenant: Tenant, client: TestClient, node: Node):
    room_id = await live_room(client, tenant)
    host = await rtc()
    await host.join(token(tenant, "host", room="show"))
    host.publisher = RTCPeerConnection(NO_STUN)
    transceiver = host.publisher.addTransceiver(ColorVideoTrack((0, 90, 200), 320, 240), direction="sendonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    )
    await host.publish()
    found = await wait_playlist(client, room_id, lambda t: len(t["segments"]) >= 2 and t["open_parts"])
    await media(client, room_id, found["#EXT-X-MAP"][5:-1])  # the init segment: no media time
    served = 0.0
    for uri, duration in zip(found["segments"][:2], found["durations"][:2], strict=True):
        await media(client, room_id, uri)
        served += duration
    for duration, uri, _ in found["open_parts"]:
        await media(client, room_id, uri)
        served += duration
    await node.meter.flush()
    minutes = await node.db.pool.fetchval(
        """SELECT sum(quantity)::float8 FROM usage_events
            WHERE customer_id = $1 AND kind = 'viewer_minutes' AND channel = 'hls'""",
        uuid.UUID(tenant.customer_id),
    )
    # The playlist rounds durations to 5 decimals; the meter keeps microminutes.
    assert minutes * 60 == pytest.approx(served, abs=0.01)
