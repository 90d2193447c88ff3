"""A published track's packets as whole encoded frames, assembled once for all who want frames.

Recording a track, a room's composite and LL-HLS (and later bots that look at video)
do not want packets: they want the publisher's frames, in order, whole, and after a
loss only from the next keyframe on. Each used to reorder, depacketise and unwrap
the same packets itself. A :class:`FrameSource` does it once per published track and
hands every :class:`FrameSink` the same :class:`EncodedFrame` objects. A consumer
subscribes with ``PublishedTrack.add_sink(sink)`` (and leaves with ``remove_sink``):
the track's one source (``PublishedTrack.frames()``) takes one packet-sink place on the
track while anyone subscribes and leaves it when the last one goes.

Where the work runs: on the event loop, in the track's packet path. Reordering a
packet is a dict insert; finishing a frame is a join of slices (aiortc's public
depayloaders) and a look at a header or two; each packet is looked at once. That
is 3-4 microseconds a packet (VP8 and H.264 at 0.5-1.3 Mbps), what one consumer's
own assembler cost in its thread before, and cheaper than handing every packet to
every consumer's thread (a queue put and a thread wake-up per packet and consumer,
then the same work there, once per consumer). Consumers get frames on the loop too and must only queue them for their
own thread: each has its own queue, so a slow one never holds up another. One that
falls behind refuses a frame (``on_frame`` returns False); it then gets nothing until
the next keyframe, which the source asks the publisher for.

Reordering. Packets wait by extended sequence number; a frame goes out when every
packet from its first to its marker is there. A missing packet is given up on when
``REORDER_WINDOW`` packets have arrived after it, or when it has been missing for the
least :attr:`FrameSink.reorder_wait` of the current consumers (timed on the loop, so a
loss never stalls a consumer even when nothing follows it). The window is the
recorder's (64 packets, tighter than LL-HLS's former 128), counted from the missing
packet (the recorder counted from the frame's first, so it gave up on whole
keyframes of more than 64 packets that were merely still arriving); the time is each
consumer's own need, and the least patient wins because waiting longer would delay
it: LL-HLS (live, its latency is what viewers see) allows 100 ms as before; the
composite renders 0.4 s behind arrivals and allows half that; a track recording
cares about completeness, not delay, and allows a second (a retransmission that
comes at all comes within a round trip). A track recorded alone therefore waits as
long as it did; recorded while LL-HLS runs on the same track, it gives a missing
packet up after LL-HLS's 100 ms.

Loss. A video frame with a missing packet is dropped, and so is every frame after
it until a keyframe (a decoder fed a frame whose reference is missing shows garbage
until then); the source asks the publisher for a keyframe at once (the track rate
limits its PLIs) and again every ``KEYFRAME_RETRY`` while a consumer is waiting. A
consumer that joins a running video track waits for a keyframe the same way. An
audio frame is one packet; a lost one is just missing. Consumers hear of losses
through :meth:`FrameSink.on_loss` (packets given up on; video frames they did not
get), for their metrics.

Keyframes are told by the packets' payload headers (:mod:`gbmedia.sfu.codecs`, the
same test the forwarder gates subscribers with). Frame timestamps are extended past
the 32-bit wrap (:mod:`gbmedia.sfu.unwrap`). Padding-only packets (a publisher's
bandwidth probes, sent on the media stream because RTX is not negotiated) take up a
sequence number and belong to no frame. When the packets start coming from another
SSRC (the track moved its sinks to another simulcast layer, which starts with a
keyframe), the old stream's complete frames go out, its sequence numbering starts
over, and its timestamps continue the old timeline after the wall-clock time that
passed, so a consumer's timeline never goes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu.codecs import is_h264_keyframe, is_keyframe
from gbmedia.sfu.unwrap import SEQUENCE_BITS, TIMESTAMP_BITS, Unwrapper

log = logging.getLogger(__name__)

REORDER_WINDOW = 64  # packets that may arrive after a missing one before it is given up on
DEFAULT_REORDER_WAIT = 1.0  # seconds a consumer that says nothing lets a missing packet hold it back
KEYFRAME_RETRY = 1.0  # seconds between keyframe requests while a consumer still waits for one

_H264_FU_A = 28


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame as the publisher sent it, shared by every consumer: read it, never change it."""

    data: bytes  # a VP8 frame, an H.264 access unit (Annex B), or an audio packet's payload
    timestamp: int  # RTP timestamp, extended: never wraps, never goes back (see the module doc)
    keyframe: bool  # decodes on its own (every audio frame does)
    arrival: float  # time.time() when its first packet arrived
    rtp_timestamp: int  # the 32-bit RTP timestamp as sent: what the publisher's sender reports map
    ssrc: int
    codec: RTCRtpCodecParameters


