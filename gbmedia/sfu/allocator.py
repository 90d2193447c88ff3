"""Which simulcast layer a subscriber's bandwidth allows, without oscillating.

The subscriber's receiver estimates its bandwidth and reports it as REMB (aiortc
and Chromium both send REMB when abs-send-time and ``goog-remb`` are negotiated,
which is what the server offers; aiortc has no transport-wide congestion control).
Each video down track of a subscriber gets an equal share of that estimate minus
what its audio needs, and :class:`LayerAllocator` turns the share into a layer cap.

A receive-side estimate cannot say how much more the link would carry: libwebrtc
keeps it below 1.5x what currently arrives and grows it by about 8 % a second. So
a share below the next layer's bitrate is no sign of congestion, and stepping up
only once the share covers it would keep a subscriber on a low layer for good. The
rules are therefore AIMD-like:

* down when the share falls, and falls below ``CONGESTED`` x the current layer's
  bitrate (on overuse the estimator drops to ~0.85x the arriving rate; while it
  ramps up it only grows): to the highest layer that fits the share;
* up one layer when the share either covers the next layer with ``HEADROOM`` or
  shows no congestion at all (``UNCONGESTED`` x the current rate, near the 1.5x
  ceiling), held for ``STABLE_SECONDS``, and no sooner than the hold after the last
  step down. A step down soon after a step up doubles the hold (up to
  ``MAX_HOLD_SECONDS``): a link that cannot carry a layer is not retried every few
  seconds. That hold is what stops a layer near the link's capacity from flapping.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADROOM = 1.25  # the share covers the next layer this many times over: step up
CONGESTED = 0.85  # the share fell below this much of the current layer's bitrate: step down
FALLING = 0.97  # the share is lower than the previous one by more than noise
UNCONGESTED = 1.3  # the share is this much above the current layer's bitrate: the link has room
STABLE_SECONDS = 2.0
HOLD_SECONDS = 5.0
MAX_HOLD_SECONDS = 60.0
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
    hold: float = 0.0  # seconds to wait after a step down before stepping up again
    _rising_since: float | None = None
    _last_step_down: float = float("-inf")
    _last_step_up: float = float("-inf")
    _last_share: float | None = None

    def update(self, share_bps: float, bitrates: list[float], now: float) -> int:
        """Recompute the cap from the share and each layer's measured bitrate (0 = unknown)."""
        top = len(bitrates) - 1
        self.cap = min(self.cap, top)
        current = bitrates[self.cap]
        falling = self._last_share is not None and share_bps < self._last_share * FALLING
        self._last_share = share_bps
        if falling and current > 0 and share_bps < current * CONGESTED and self.cap > 0:
            self.cap = max((i for i in range(self.cap) if bitrates[i] <= share_bps), default=0)
            recent_up = now - self._last_step_up < max(self.hold, HOLD_SECONDS) * 2
            self.hold = min(max(self.hold, HOLD_SECONDS) * 2, MAX_HOLD_SECONDS) if recent_up else HOLD_SECONDS
            self._last_step_down = now
            self._rising_since = None
            return self.cap
        nxt = self.cap + 1
        room = nxt <= top and (
            bitrates[nxt] * HEADROOM <= share_bps or (current > 0 and share_bps >= current * UNCONGESTED)
        )
        if room and now - self._last_step_down >= self.hold:
            if self._rising_since is None:
                self._rising_since = now
            elif now - self._rising_since >= STABLE_SECONDS:
                self.cap = nxt
                self._last_step_up = now
                self._rising_since = None
        else:
            self._rising_since = None
        return self.cap
