"""The few statistics the benchmarks print, the same way in each."""

from __future__ import annotations

import math


def percentile(values: list[float] | list[int], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in %, 100 is the maximum), or None without values.

    Nearest rank, not interpolation: every figure printed is a latency that was measured."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def percentile_ms(values_us: list[int], q: float) -> float | None:
    """``percentile`` of microsecond values, in ms (workers report integers: smaller JSON, no rounding drift)."""
    value = percentile(values_us, q)
    return value / 1000 if value is not None else None


def cpu_delta(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU spent between two per-process readings (a process new in ``b`` counts from zero; one gone from ``b``
    or whose pid was reused, reading less than before, is left out)."""
    return sum(v - a.get(pid, 0.0) for pid, v in b.items() if v >= a.get(pid, 0.0))
