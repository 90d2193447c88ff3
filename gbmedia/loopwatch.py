"""Event-loop lag: how late the loop runs a timer, measured all the time.

Everything a node does (signaling, chat, forwarding, HTTP) shares one event loop, so
CPU work that should have gone to a pool shows up first as lag: a timer asked for in
``interval`` seconds runs later than that. The probe costs one timer per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gbmedia.metrics import Metrics

INTERVAL = 0.25  # seconds between probes: fine enough to catch a stall of a few hundred ms


class LoopWatch:
    def __init__(self, metrics: Metrics, interval: float = INTERVAL) -> None:
        self.metrics = metrics
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

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
            asked = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - asked - self.interval)
            self.metrics.loop_lag.observe(lag)
            self.metrics.loop_lag_last.set(lag)
