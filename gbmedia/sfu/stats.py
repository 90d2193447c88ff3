"""Media quality of published tracks and down tracks, from RTCP and our own counters.

Where each figure comes from:

* aiortc's public ``getStats()`` on the receiver of a published track
  (``inbound-rtp``: packets received, packets lost and interarrival jitter, computed
  from the sequence numbers and timestamps the SFU receives, the same figures
  aiortc puts in its receiver reports) and on the sender of a down track
  (``outbound-rtp``: packets and payload bytes sent; ``remote-inbound-rtp``: what the
  subscriber reports back in its receiver reports: cumulative loss, fraction lost,
  jitter, and the round-trip time aiortc derives from LSR/DLSR).
* The published track's own per-layer counters (``PublishedTrack.layers``: packets,
  payload bytes, bitrate, size, whether it flows) for bitrates and simulcast layers.
* A :class:`TrackMeter` sink on each single-layer track for its frames (video: RTP
  marker bits; audio: one frame per packet). Simulcast tracks get none: a sink makes
  the SFU keep the top layer flowing for it (it feeds sinks the best layer), which
  would defeat dynacast; their frame rate is reported as unknown.

Rates need two readings: :class:`RateTracker` keeps the previous cumulative values
per key and turns each new reading into per-second rates over the interval between
them. Everything here is read-only with respect to the SFU: no packet is changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.forwarder import DownTrack
from gbmedia.sfu.track import PublishedTrack


class TrackMeter:
    """A packet sink counting a single-layer published track's frames.

    Called for every packet on the forwarding path: one comparison, and a dict
    update once per frame (per SSRC: a republished source shows as a new one).
    """

    __slots__ = ("closed", "frames", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames: dict[int, int] = {}  # by SSRC
        self.closed = False

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if self.kind == "audio" or packet.marker:
            self.frames[packet.ssrc] = self.frames.get(packet.ssrc, 0) + 1

    def on_track_closed(self) -> None:
        self.closed = True


@dataclass
class _Reading:
    at: float
    values: dict[str, float]


class RateTracker:
    """Per-second rates of cumulative counters between two consecutive readings."""

    def __init__(self) -> None:
        self._last: dict[str, _Reading] = {}

    def rates(self, key: str, values: dict[str, float], now: float | None = None) -> dict[str, float] | None:
        """Rates since the previous reading of ``key`` (None on the first, or when no time passed).

        A counter that went backwards (a new stream behind the same key) gives no rate for
        that counter until the next reading.
        """
        now = time.monotonic() if now is None else now
        previous = self._last.get(key)
        self._last[key] = _Reading(now, dict(values))
        if previous is None or now <= previous.at:
            return None
        elapsed = now - previous.at
        return {
            name: (value - previous.values[name]) / elapsed
            for name, value in values.items()
            if name in previous.values and value >= previous.values[name]
        }

    def delta(self, key: str, name: str, value: float) -> float | None:
        """How much ``name`` grew since the previous reading of ``key`` (call before :meth:`rates`)."""
        previous = self._last.get(key)
        if previous is None or name not in previous.values or value < previous.values[name]:
            return None
        return value - previous.values[name]

    def forget(self, keep: set[str]) -> None:
        """Drop readings of keys no longer sampled (ended tracks, gone participants)."""
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


def _by_type(report: dict[str, Any], kind: str) -> Any:
    return next((entry for entry in report.values() if getattr(entry, "type", None) == kind), None)


@dataclass
class PublishedStats:
    """A published track as the SFU receives it."""

    track_id: str
    kind: str
    source: str
    codec: str
    muted: bool
    packets_received: int
    packets_lost: int
    bytes_received: int
    frames_received: int | None  # None where no meter counts frames (simulcast)
    jitter_ms: float | None
    bitrate_bps: float | None = None
    fps: float | None = None
    loss: float | None = None  # fraction of the interval's expected packets that never arrived
    layers: list[dict[str, Any]] = field(default_factory=list)  # PublishedTrack.layers, as they flow now

    def to_json(self) -> dict[str, Any]:
        return _rounded(self.__dict__)


@dataclass
class DownStats:
    """A published track as one subscriber receives it (the SFU's sending side)."""

    track_id: str
    publisher_id: str
    kind: str
    packets_sent: int
    bytes_sent: int
    layer: int | None  # the simulcast layer forwarded now (0 lowest); None for a single-layer track
    paused: bool  # the subscriber hid the video: nothing is sent
    packets_lost: int | None = None  # as the subscriber reports it
    fraction_lost: float | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    bitrate_bps: float | None = None
    fps: float | None = None  # frames per second of the source the SFU forwards from

    def to_json(self) -> dict[str, Any]:
        return _rounded(self.__dict__)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


async def published_stats(
    track: PublishedTrack, meter: TrackMeter | None, rates: RateTracker, now: float | None = None
) -> PublishedStats:
    """One published track's figures; rates relative to the previous call for this track."""
    report = await track.receiver.getStats()
    inbound = _by_type(report, "inbound-rtp")  # aiortc keeps one entry per receiver: the last SSRC's
    received = inbound.packetsReceived if inbound else 0
    lost = inbound.packetsLost if inbound else 0
    frames = max(meter.frames.values(), default=0) if meter else None
    clock = time.monotonic() if now is None else now
    stats = PublishedStats(
        track_id=track.id,
        kind=track.kind,
        source=track.source,
        codec=track.codec.mimeType,
        muted=track.muted,
        packets_received=received,
        packets_lost=max(0, lost),
        bytes_received=sum(layer.bytes for layer in track.layers),
        frames_received=frames,
        jitter_ms=inbound.jitter * 1000 / track.codec.clockRate if inbound and track.codec.clockRate else None,
        layers=[layer.to_json(clock) for layer in track.layers] if track.simulcast else [],
    )
    got = rates.delta(track.id, "received", received)
    missed = rates.delta(track.id, "lost", lost)
    counters: dict[str, float] = {"bytes": stats.bytes_received, "received": received, "lost": lost}
    if frames is not None:
        counters["frames"] = frames
    per_second = rates.rates(track.id, counters, now)
    if per_second is not None:
        if "bytes" in per_second:
            stats.bitrate_bps = per_second["bytes"] * 8
        if "frames" in per_second and not track.muted:  # sinks see nothing of a muted track
            stats.fps = per_second["frames"]
    if got is not None and missed is not None and got + missed > 0:
        stats.loss = missed / (got + missed)
    return stats


async def down_stats(
    down: DownTrack, source_fps: float | None, rates: RateTracker, key: str, now: float | None = None
) -> DownStats:
    """One down track's figures, keyed ``key`` (subscriber and track) for its rates."""
    packets_sent, bytes_sent, remote = aiortc_adapter.sender_figures(down.slot.transceiver.sender)
    track = down.track
    stats = DownStats(
        track_id=track.id,
        publisher_id=track.participant_id,
        kind=track.kind,
        packets_sent=packets_sent,
        bytes_sent=bytes_sent,
        layer=down.current_layer if track.simulcast else None,
        paused=down.paused,
        fps=source_fps,
    )
    if remote is not None:
        stats.packets_lost = max(0, remote.packetsLost)
        stats.fraction_lost = remote.fractionLost / 256
        stats.jitter_ms = remote.jitter * 1000 / track.codec.clockRate if track.codec.clockRate else None
        stats.rtt_ms = remote.roundTripTime * 1000 if remote.roundTripTime is not None else None
    per_second = rates.rates(key, {"bytes": stats.bytes_sent}, now)
    if per_second is not None and "bytes" in per_second:
        stats.bitrate_bps = per_second["bytes"] * 8
    return stats


@dataclass
class ParticipantStats:
    """Everything measured about one participant's media at one moment."""

    participant_id: str
    identity: str
    sampled_at: str  # ISO 8601, UTC
    published: list[PublishedStats] = field(default_factory=list)
    subscribed: list[DownStats] = field(default_factory=list)

    @property
    def rtt_ms(self) -> float | None:
        """Round trip to the participant: the mean over its down tracks' receiver reports.

        Only the sending side of a connection can measure it (LSR/DLSR), so a
        participant that only publishes has none.
        """
        rtts = [d.rtt_ms for d in self.subscribed if d.rtt_ms is not None]
        return sum(rtts) / len(rtts) if rtts else None

    def to_json(self) -> dict[str, Any]:
        rtt = self.rtt_ms
        return {
            "participant_id": self.participant_id,
            "identity": self.identity,
            "sampled_at": self.sampled_at,
            "rtt_ms": round(rtt, 3) if rtt is not None else None,
            "bitrate_in_bps": _total(p.bitrate_bps for p in self.published),
            "bitrate_out_bps": _total(d.bitrate_bps for d in self.subscribed),
            "published": [p.to_json() for p in self.published],
            "subscribed": [d.to_json() for d in self.subscribed],
        }


def _total(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 3) if known else None
