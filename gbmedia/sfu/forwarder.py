"""Down tracks: one published track as one subscriber receives it.

The subscriber's sending transceiver (a :class:`SenderSlot`) outlives any single
published track: when a transceiver is reused for another track, or the same track
is republished, the output sequence numbers and timestamps continue where they
stopped, so the subscriber's jitter buffer never sees a jump backwards. The same
rebasing makes a simulcast layer switch invisible: every layer is its own RTP
stream (SSRC, sequence, timestamp base), and the subscriber sees one.

The hot path (:meth:`DownTrack.write`) runs once per packet per subscriber, so it
allocates one ``bytes`` (12-byte header + shared extension block + shared body, see
:mod:`gbmedia.sfu.rtp`) and makes no await: protect and ``sendto`` are synchronous.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpTransceiver

from gbmedia.sfu import aiortc_adapter, fanout
from gbmedia.sfu import rtp as rtp_bytes
from gbmedia.sfu.allocator import LayerAllocator, video_share
from gbmedia.sfu.track import Outgoing, PublishedTrack

# Timestamp step inserted when the source changes: about one frame / one packet.
_SWITCH_GAP = {90000: 3000, 48000: 960}
# Sent packets kept for answering NACKs (a power of two; about 2 s of 1 Mbps video).
HISTORY_SIZE = 256
_HEADER = rtp_bytes.HEADER

QUALITY_LAYERS = {"low": 0, "medium": 1, "high": 2}
# One object per distinct extension layout (there are few: ids and mids repeat), so a packet's
# block cache (Outgoing.extension_block) is looked up by identity, not by hashing the fields.
_LAYOUTS: dict[rtp_bytes.ExtensionLayout, rtp_bytes.ExtensionLayout] = {}


@dataclass(eq=False)
class SenderSlot:
    """A subscriber's sending transceiver and its output numbering."""

    transceiver: RTCRtpTransceiver
    kind: str
    last_seq: int = field(default_factory=lambda: random.getrandbits(16))
    last_ts: int = field(default_factory=lambda: random.getrandbits(32))
    down: DownTrack | None = None
    estimate_bps: int | None = None  # the subscriber's latest REMB for this stream

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    def on_keyframe_request(self) -> None:
        """The subscriber lost the picture: ask whoever feeds this slot now."""
        if self.down is not None:
            self.down.keyframe_requested()

    def on_nack(self, sequence_numbers: list[int]) -> None:
        if self.down is not None:
            self.down.resend(sequence_numbers)


