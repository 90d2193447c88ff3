"""LL-HLS viewers' usage: the media time players fetch, as ``viewer_minutes`` with channel ``hls``.

LL-HLS is served like a CDN origin (no token, no session), so a viewer is not a
session the meter can time. What is known is what was served: every part or complete
segment a player fetches counts its media duration. A player following the live edge
fetches each moment once (as parts, or as segments when it is behind), so its minutes
are its watching time; the same media fetched again (a retry, a seek back) counts again,
and what a CDN in front serves from its cache is not seen here.
"""

from __future__ import annotations

from gbmedia.rooms.store import Room
from gbmedia.streaming.service import HlsService
from gbmedia.tenancy.metering import Usage, UsageMeter


def meter_hls(hls: HlsService, meter: UsageMeter) -> None:
    def served(room: Room, seconds: float) -> None:
        meter.count_seconds(
            Usage(room.customer_id, room.instance_id, room.id), "viewer_minutes", seconds, channel="hls"
        )

    hls.on_served = served