class FrameSink(ABC):
    """A consumer of a track's frames; subscribe it with ``PublishedTrack.add_sink``.

    Every method is called on the event loop: queue, never block.
    """

    #: Seconds a missing packet may hold this consumer's frames back before it is given up on.
    reorder_wait: float = DEFAULT_REORDER_WAIT

    @abstractmethod
    def on_frame(self, frame: EncodedFrame) -> bool:
        """Take a frame; False when refused (a full queue): nothing more comes until a keyframe."""

    def on_loss(self, packets: int, frames: int) -> None:  # noqa: B027 (a hook: most consumers only count)
        """``packets`` sequence numbers given up on, ``frames`` video frames this consumer did not get
        (broken by loss, or complete but useless while it waited for a keyframe, or refused)."""

    @abstractmethod
    def on_track_closed(self) -> None:
        """The track ended: every frame it had was handed out before this."""


@dataclass(eq=False, slots=True)
class _Subscription:
    sink: FrameSink
    waiting: bool  # video: gets nothing before a keyframe (its first one, or after a loss or a refusal)


# A packet waiting for its turn: the packet, and when it arrived (monotonic clock, wall clock).
_Held = tuple[RtpPacket, float, float]


def _starts_frame(codec: str, payload: bytes) -> bool:
    """Whether a video packet can be a frame's first (RFC 7741 S bit and partition 0; RFC 6184 FU-A start)."""
    if codec == "VP8":
        return bool(payload[0] & 0x10) and (payload[0] & 0x0F) == 0
    if codec == "H264" and payload[0] & 0x1F == _H264_FU_A:
        return len(payload) > 1 and bool(payload[1] & 0x80)
    return True  # a single NAL unit or an aggregate; any packet of a codec without frame markers


def _is_key(mime: str, payloads: list[bytes]) -> bool:
    """A frame decodes on its own: VP8 says so in its first packet; H.264 has an IDR (or SPS) in some packet."""
    if mime == "video/h264":
        return any(is_h264_keyframe(p) for p in payloads)
    return is_keyframe(mime, payloads[0])


