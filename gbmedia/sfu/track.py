"""A published track: packets in from one publisher, out to every down track."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu import aiortc_adapter, fanout
from gbmedia.sfu import rtp as rtp_bytes
from gbmedia.sfu.codecs import is_keyframe
from gbmedia.sfu.frames import FrameSink, FrameSource

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds: at most two PLIs a second reach a publisher, per layer
LAYER_ACTIVE_SECONDS = 1.0  # a layer with no packet for this long is not flowing (paused, or lost)
# Settled native down tracks are asked again this often (and on every keyframe): a layer may have
# stopped flowing, the sender reports want counts. Each ask costs a Python call per down track.
REVIEW_INTERVAL = 0.5
DYNACAST_PAUSE_DELAY = 2.0  # a layer nobody wants is paused only after this long (no flapping)

# What a layer is assumed to need before it was measured (bits/s; web/room's maxBitrate values).
DEFAULT_LAYER_BITRATES = (150_000, 500_000, 1_500_000)

LayersListener = Callable[["PublishedTrack", list[str]], None]


class PacketSink(Protocol):
    """Something that consumes a published track's RTP packets as they arrive (a level
    meter, the track's frame source): called on the event loop for every packet, so it
    must only queue work, never block. Packets are shared with the down tracks: read
    them, never modify them. A simulcast track feeds sinks its best flowing layer; a
    change of layer shows as a new SSRC and starts with a keyframe. Consumers of whole
    frames (recorders, LL-HLS) are :class:`~gbmedia.sfu.frames.FrameSink` objects instead."""

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None: ...

    def on_track_closed(self) -> None: ...


def new_track_id() -> str:
    return "TR_" + uuid.uuid4().hex[:12]


@dataclass(eq=False)
class Layer:
    """One encoding of a track (a simulcast rid, or the only one) as received."""

    index: int  # 0 = lowest quality
    rid: str | None
    ssrc: int | None = None
    packets: int = 0
    bytes: int = 0
    bitrate: float = 0.0  # bits/s over the last measuring window; kept while paused
    size: tuple[int, int] | None = None  # from its keyframes (VP8)
    last_packet: float = float("-inf")
    _window_start: float = 0.0
    _window_bytes: int = 0
    _last_keyframe_request: float = float("-inf")

    def note(self, now: float, size: int) -> None:
        self.packets += 1
        self.bytes += size
        self.last_packet = now
        self._window_bytes += size
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            if elapsed < 2.0:  # a window that spans a pause measures nothing useful
                self.bitrate = self._window_bytes * 8 / elapsed
            self._window_start, self._window_bytes = now, 0

    def active(self, now: float) -> bool:
        return now - self.last_packet < LAYER_ACTIVE_SECONDS

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "rid": self.rid,
            "index": self.index,
            "active": self.active(now),
            "bitrate": round(self.bitrate),
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
        }


class Outgoing:
    """One incoming packet, prepared once for every down track that forwards it."""

    __slots__ = ("abs_send_time", "audio_level", "body", "extensions", "key", "layer", "ntp_time", "packet")

    def __init__(self, packet: RtpPacket, layer: int, key: bool, ntp_time: int) -> None:
        self.packet = packet
        self.layer = layer
        self.key = key
        self.body = rtp_bytes.body(packet.payload, packet.padding_size)
        self.ntp_time = ntp_time  # one clock reading per incoming packet, for every subscriber
        self.abs_send_time = aiortc_adapter.abs_send_time(ntp_time)
        self.audio_level = packet.extensions.audio_level
        self.extensions: dict[int, bytes] = {}  # by id() of an interned layout (forwarder._LAYOUTS)

    def extension_block(self, layout: rtp_bytes.ExtensionLayout) -> bytes:
        key = id(layout)  # layouts are interned (one object per value), and live as long as this packet's loop
        block = self.extensions.get(key)
        if block is None:
            block = self.extensions[key] = rtp_bytes.extension_block(layout, self.abs_send_time, self.audio_level)
        return block


class Downstream(Protocol):
    """What a published track needs of a subscriber's down track (:class:`gbmedia.sfu.forwarder.DownTrack`);
    a protocol, so this module need not import the forwarder that imports it."""

    @property
    def desired(self) -> int | None:
        """The simulcast layer it wants."""
        ...

    def write(self, out: Outgoing, now: float) -> None:
        """Decide about one packet, and send it on the Python path (the native one sends in
        :meth:`PublishedTrack.on_packet`, for every native down track at once)."""
        ...

    def sizes_changed(self) -> None:
        """A layer's size became known or changed."""
        ...

    def resume_on_keyframe(self) -> None:
        """Forward nothing more of this video until a keyframe (its decoder lost the picture)."""
        ...

    def detach(self) -> None: ...


