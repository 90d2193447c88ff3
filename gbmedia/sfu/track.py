"""A published track: packets in from one publisher, out to every down track."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu import aiortc_adapter

if TYPE_CHECKING:
    from gbmedia.sfu.forwarder import DownTrack

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds: at most two PLIs a second reach a publisher


class PacketSink(Protocol):
    """Something that consumes a published track's RTP packets as they arrive
    (a recorder, an HLS packager): called on the event loop for every packet, so it
    must only queue work, never block. Packets are shared with the down tracks:
    read them, never modify them."""

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None: ...

    def on_track_closed(self) -> None: ...


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
    sinks: list[PacketSink] = field(default_factory=list)
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
        for sink in self.sinks:
            try:
                sink.on_rtp(packet, codec)
            except Exception:  # a failing consumer must not stop the track for the others
                log.exception("packet sink failed; removed", extra={"track_id": self.id})
                self.sinks.remove(sink)
                break
        for down in tuple(self.down_tracks):
            await down.write(packet, codec)

    def add_sink(self, sink: PacketSink) -> None:
        """Feed this track's packets to ``sink`` (asks for a keyframe so it can start)."""
        if sink not in self.sinks:
            self.sinks.append(sink)
        self.request_keyframe()

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

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
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.on_track_closed()
            except Exception:
                log.exception("packet sink failed to close", extra={"track_id": self.id})


