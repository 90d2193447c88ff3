"""Which simulcast layer a subscriber's bandwidth allows, without oscillating.

The subscriber's receiver estimates its bandwidth and reports it as REMB (aiortc
and Chromium both send REMB when abs-send-time and ``goog-remb`` are negotiated,
which is what the server offers; aiortc has no transport-wide congestion control).
Each video down track of a subscriber gets an equal share of that estimate minus
what its audio needs, and :class:`LayerAllocator` turns the share into a layer cap:

* down at once when the current layer's measured bitrate no longer fits the share;
* up one layer at a time, only when the next layer fits with headroom, after the
  estimate has stayed there for ``STABLE_SECONDS`` and at least ``HOLD_SECONDS``
  after the last step down. The headroom and the hold are what stop a layer whose
  bitrate sits near the estimate from flapping.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADROOM = 1.25  # the next layer must fit the share this many times over to step up
STABLE_SECONDS = 2.0
HOLD_SECONDS = 5.0
AUDIO_SHARE_BPS = 64_000  # kept back per forwarded audio track


def video_share(estimate_bps: int, video_tracks: int, audio_tracks: int) -> float:
    """Each video down track's part of a subscriber's bandwidth estimate."""
    if video_tracks <= 0:
        return float(estimate_bps)
    return max(0.0, estimate_bps - AUDIO_SHARE_BPS * audio_tracks) / video_tracks


@dataclass
class LayerAllocator:
    """The bandwidth cap of one down track; ``cap`` is a layer index (0 = lowest)."""

    cap: int
    _rising_since: float | None = None
    _last_step_down: float = float("-inf")

    def update(self, share_bps: float, bitrates: list[float], now: float) -> int:
        """Recompute the cap from the share and each layer's measured bitrate (0 = unknown).

        An unknown bitrate fits: a layer not yet seen is tried, and stepped down from
        once measured if it does not fit.
        """
        top = len(bitrates) - 1
        self.cap = min(self.cap, top)
        fits = [b <= share_bps for b in bitrates]
        if not fits[self.cap]:
            lower = max((i for i in range(self.cap) if fits[i]), default=0)
            self.cap = lower
            self._last_step_down = now
            self._rising_since = None
            return self.cap
        nxt = self.cap + 1
        if nxt <= top and bitrates[nxt] * HEADROOM <= share_bps and now - self._last_step_down >= HOLD_SECONDS:
            if self._rising_since is None:
                self._rising_since = now
            elif now - self._rising_since >= STABLE_SECONDS:
                self.cap = nxt
                self._rising_since = None
        else:
            self._rising_since = None
        return self.cap