@dataclass(eq=False)
class PublishedTrack:
    participant_id: str
    kind: str  # "audio" | "video"
    source: str  # "camera" | "microphone" | "screen_share" | "screen_share_audio" | "unknown"
    receiver: RTCRtpReceiver
    codec: RTCRtpCodecParameters
    mid: str
    name: str = ""
    rids: tuple[str, ...] = ()  # simulcast layers, lowest first; empty when not simulcast
    id: str = field(default_factory=new_track_id)
    muted: bool = False
    muted_by_admin: bool = False
    packets_in: int = 0
    packets_forwarded: int = 0  # sum over its down tracks, kept here so it outlives them
    bytes_in: int = 0  # RTP payload bytes received
    bytes_forwarded: int = 0  # RTP packet bytes (header and payload) sent to subscribers
    send_drops: int = 0  # datagrams the native path's full send buffer refused
    down_tracks: set[Downstream] = field(default_factory=set)
    # The native fan-out (gbmedia/sfu/_fanout.c): the down tracks' C sending state, and the extension
    # layouts they use (a downlink names its layout by index: the blocks are built once per packet).
    native_links: list[Any] = field(default_factory=list)
    native_layouts: list[rtp_bytes.ExtensionLayout] = field(default_factory=list)
    # Down tracks whose next packet needs a Python decision: all on the Python path; on the native one,
    # those not settled (connecting, waiting for a keyframe, between layers). The others are asked
    # again on every keyframe and every REVIEW_INTERVAL (a layer may stop flowing).
    deciding: set[Downstream] = field(default_factory=set)
    _review_at: float = 0.0
    sinks: list[PacketSink] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    media_ssrc: int | None = None  # the last SSRC a packet came from
    on_layers: LayersListener | None = None  # dynacast: told which rids are needed
    announced_rids: list[str] | None = None
    frame_source: FrameSource | None = field(default=None, repr=False)  # made for the first frame sink
    _by_ssrc: dict[int, Layer] = field(default_factory=dict)
    _sink_layer: int | None = None
    _pause_timer: asyncio.TimerHandle | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = [Layer(i, rid) for i, rid in enumerate(self.rids)] or [Layer(0, None)]

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    @property
    def top(self) -> int:
        return len(self.layers) - 1

    def attach(self) -> None:
        aiortc_adapter.tap_receiver(self.receiver, self.on_packet, self.remb_floor)

    def rebind(self, receiver: RTCRtpReceiver, codec: RTCRtpCodecParameters, mid: str) -> None:
        """Go on receiving from a new publisher connection (the client's media path changed and it
        negotiated a fresh one): same id, same down tracks and sinks, packets from ``receiver`` now.

        The new connection's streams have new SSRCs: every layer is learnt again from its first
        packet, and each down track waits for a keyframe and numbers on from what it sent, so a
        subscriber sees a short freeze, not a new track.
        """
        self.receiver, self.codec, self.mid = receiver, codec, mid
        self._by_ssrc.clear()
        for layer in self.layers:
            layer.ssrc = None
            layer.last_packet = float("-inf")  # flowing is judged on the new connection's packets only
        self._sink_layer = None
        self.attach()
        for down in list(self.down_tracks):
            down.resume_on_keyframe()

    def remb_floor(self) -> int:
        """The least bandwidth estimate to tell a simulcast publisher: what its wanted layers need.

        A receive-side estimate never exceeds ~1.5x what arrives. While dynacast has
        layers paused, little arrives, so the estimate sinks, and the publisher's
        encoder then has no budget to resume a layer when a subscriber wants it (the
        browser allocates layers from the estimate): the layer stays off for good.
        Its own loss-based control still backs off on a link that really is congested.
        """
        if not self.simulcast:
            return 0
        wanted = self.announced_rids if self.announced_rids is not None else [lay.rid for lay in self.layers]
        total = 0.0
        for layer in self.layers:
            if layer.rid in wanted:
                total += layer.bitrate or DEFAULT_LAYER_BITRATES[min(layer.index, len(DEFAULT_LAYER_BITRATES) - 1)]
        return int(total * 1.1)

    def _layer_for(self, packet: RtpPacket) -> Layer | None:
        """The layer of a packet from an SSRC not seen before (by its rid when simulcast)."""
        if not self.simulcast:
            layer = self.layers[0]
        else:
            rid = packet.extensions.rtp_stream_id
            layer = next((lay for lay in self.layers if lay.rid == rid), None) if rid else None
            if layer is None:
                return None
        if layer.ssrc is not None:
            self._by_ssrc.pop(layer.ssrc, None)
        layer.ssrc = packet.ssrc
        self._by_ssrc[packet.ssrc] = layer
        return layer

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        layer = self._by_ssrc.get(packet.ssrc) or self._layer_for(packet)
        if layer is None:
            return  # a simulcast stream not announced, or before its rid is known
        now = time.monotonic()
        payload = packet.payload
        layer.note(now, len(payload))
        self.packets_in += 1
        self.bytes_in += len(payload)
        self.media_ssrc = packet.ssrc
        self.codec = codec
        key = False
        if self.kind == "video" and payload:
            key = is_keyframe(codec.mimeType, payload)
            if key and codec.mimeType.lower() == "video/vp8":
                # Every keyframe: an encoder short of CPU or bandwidth scales its layers down.
                size = rtp_bytes.vp8_keyframe_size(payload)
                if size is not None and size != layer.size:
                    layer.size = size
                    for down in list(self.down_tracks):
                        down.sizes_changed()
        if self.muted:
            return
        if self.sinks and self._feeds_sinks(layer, key, now):
            for sink in self.sinks:
                try:
                    sink.on_rtp(packet, codec)
                except Exception:  # a failing consumer must not stop the track for the others
                    log.exception("packet sink failed; removed", extra={"track_id": self.id})
                    self.sinks.remove(sink)
                    break
        if self.down_tracks:
            out = Outgoing(packet, layer.index, key, aiortc_adapter.ntp_now())
            if key or now >= self._review_at:
                self._review_at = now + REVIEW_INTERVAL
                for down in tuple(self.down_tracks):
                    down.write(out, now)
            elif self.deciding:
                for down in tuple(self.deciding):
                    down.write(out, now)
            if self.native_links:
                self._forward_natively(out)

    def _forward_natively(self, out: Outgoing) -> None:
        """One C call sends the packet to every native down track on its layer."""
        packet = out.packet
        blocks = tuple([out.extension_block(layout) for layout in self.native_layouts])
        forwarded, size, dropped = fanout.native.forward(  # type: ignore[union-attr]
            self.native_links,
            out.layer,
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            packet.marker,
            bool(packet.padding_size),
            out.body,
            blocks,
            len(packet.payload),
            out.ntp_time,
        )
        self.packets_forwarded += forwarded
        self.bytes_forwarded += size
        if dropped:
            self.send_drops += dropped

    def layout_index(self, layout: rtp_bytes.ExtensionLayout) -> int:
        """The index a native downlink names its header extension layout by."""
        try:
            return self.native_layouts.index(layout)
        except ValueError:
            self.native_layouts.append(layout)
            return len(self.native_layouts) - 1

    def _feeds_sinks(self, layer: Layer, key: bool, now: float) -> bool:
        """Sinks get one layer, the best flowing one, switched on its keyframe."""
        current = self._sink_layer
        if current == layer.index:
            return True
        if not self.simulcast:
            self._sink_layer = layer.index
            return True
        best = self.best_layer(self.top, now)
        if layer.index == best and (key or self.kind != "video"):
            self._sink_layer = layer.index
            return True
        if best is not None and (current is None or best != current):
            self.request_keyframe(best)
        return False

    def layer_sizes(self) -> list[tuple[int, int] | None]:
        """Each layer's size, lowest first: as its keyframes tell, else inferred from the nearest
        layer whose size is known (simulcast layers are each half the next one's size, what
        web/room, LiveKit and most SDKs send), else None while no layer's size is known."""
        known = [(lay.index, lay.size) for lay in self.layers if lay.size is not None]
        sizes: list[tuple[int, int] | None] = []
        for lay in self.layers:
            if lay.size is not None or not known:
                sizes.append(lay.size)
                continue
            index, (width, height) = min(known, key=lambda item: abs(item[0] - lay.index))
            scale = 2.0 ** (lay.index - index)
            sizes.append((round(width * scale), round(height * scale)))
        return sizes

    def best_layer(self, wanted: int, now: float) -> int | None:
        """The layer to forward for a wish: it if flowing, else the nearest flowing below, else above."""
        layers = self.layers
        if len(layers) == 1:
            return 0
        for index in range(min(wanted, len(layers) - 1), -1, -1):
            if layers[index].active(now):
                return index
        for index in range(wanted + 1, len(layers)):
            if layers[index].active(now):
                return index
        return None

    def frames(self) -> FrameSource:
        """The track's one frame source, made on first use (it adds itself as a packet sink while subscribed)."""
        if self.frame_source is None:
            self.frame_source = FrameSource(
                self.kind, self.request_keyframe, attach=self.add_sink, detach=self.remove_sink
            )
        return self.frame_source

    def add_sink(self, sink: PacketSink | FrameSink) -> None:
        """Feed this track to ``sink`` (asks for a keyframe so it can start): its packets to a
        packet sink; whole frames to a :class:`~gbmedia.sfu.frames.FrameSink`, which all share the
        track's one frame source (packets reordered and assembled once, however many want frames)."""
        if isinstance(sink, FrameSink):
            self.frames().subscribe(sink)
            return
        if sink not in self.sinks:
            self.sinks.append(sink)
            self._sink_layer = None
        self.request_keyframe()
        self.demand_changed()

    def remove_sink(self, sink: PacketSink | FrameSink) -> None:
        if isinstance(sink, FrameSink):
            if self.frame_source is not None:
                self.frame_source.unsubscribe(sink)
            return
        if sink in self.sinks:
            self.sinks.remove(sink)
            self.demand_changed()

    def unmuted(self) -> None:
        """Forwarding resumes after a mute: numbering goes on without a gap, and each subscriber's
        picture restarts on a keyframe.

        Not only one keyframe request: the publisher may not have a picture to send yet (a
        camera turned back on), and requests are rate limited; each down track keeps asking
        (as after a pause) and forwards nothing its decoder cannot use until the keyframe.
        """
        for down in list(self.down_tracks):
            down.resume_on_keyframe()
        self.request_keyframe()  # video only

    def request_keyframe(self, layer: int | None = None) -> None:
        """Ask the publisher for a keyframe on a layer (default: every flowing one), rate limited."""
        if self.kind != "video":
            return
        now = time.monotonic()
        targets = [self.layers[layer]] if layer is not None else self.layers
        for lay in targets:
            if lay.ssrc is None or now - lay._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
                continue
            lay._last_keyframe_request = now
            task = asyncio.ensure_future(aiortc_adapter.request_keyframe(self.receiver, lay.ssrc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- dynacast ------------------------------------------------------------------------

    def needed_rids(self) -> list[str]:
        """The layers someone wants: every down track's wish, the top one for sinks,
        and always the lowest (a new subscriber starts at once, before it asks)."""
        wanted = {0}
        for down in self.down_tracks:
            if down.desired is not None:
                wanted.add(down.desired)
        if self.sinks:
            wanted.add(self.top)
        return [self.layers[i].rid or "" for i in sorted(wanted)]

    def demand_changed(self) -> None:
        """Resume a layer as soon as it is wanted; pause one only once unwanted for a while."""
        if not self.simulcast or self.on_layers is None:
            return
        needed = self.needed_rids()
        announced = self.announced_rids
        if announced is not None and set(needed) <= set(announced):
            if set(needed) != set(announced) and self._pause_timer is None:
                loop = asyncio.get_running_loop()
                self._pause_timer = loop.call_later(DYNACAST_PAUSE_DELAY, self._pause_unneeded)
            return
        self._announce(needed)

    def _pause_unneeded(self) -> None:
        self._pause_timer = None
        needed = self.needed_rids()
        if self.announced_rids is None or set(needed) != set(self.announced_rids):
            self._announce(needed)

    def _announce(self, rids: list[str]) -> None:
        self.announced_rids = rids
        if self.on_layers is not None:
            try:
                self.on_layers(self, rids)
            except Exception:
                log.exception("dynacast listener failed", extra={"track_id": self.id})

    def close(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        for down in tuple(self.down_tracks):
            down.detach()
        self.down_tracks.clear()
        self.deciding.clear()
        self.native_links.clear()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.on_track_closed()
            except Exception:
                log.exception("packet sink failed to close", extra={"track_id": self.id})
