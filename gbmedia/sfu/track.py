"""A published track: packets in from one publisher, out to every down track."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu import aiortc_adapter

if TYPE_CHECKING:
    from gbmedia.sfu.forwarder import DownTrack

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds: at most two PLIs a second reach a publisher


def new_track_id() -> str:
    return "TR_" + uuid.uuid4().hex[:12]


@dataclass(eq=False)
class PublishedTrack:
    participant_id: str
    kind: str  # "audio" | "video"
    source: str  # "camera" | "microphone" | "screen_share" | "screen_share_audio" | "unknown"
    receiver: RTCRtpReceiver
    codec: RTCRtpCodecParameters
    mid: str
    name: str = ""
    id: str = field(default_factory=new_track_id)
    muted: bool = False
    muted_by_admin: bool = False
    packets_in: int = 0
    packets_forwarded: int = 0  # sum over its down tracks, kept here so it outlives them
    down_tracks: set[DownTrack] = field(default_factory=set)
    media_ssrc: int | None = None
    _last_keyframe_request: float = 0.0
    _pending_request: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def attach(self) -> None:
        aiortc_adapter.tap_receiver(self.receiver, self.on_packet)

    async def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        self.packets_in += 1
        self.media_ssrc = packet.ssrc
        self.codec = codec
        if self.muted:
            return
        for down in tuple(self.down_tracks):
            await down.write(packet, codec)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per interval."""
        if self.kind != "video" or self.media_ssrc is None:
            return
        now = time.monotonic()
        if now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return
        self._last_keyframe_request = now
        task = asyncio.ensure_future(aiortc_adapter.request_keyframe(self.receiver, self.media_ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for down in tuple(self.down_tracks):
            down.detach()
        self.down_tracks.clear()


