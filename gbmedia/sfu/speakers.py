"""Active speakers, from the RFC 6464 audio level header extension.

Every audio packet carries the sender's level in -dBov (0 loudest, 127 silence) when
``urn:ietf:params:rtp-hdrext:ssrc-audio-level`` is negotiated: aiortc's answer keeps
it whenever the offer has it (Chromium and aiortc both offer it), aiortc parses it on
receipt (``packet.extensions.audio_level`` = ``(voice_flag, level)``) and aiortc's own
sender writes it from each frame's RMS. The SFU therefore learns who is loud without
decoding any audio.

Why mean amplitude, not "share of loud packets": Chromium's level is an envelope
(a beep reads 10, 9, 25, 33, 40 ... 98, 127 over 400 ms), so counting packets above a
threshold says little, while the mean linear amplitude over a window (10^(-dBov/20),
silence 0) measures loudness the way a listener does. Per participant (all its audio
tracks together) and per tick:

* smoothing: a moving average of the tick's mean amplitude over ``window`` ticks;
* hysteresis: speaking starts at ``start_dbov`` and stops only below ``stop_dbov``;
* stable order: loudest first, but two speakers swap places only when the quieter
  one becomes louder by ``margin_db``, so near-equal voices do not flap.

:class:`SpeakerDetector` is plain logic with no timers; the signaling layer ticks it
(see :mod:`gbmedia.rooms.speakers`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

SILENCE_DBOV = 127
# Linear amplitude of each -dBov level; 127 (silence by RFC 6464) counts as nothing.
_AMPLITUDE = tuple(10 ** (-dbov / 20) if dbov < SILENCE_DBOV else 0.0 for dbov in range(128))


def amplitude(dbov: int) -> float:
    """Linear amplitude (0..1) of a -dBov level."""
    return _AMPLITUDE[max(0, min(SILENCE_DBOV, dbov))]


def to_dbov(level: float) -> float:
    """-dBov of a linear amplitude (127 for silence)."""
    return SILENCE_DBOV if level <= 0 else min(SILENCE_DBOV, -20 * math.log10(level))


class LevelMeter:
    """A packet sink on one audio track: sums the levels of the packets since the last tick.

    Runs on the forwarding path for every audio packet, so it only adds two numbers.
    Packets without the extension (not negotiated) are not counted at all.
    """

    __slots__ = ("amplitude", "closed", "packets", "participant_id", "track_id")

    def __init__(self, participant_id: str, track_id: str) -> None:
        self.participant_id = participant_id
        self.track_id = track_id
        self.packets = 0
        self.amplitude = 0.0
        self.closed = False

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        level = packet.extensions.audio_level
        if level is None:
            return
        self.packets += 1
        self.amplitude += _AMPLITUDE[level[1] & 0x7F]

    def on_track_closed(self) -> None:
        self.closed = True

    def take(self) -> tuple[int, float]:
        """(packets, summed amplitude) since the last call."""
        taken = self.packets, self.amplitude
        self.packets, self.amplitude = 0, 0.0
        return taken


@dataclass(frozen=True)
class Speaker:
    participant_id: str
    level: float  # smoothed mean linear amplitude, 0..1

    def to_json(self) -> dict[str, object]:
        return {
            "participant_id": self.participant_id,
            "level": round(self.level, 4),
            "dbov": round(to_dbov(self.level), 1),
        }


@dataclass
class _Source:
    history: deque[float]
    speaking: bool = False
    meters: dict[str, LevelMeter] = field(default_factory=dict)

    @property
    def level(self) -> float:
        return sum(self.history) / len(self.history) if self.history else 0.0


class SpeakerDetector:
    """Who speaks in one room, loudest first, updated once per :meth:`tick`."""

    def __init__(
        self, *, window: int = 3, start_dbov: float = 40.0, stop_dbov: float = 46.0, margin_db: float = 2.0
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least one tick")
        if stop_dbov < start_dbov:
            raise ValueError("stop_dbov must be at least start_dbov (quieter), or speakers flap")
        self.window = window
        self.start = 10 ** (-start_dbov / 20)
        self.stop = 10 ** (-stop_dbov / 20)
        self.margin = 10 ** (margin_db / 20)
        self._sources: dict[str, _Source] = {}
        self._order: list[str] = []
        self.speakers: list[Speaker] = []

    def add(self, participant_id: str, track_id: str) -> LevelMeter:
        """A meter for one audio track; give it to ``PublishedTrack.add_sink``."""
        source = self._sources.get(participant_id)
        if source is None:
            source = self._sources[participant_id] = _Source(deque(maxlen=self.window))
        meter = source.meters.get(track_id)
        if meter is None:
            meter = source.meters[track_id] = LevelMeter(participant_id, track_id)
        return meter

    def remove(self, participant_id: str, track_id: str) -> LevelMeter | None:
        """Stop metering a track; a participant without tracks drops out at the next tick."""
        source = self._sources.get(participant_id)
        if source is None:
            return None
        meter = source.meters.pop(track_id, None)
        if not source.meters:
            del self._sources[participant_id]
        return meter

    @property
    def empty(self) -> bool:
        return not self._sources

    def tick(self) -> list[Speaker] | None:
        """Close one interval; the new ordered speaker list if it changed, else None."""
        levels: dict[str, float] = {}
        for participant_id, source in self._sources.items():
            packets, total = 0, 0.0
            for meter in source.meters.values():
                n, amp = meter.take()
                packets += n
                total += amp
            source.history.append(total / packets if packets else 0.0)
            level = source.level
            source.speaking = level >= self.start or (source.speaking and level >= self.stop)
            if source.speaking:
                levels[participant_id] = level
        order = self._ordered(levels)
        changed = order != self._order
        self._order = order
        self.speakers = [Speaker(p, levels[p]) for p in order]
        return self.speakers if changed else None

    def _ordered(self, levels: dict[str, float]) -> list[str]:
        """Loudest first, keeping the previous order unless a later one is louder by the margin."""
        kept = [p for p in self._order if p in levels]
        newcomers = sorted((p for p in levels if p not in kept), key=lambda p: -levels[p])
        order = kept + newcomers
        moved = True
        while moved:  # a bubble sort that swaps only clear differences: stable for near-equal levels
            moved = False
            for i in range(len(order) - 1):
                upper, lower = order[i], order[i + 1]
                if levels[lower] > levels[upper] * self.margin:
                    order[i], order[i + 1] = lower, upper
                    moved = True
        return order
