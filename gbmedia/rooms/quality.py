"""Media quality of every participant on this node, sampled periodically.

Every ``GBMEDIA_STATS_INTERVAL_MS`` the monitor reads each live participant's figures
(:mod:`gbmedia.sfu.stats`: aiortc's ``getStats()`` plus byte and frame meters on the
published tracks) and keeps the latest snapshot. The Room API
(``GET /api/v1/rooms/{room_id}/participants/{participant}/stats``) and the
Prometheus gauges (``gbmedia_track_*``, ``gbmedia_participant_*``) read that
snapshot: a scrape never waits for media and rates always span one whole interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass

from gbmedia.metrics import Metrics, Sample
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.participant import Participant
from gbmedia.sfu.stats import ParticipantStats, RateTracker, TrackMeter, down_stats, published_stats
from gbmedia.sfu.track import PublishedTrack

log = logging.getLogger(__name__)

# Sampling yields to the loop (the forwarding) once it has run this long since it last did: a room's
# participants are a few microseconds each, and a yield per participant was a loop iteration (a system
# call) per subscriber and second, 1,000 of them a second in a live room of 1,000 viewers.
SAMPLING_SLICE = 0.002


@dataclass(frozen=True)
class _Sampled:
    room_id: str
    stats: ParticipantStats


class QualityMonitor:
    def __init__(self, live_rooms: LiveRooms, interval: float, metrics: Metrics | None = None) -> None:
        self.live_rooms = live_rooms
        self.metrics = metrics  # loss, jitter and RTT histograms (no room or identity labels)
        self.interval = interval
        self.meters: dict[str, TrackMeter] = {}  # by published track id
        self._rates = RateTracker()
        self._latest: dict[str, _Sampled] = {}  # by participant id
        self._task: asyncio.Task[None] | None = None
        live_rooms.on_track(self._on_track)

    async def _on_track(self, event: str, live: LiveRoom, participant: Participant, track: PublishedTrack) -> None:
        if event == "published":
            if track.simulcast:
                return  # a sink would keep its top layer flowing (see gbmedia.sfu.stats)
            meter = self.meters[track.id] = TrackMeter(track.kind)
            track.add_sink(meter)
        elif (gone := self.meters.pop(track.id, None)) is not None:
            track.remove_sink(gone)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample_all()
            except Exception:  # one bad reading must not stop the monitoring
                log.exception("media quality sampling failed")

    async def sample_all(self) -> None:
        """Sample every participant of every live room; replaces the snapshot."""
        now = time.monotonic()
        latest: dict[str, _Sampled] = {}
        for live in list(self.live_rooms.live.values()):
            if live.closed:
                continue
            for stats in await self._sample_room(live, self._rates, now):
                latest[stats.participant_id] = _Sampled(str(live.room.id), stats)
        self._latest = latest
        if self.metrics is not None:
            observe_quality(self.metrics, [s.stats for s in latest.values()])
        self._rates.forget({key for s in latest.values() for key in _rate_keys(s.stats)})

    async def _sample_room(self, live: LiveRoom, rates: RateTracker, now: float) -> list[ParticipantStats]:
        participants = list(live.participants.values())
        at = dt.datetime.now(dt.UTC).isoformat()
        results = [ParticipantStats(p.id, p.identity, at) for p in participants]
        source_fps: dict[str, float | None] = {}
        for participant, stats in zip(participants, results, strict=True):
            for track in participant.published:
                published = await published_stats(track, self.meters.get(track.id), rates, now)
                stats.published.append(published)
                source_fps[track.id] = published.fps if track.kind == "video" else None
        slice_ends = time.perf_counter() + SAMPLING_SLICE
        for participant, stats in zip(participants, results, strict=True):
            for track_id, down in list(participant.subscriptions.items()):
                stats.subscribed.append(
                    await down_stats(down, source_fps.get(track_id), rates, f"{participant.id}/{track_id}", now)
                )
            # Nothing above suspends: let the forwarding run when a slice is used up.
            if time.perf_counter() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = time.perf_counter() + SAMPLING_SLICE
        return results

    async def stats_for(self, live: LiveRoom, participant: Participant) -> ParticipantStats:
        """The participant's latest snapshot; one taken now (without rates) if it joined since."""
        sampled = self._latest.get(participant.id)
        if sampled is not None:
            return sampled.stats
        fresh = await self._sample_room(live, RateTracker(), time.monotonic())
        return next(s for s in fresh if s.participant_id == participant.id)

    def samples(self) -> list[Sample]:
        """Prometheus gauges from the latest snapshot: one series per published track and participant."""
        out: list[Sample] = []
        for sampled in self._latest.values():
            stats = sampled.stats
            who = (("room", sampled.room_id), ("participant", stats.participant_id))
            for track in stats.published:
                labels = (*who, ("track", track.track_id), ("kind", track.kind))
                for name, help_text, value in (
                    ("gbmedia_track_bits_per_second", "Bitrate a published track arrives with", track.bitrate_bps),
                    ("gbmedia_track_frames_per_second", "Frames per second a published track arrives with", track.fps),
                    (
                        "gbmedia_track_loss_ratio",
                        "Share of a published track's packets lost on the way in, over the last interval",
                        track.loss,
                    ),
                    (
                        "gbmedia_track_jitter_seconds",
                        "Interarrival jitter of a published track",
                        track.jitter_ms / 1000 if track.jitter_ms is not None else None,
                    ),
                    (
                        "gbmedia_track_packets_lost",
                        "Packets of a published track lost on the way in, since it started",
                        track.packets_lost,
                    ),
                ):
                    if value is not None:
                        out.append(Sample(name, help_text, value, labels=labels))
            rtt = stats.rtt_ms
            if rtt is not None:
                out.append(
                    Sample(
                        "gbmedia_participant_rtt_seconds",
                        "Round-trip time to a participant, from its receiver reports",
                        rtt / 1000,
                        labels=who,
                    )
                )
            sent = [d.bitrate_bps for d in stats.subscribed if d.bitrate_bps is not None]
            if sent:
                out.append(
                    Sample(
                        "gbmedia_participant_send_bits_per_second",
                        "Bitrate the SFU sends a participant, all its subscriptions together",
                        sum(sent),
                        labels=who,
                    )
                )
        return out


def observe_quality(metrics: Metrics, snapshot: list[ParticipantStats]) -> None:
    """One observation per published track (loss, jitter) and participant (RTT) in the node's histograms.

    The per-track gauges name rooms and participants for a look at one meeting; these
    histograms are what alerts and dashboards aggregate over, at bounded cardinality.
    """
    for stats in snapshot:
        for track in stats.published:
            if track.loss is not None:
                metrics.media_loss.labels(track.kind).observe(track.loss)
            if track.jitter_ms is not None:
                metrics.media_jitter.labels(track.kind).observe(track.jitter_ms / 1000)
        if (rtt := stats.rtt_ms) is not None:
            metrics.media_rtt.observe(rtt / 1000)


def _rate_keys(stats: ParticipantStats) -> list[str]:
    return [p.track_id for p in stats.published] + [f"{stats.participant_id}/{d.track_id}" for d in stats.subscribed]