class DownTrack:
    """One published track as one subscriber receives it: the decisions (layer, pause, keyframe
    wait), and on the Python path the sending too.

    On the native path (:mod:`gbmedia.sfu.fanout`) the sending state lives in a C downlink
    (``_link``): numbering, SRTP, address, NACK history and counters. Python sets the layer
    it forwards (-1 for none) when a decision changes it, and is asked again only while
    unsettled, on keyframes and every ``REVIEW_INTERVAL`` (``PublishedTrack.deciding``).
    """

    __slots__ = (
        "_history",
        "_layout",
        "_link",
        "_link_config",
        "_packets_out",
        "_raw",
        "_resent",
        "_seq_offset",
        "_source_ssrc",
        "_ts_offset",
        "_unreported",
        "_unreported_octets",
        "allocator",
        "bandwidth_cap",
        "current_layer",
        "paused",
        "requested_layer",
        "settled",
        "slot",
        "track",
        "view_size",
        "waiting_keyframe",
    )

    def __init__(self, track: PublishedTrack, slot: SenderSlot) -> None:
        self.track = track
        self.slot = slot
        self._raw: aiortc_adapter.RawSender | None = None
        self._layout: rtp_bytes.ExtensionLayout | None = None
        self._source_ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._history: list[bytes | None] = [None] * HISTORY_SIZE
        # Sent since the sender's counters were last brought up to date (once a frame: see write).
        self._unreported = 0
        self._unreported_octets = 0
        self.waiting_keyframe = track.kind == "video"
        self.current_layer: int | None = None
        self.requested_layer = track.top  # what the subscriber asked for (size or quality)
        self.view_size: tuple[int, int] | None = None  # the element size it asked for, kept to re-pick the layer
        self.bandwidth_cap = track.top  # what its bandwidth allows
        self.allocator = LayerAllocator(track.top)
        self.paused = False  # the subscriber's video is hidden: send nothing
        self._packets_out = 0
        self._resent = 0
        self._link: Any = None  # the native downlink (gbmedia/sfu/_fanout.c), once connected on the native path
        self._link_config: tuple[Any, ...] | None = None
        self.settled = False  # native, and nothing to decide until the next keyframe or review
        slot.down = self
        track.down_tracks.add(self)
        track.deciding.add(self)
        track.demand_changed()

    @property
    def packets_out(self) -> int:
        return self._packets_out + (self._link.packets_out if self._link is not None else 0)

    @property
    def resent(self) -> int:
        return self._resent + (self._link.resent if self._link is not None else 0)

    def kept(self, seq: int) -> bytes | None:
        """The clear packet sent with this sequence number, while kept for NACK answers."""
        if self._link is not None:
            return self._link.kept(seq)  # type: ignore[no-any-return]
        data = self._history[seq & (HISTORY_SIZE - 1)]
        return data if data is not None and int.from_bytes(data[2:4], "big") == seq else None

    @property
    def desired(self) -> int | None:
        """The layer this subscriber should get, before looking at what flows."""
        if self.paused:
            return None
        return min(self.requested_layer, self.bandwidth_cap, self.track.top)

    def bind(self) -> bool:
        """Connect to the negotiated sender; False until negotiation finished."""
        if self._raw is None:
            codec = aiortc_adapter.negotiated_codec(self.slot.transceiver)
            if codec is None:
                return False
            self._raw = aiortc_adapter.RawSender(self.slot.transceiver.sender, codec.payloadType)
            self._layout = None
        if not self._raw.ready:
            return False
        if self._layout is None:
            layout = self._raw.layout()
            self._layout = _LAYOUTS.setdefault(layout, layout)
        return True

    def rebind(self) -> None:
        """Renegotiation may change the payload type or the extension ids: look them up again."""
        self._raw = None
        self._layout = None
        self._link_config = None
        self._unsettle()

    def write(self, out: Outgoing, now: float) -> None:
        if self._raw is None or self._layout is None:
            if not self.bind():
                self.waiting_keyframe = self.track.kind == "video"
                return
        track = self.track
        if track.simulcast:
            forward = self._follow_layer(out, now)
        elif self.waiting_keyframe:
            forward = False
            if not self.paused:
                if out.key:
                    self.waiting_keyframe, forward = False, True
                else:
                    track.request_keyframe()
        else:
            forward = not self.paused
        raw = self._raw
        if not raw.connected():  # type: ignore[union-attr]
            if self._link is not None:
                self._link.layer = -1
            self._unsettle()
            return
        native = raw.native  # type: ignore[union-attr]
        if native is not None:  # C sends it, with every other native down track (PublishedTrack.on_packet)
            self._decide_natively(native, now)
            return
        if not forward:
            return
        packet = out.packet
        if packet.ssrc != self._source_ssrc:
            self._start_source(packet.ssrc, packet.sequence_number, packet.timestamp)
        block = out.extension_block(self._layout)  # type: ignore[arg-type]
        seq = (packet.sequence_number + self._seq_offset) & 0xFFFF
        ts = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        b0 = 0x90 if block else 0x80
        if packet.padding_size:
            b0 |= 0x20
        b1 = (0x80 if packet.marker else 0) | raw.payload_type  # type: ignore[union-attr]
        data = _HEADER.pack(b0, b1, seq, ts, raw.ssrc) + block + out.body  # type: ignore[union-attr]
        raw.transmit(data)  # type: ignore[union-attr]
        self._history[seq & (HISTORY_SIZE - 1)] = data
        self._unreported += 1
        self._unreported_octets += len(packet.payload)
        slot = self.slot
        slot.last_seq, slot.last_ts = seq, ts
        self._packets_out += 1
        track.packets_forwarded += 1
        track.bytes_forwarded += len(data)
        if packet.marker or track.kind == "audio":
            # Once per frame: sender reports map RTP time to NTP, and carry the packet and octet
            # counts (a frame late at most; counting into aiortc's sender per packet cost more).
            raw.count(self._unreported_octets, self._unreported)  # type: ignore[union-attr]
            self._unreported = self._unreported_octets = 0
            raw.note_timestamp(ts, out.ntp_time)  # type: ignore[union-attr]

    def _decide_natively(self, native: tuple[Any, bytes, int], now: float) -> None:
        """Tell the C downlink what it forwards now; settled when nothing is left to decide."""
        link = self._link
        track = self.track
        if link is None:
            slot = self.slot
            link = self._link = fanout.native.Downlink(  # type: ignore[union-attr]
                slot.last_seq, slot.last_ts, _SWITCH_GAP.get(track.codec.clockRate, 3000)
            )
            track.native_links.append(link)
        raw = self._raw
        config = (native, raw.payload_type, raw.ssrc, self._layout)  # type: ignore[union-attr]
        if config != self._link_config:
            session, address, fd = native
            link.configure(session, address, fd, raw.payload_type, raw.ssrc, track.layout_index(self._layout))  # type: ignore[union-attr, arg-type]
            self._link_config = config
        if self.paused:
            layer, settled = -1, True
        elif track.simulcast:
            layer = -1 if self.current_layer is None else self.current_layer
            settled = layer >= 0 and track.best_layer(self.desired, now) == layer  # type: ignore[arg-type]
        else:
            layer = -1 if self.waiting_keyframe else 0
            settled = layer >= 0
        link.layer = layer
        if settled != self.settled:
            self.settled = settled
            if settled:
                track.deciding.discard(self)
            else:
                track.deciding.add(self)
        octets, packets, ts, ntp = link.take_counts()
        if packets and ntp:  # what the sender reports carry (a review's lag at most)
            raw.count(octets, packets)  # type: ignore[union-attr]
            raw.note_timestamp(ts, ntp)  # type: ignore[union-attr]

    def _unsettle(self) -> None:
        """Something changed: decide on the next packet, not only on a keyframe or review."""
        if self.settled:
            self.settled = False
            self.track.deciding.add(self)

    def _follow_layer(self, out: Outgoing, now: float) -> bool:
        """Simulcast: forward the current layer; move to the best one on its keyframe."""
        wanted = self.desired
        if wanted is None:
            self.current_layer = None
            return False
        track = self.track
        best = track.best_layer(wanted, now)
        layer = out.layer
        if layer == self.current_layer:
            if best is not None and best != layer:
                track.request_keyframe(best)  # keep forwarding this layer until best's keyframe
            return True
        if layer == best and out.key:
            self.current_layer = layer
            self.waiting_keyframe = False
            return True
        if best is not None and (self.current_layer is None or best != self.current_layer):
            track.request_keyframe(best)
        return False

    def _start_source(self, ssrc: int, sequence_number: int, timestamp: int) -> None:
        """Continue the slot's numbering from this source's first packet."""
        slot = self.slot
        gap = _SWITCH_GAP.get(self.track.codec.clockRate, 3000)
        self._seq_offset = (slot.last_seq + 1 - sequence_number) & 0xFFFF
        self._ts_offset = (slot.last_ts + gap - timestamp) & 0xFFFFFFFF
        self._source_ssrc = ssrc

    def resend(self, sequence_numbers: list[int]) -> None:
        """Answer a subscriber's NACK from the packets sent to it (as originals: no RTX)."""
        raw = self._raw
        if raw is None:
            return
        if self._link is not None:
            if raw.connected():
                self._link.resend(sequence_numbers)
            return
        history = self._history
        for seq in sequence_numbers:
            data = history[seq & (HISTORY_SIZE - 1)]
            if data is not None and int.from_bytes(data[2:4], "big") == seq:
                if raw.send(data, 0):
                    self._resent += 1

    def keyframe_requested(self) -> None:
        """The subscriber lost the picture: ask the publisher for its current layer."""
        layer = self.current_layer if self.track.simulcast else None
        self.track.request_keyframe(layer)

    # --- what the subscriber wants -----------------------------------------------------

    def set_preferences(
        self, *, paused: bool | None = None, layer: int | None = None, size: tuple[int, int] | None = None
    ) -> None:
        """A subscriber's wish: pause, a layer (a quality), or the size its video element is shown at.

        A size is kept, not only turned into a layer: the layers' sizes are learnt from their
        keyframes, and a layer that dynacast had paused (or a track just published) has none
        yet, so the pick is made again each time a layer's size becomes known or changes
        (:meth:`sizes_changed`); otherwise a pick made while the sizes were unknown (the top
        layer) would stay until the element happened to change size.
        """
        before = self.desired
        if paused is not None:
            if self.paused and not paused:
                self.resume_on_keyframe()  # a picture resumes on a keyframe
            self.paused = paused
            if paused and self._link is not None:
                self._link.layer = -1
        if size is not None:
            self.view_size = size
            self.requested_layer = self.layer_for_size(*size)
        elif layer is not None:
            self.view_size = None
            self.requested_layer = max(0, min(layer, self.track.top))
        if self.desired != before:
            self._unsettle()
            self.track.demand_changed()

    def resume_on_keyframe(self) -> None:
        if self.track.kind == "video":
            self.waiting_keyframe = True
            self.current_layer = None
            if self._link is not None:
                self._link.layer = -1
        # Number what comes next on from what was sent: the packets dropped meanwhile are not
        # lost to the subscriber, whose jitter buffer would wait for them (and NACK) otherwise.
        self._source_ssrc = None
        if self._link is not None:
            self._link.reset_source()
        self._unsettle()

    def sizes_changed(self) -> None:
        """A layer's size became known or changed: pick again for the element size asked for."""
        if self.view_size is None:
            return
        before = self.desired
        self.requested_layer = self.layer_for_size(*self.view_size)
        if self.desired != before:
            self._unsettle()
            self.track.demand_changed()

    def layer_for_size(self, width: int, height: int) -> int:
        """The smallest layer at least as large as the video element (the top when none is, or
        while no layer's size is known)."""
        for index, size in enumerate(self.track.layer_sizes()):
            if size is not None and size[0] >= width and size[1] >= height:
                return index
        return self.track.top

    def apply_bandwidth(self, share_bps: float, now: float) -> None:
        before = self.desired
        self.bandwidth_cap = self.allocator.update(share_bps, [lay.bitrate for lay in self.track.layers], now)
        if self.desired != before:
            self._unsettle()
            self.track.demand_changed()

    def carry_over(self, previous: DownTrack) -> None:
        """Keep what the subscriber asked of ``previous`` (size, quality, pause): this down track replaces
        it on a new subscriber connection (a media restart)."""
        self.requested_layer = previous.requested_layer
        self.view_size = previous.view_size
        self.paused = previous.paused
        self._unsettle()
        self.track.demand_changed()

    def detach(self) -> None:
        track = self.track
        link = self._link
        if link is not None:  # the slot's numbering goes on from what C sent
            link.layer = -1
            self.slot.last_seq, self.slot.last_ts = link.last_seq, link.last_ts
            if link in track.native_links:
                track.native_links.remove(link)
        track.deciding.discard(self)
        self.track.down_tracks.discard(self)
        if self.slot.down is self:
            self.slot.down = None
        self.track.demand_changed()


def share_estimate(downs: list[DownTrack], estimate_bps: int, now: float) -> None:
    """Share one subscriber's bandwidth estimate among its simulcast video down tracks."""
    video = [d for d in downs if d.track.kind == "video" and not d.paused]
    share = video_share(estimate_bps, len(video), len(downs) - len(video))
    for down in video:
        if down.track.simulcast:
            down.apply_bandwidth(share, now)