class FrameSource:
    """One track's frames for all its frame sinks: reorder, loss, keyframes, assembly, once (module doc)."""

    def __init__(
        self,
        kind: str,
        request_keyframe: Callable[[], None],
        *,
        attach: Callable[[FrameSource], None] | None = None,
        detach: Callable[[FrameSource], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """A source fed through :meth:`on_rtp`. ``attach``/``detach`` start and stop the feed
        (a track's ``add_sink``/``remove_sink``) as the first consumer comes and the last goes;
        without them the caller feeds it (tests, tools)."""
        self.kind = kind
        self.is_video = kind == "video"
        self._request_keyframe = request_keyframe
        self._attach = attach
        self._detach = detach
        self._clock = clock
        self._wall_clock = wall_clock
        self._subs: list[_Subscription] = []
        self._attached = False
        self._reorder_wait = DEFAULT_REORDER_WAIT
        self._last_request = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self.frames_assembled = 0  # frames depayloaded: once each, however many consumers get them
        self._reset()

    def _reset(self) -> None:
        """Forget every packet and both numberings (idle, or before a new stream)."""
        self._packets: dict[int, _Held] = {}  # by extended sequence number
        self._seq = Unwrapper(SEQUENCE_BITS)
        self._next: int | None = None  # extended sequence number of the next packet to take
        self._blocked = 0  # where the last look at the head frame stopped: the first missing packet
        # The head frame as far as it was looked at: its first packet, the next one to look at, the payloads
        # so far. Each packet is looked at once however many come before the frame completes.
        self._scan: tuple[int, int, list[bytes]] | None = None
        self._ssrc: int | None = None
        self._codec: RTCRtpCodecParameters | None = None
        self._broken_ts: int | None = None  # the RTP timestamp of the last frame counted as broken
        self._ts = Unwrapper(TIMESTAMP_BITS)
        self._ts_offset = 0
        self._rebase = False
        self._last_ts: int | None = None  # the last frame handed out: its timestamp and arrival
        self._last_arrival = 0.0
        self._cancel_timer()

    # --- consumers ----------------------------------------------------------------------

    @property
    def sinks(self) -> list[FrameSink]:
        return [sub.sink for sub in self._subs]

    def subscribe(self, sink: FrameSink) -> None:
        """Hand ``sink`` every frame from now on (video: from the next keyframe, asked for now)."""
        if any(sub.sink is sink for sub in self._subs):
            return
        self._subs.append(_Subscription(sink, waiting=self.is_video))
        self._reorder_wait = min(sub.sink.reorder_wait for sub in self._subs)
        if self._attach is not None and not self._attached:
            self._attached = True
            self._attach(self)  # the track feeds us from now on, and asks for a keyframe
        else:
            self._ask_keyframe(retry=False)

    def unsubscribe(self, sink: FrameSink) -> None:
        """No more frames for ``sink``. The last one to go also gets the frames complete behind
        an open gap (nobody else waits for the gap), then the source stops being fed."""
        sub = next((s for s in self._subs if s.sink is sink), None)
        if sub is None:
            return
        if len(self._subs) == 1:
            self._flush()
        if sub in self._subs:  # the flush may have dropped it (it failed)
            self._remove(sub)

    def _remove(self, sub: _Subscription, *, now: bool = True) -> None:
        self._subs.remove(sub)
        if self._subs:
            self._reorder_wait = min(s.sink.reorder_wait for s in self._subs)
            return
        self._reset()
        if not now:  # inside the track's loop over its sinks: leave it after that
            try:
                asyncio.get_running_loop().call_soon(self._detach_idle)
                return
            except RuntimeError:
                pass
        self._detach_idle()

    def _detach_idle(self) -> None:
        if not self._subs and self._attached:
            self._attached = False
            if self._detach is not None:
                self._detach(self)

    # --- the track's packet sink ---------------------------------------------------------

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if not self._subs:
            return
        if packet.ssrc != self._ssrc or self._codec is None or codec.payloadType != self._codec.payloadType:
            self._new_stream(packet.ssrc, codec)
        ext = self._seq(packet.sequence_number)
        if self._next is None:
            self._next = ext
        elif ext < self._next or ext in self._packets:
            return  # a duplicate, or too late: given up on already
        self._packets[ext] = (packet, self._clock(), self._wall_clock())
        self._drain()

    def on_track_closed(self) -> None:
        """The track ended (it has dropped its sinks): hand out what is complete, then tell everyone."""
        self._flush()
        subs, self._subs = self._subs, []
        self._reset()
        self._attached = False
        for sub in subs:
            try:
                sub.sink.on_track_closed()
            except Exception:
                log.exception("frame sink failed to close")

    def _new_stream(self, ssrc: int, codec: RTCRtpCodecParameters) -> None:
        """Packets from another SSRC (a simulcast layer switch) or in another codec: start over."""
        if self._ssrc is not None:
            self._flush()  # the old stream's complete frames go out; the rest of it is not coming
            last_ts, last_arrival = self._last_ts, self._last_arrival
            self._reset()
            self._last_ts, self._last_arrival = last_ts, last_arrival
            self._rebase = last_ts is not None
        self._ssrc, self._codec = ssrc, codec

    # --- reordering and loss --------------------------------------------------------------

    def _drain(self) -> None:
        """Hand out every frame that is complete and next in order; give up on what waited too long."""
        while self._packets:
            if self._take():
                continue
            highest = self._seq.highest
            assert highest is not None
            missing = self._blocked
            if missing > highest:
                break  # nothing is missing: the head frame's packets are still coming
            if highest - missing >= REORDER_WINDOW:
                self._give_up()
                continue
            wait = self._arrival_after(missing) + self._reorder_wait - self._clock()
            if wait <= 0:
                self._give_up()
                continue
            self._set_timer(wait)
            return
        self._cancel_timer()

    def _flush(self) -> None:
        """The end of the feed: what is complete goes out, whatever is missing is given up on."""
        self._flushing = True
        try:
            while self._packets:
                if not self._take():
                    self._give_up()
        finally:
            self._flushing = False

    def _arrival_after(self, missing: int) -> float:
        """When the first packet after a missing one came (the gap is known since then)."""
        seq = missing + 1
        while (held := self._packets.get(seq)) is None:
            seq += 1
        return held[1]

    def _give_up(self) -> None:
        """The head frame cannot be completed: drop what is there of it, skip the missing packets."""
        assert self._next is not None and self._seq.highest is not None
        packets = self._packets
        head = packets.get(self._next)
        broken: int | None = None
        if head is not None:
            broken = head[0].timestamp
            self._drop_frame(broken)
        lost = 0
        while self._next not in packets and self._next <= self._seq.highest:
            self._next += 1
            lost += 1
        if broken is None and self.is_video:
            after = packets.get(self._next)
            if after is not None and after[0].payload and not self._starts_frame(after[0].payload):
                broken = after[0].timestamp  # the rest of the frame whose first packets were lost
        self._lost(lost, broken)

    def _drop_frame(self, timestamp: int) -> None:
        """Drop the packets at the head that belong to the frame of ``timestamp`` (and padding)."""
        packets = self._packets
        seq = self._next
        assert seq is not None
        while (held := packets.get(seq)) is not None and (not held[0].payload or held[0].timestamp == timestamp):
            del packets[seq]
            seq += 1
        self._next = seq

    def _lost(self, packets: int, broken_ts: int | None) -> None:
        """Tell every consumer; video ones wait for a keyframe, asked for now."""
        frames = 0
        if self.is_video and (broken_ts is None or broken_ts != self._broken_ts):
            frames = 1
            self._broken_ts = broken_ts
        for sub in list(self._subs):
            if self.is_video:
                sub.waiting = True
            self._notify_loss(sub, packets, frames)
        if self.is_video:
            self._ask_keyframe(retry=False)

    def _notify_loss(self, sub: _Subscription, packets: int, frames: int) -> None:
        if not packets and not frames:
            return
        try:
            sub.sink.on_loss(packets, frames)
        except Exception:
            self._failed(sub)

    def _starts_frame(self, payload: bytes) -> bool:
        assert self._codec is not None
        return _starts_frame(self._codec.name, payload)

    def _take(self) -> bool:
        """Take the frame at the head if it is complete. False: waiting for a missing packet."""
        packets = self._packets
        start = self._next
        assert start is not None
        held = packets.get(start)
        if held is None:
            self._blocked = start
            return False
        packet = held[0]
        if not packet.payload:  # padding: holds a sequence number, carries no media
            del packets[start]
            self._next = start + 1
            return True
        if not self.is_video:
            del packets[start]
            self._next = start + 1
            self._emit([packet.payload], held)
            return True
        if not self._starts_frame(packet.payload):  # its frame's first packet was given up on
            timestamp = packet.timestamp
            self._drop_frame(timestamp)
            if timestamp != self._broken_ts:
                self._lost(0, timestamp)
            return True
        payloads = [packet.payload]
        end = start + 1
        if not packet.marker:
            if self._scan is not None and self._scan[0] == start:  # go on where the last look stopped
                _, end, payloads = self._scan
            timestamp = packet.timestamp
            while True:
                following = packets.get(end)
                if following is None:
                    self._scan = (start, end, payloads)
                    self._blocked = end
                    return False
                part = following[0]
                if part.payload:
                    if part.timestamp != timestamp:
                        break  # the next frame started: this one's marker bit was not set, nothing is missing
                    payloads.append(part.payload)
                end += 1
                if part.marker:
                    break
        for seq in range(start, end):
            del packets[seq]
        self._next = end
        self._scan = None
        self._emit(payloads, held)
        return True

    # --- frames ----------------------------------------------------------------------------

    def _emit(self, payloads: list[bytes], first: _Held) -> None:
        packet, _, arrival = first
        codec = self._codec
        assert codec is not None
        keyframe = _is_key(codec.mimeType.lower(), payloads)
        takers = self._subs
        if not keyframe:
            takers = [sub for sub in self._subs if not sub.waiting]
            if len(takers) < len(self._subs):
                for sub in self._subs:
                    if sub.waiting:
                        self._notify_loss(sub, 0, 1)
                self._ask_keyframe(retry=True)
                if not takers:
                    return  # nobody can use it: not even depayloaded
        try:
            data = b"".join(depayload(codec, payload) for payload in payloads)
        except (ValueError, IndexError):  # a malformed payload: as if lost
            self._lost(0, packet.timestamp)
            return
        if not data:
            return
        self.frames_assembled += 1
        frame = EncodedFrame(
            data, self._timestamp(packet.timestamp, arrival), keyframe, arrival, packet.timestamp, packet.ssrc, codec
        )
        for sub in list(takers):
            sub.waiting = False
            try:
                taken = sub.sink.on_frame(frame)
            except Exception:
                self._failed(sub)
                continue
            if not taken and self.is_video:
                sub.waiting = True
                self._notify_loss(sub, 0, 1)
                self._ask_keyframe(retry=False)

    def _timestamp(self, rtp_timestamp: int, arrival: float) -> int:
        extended = self._ts(rtp_timestamp)
        if self._rebase:  # the first frame of a new stream: go on from the last one, after the time that passed
            assert self._last_ts is not None and self._codec is not None
            self._rebase = False
            step = max(1, round((arrival - self._last_arrival) * self._codec.clockRate))
            self._ts_offset = self._last_ts + step - extended
        extended += self._ts_offset
        self._last_ts, self._last_arrival = extended, arrival
        return extended

    def _failed(self, sub: _Subscription) -> None:
        """A consumer raised: it is dropped, the others go on (like a failing packet sink)."""
        log.exception("frame sink failed; removed")
        if sub in self._subs:
            self._remove(sub, now=False)

    # --- keyframes and the give-up timer ----------------------------------------------------

    def _ask_keyframe(self, *, retry: bool) -> None:
        if not self.is_video or self._flushing:  # a flush ends the feed: nobody will wait for it
            return
        now = self._clock()
        if retry and now - self._last_request < KEYFRAME_RETRY:
            return
        self._last_request = now
        self._request_keyframe()

    def _set_timer(self, delay: float) -> None:
        """Look again when the missing packet's time is up, even if nothing else arrives."""
        self._cancel_timer()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # fed outside a loop (a tool, a test): packets that come drive the give-ups
            return
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._packets:
            self._drain()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
