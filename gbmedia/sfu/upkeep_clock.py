"""One grid of times for a node's periodic per-connection upkeep, so it wakes the process rarely.

Each connection has timers of its own: a sender report every 0.5-1.5 s per forwarding sender
(RFC 3550 6.2), a consent check every 4-6 s (RFC 7675). Each at its own random time, they woke
the event loop once each: at 128 subscribers with the publisher muted, 150-280 wake-ups a second.
On a virtual machine a wake-up costs 16-50 µs of CPU before any work is done (a loop that does
nothing with each datagram, measured on this project's 2-core machines), and the work itself runs
with cold caches. Held to a grid, every timer due in the same ``tick`` fires from one timer of the
loop: at most ``1 / tick`` wake-ups a second for all of them, however many connections.

A timer fires at the first grid time at or after the time asked for: late by less than a tick,
never early, so the intervals the RFCs randomise keep their lower bounds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

UPKEEP_TICK = 0.1  # seconds between grid times: a report or check is at most this late


class UpkeepClock:
    """Timers on a grid of ``tick`` seconds, all due in one tick run from one timer of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = UPKEEP_TICK) -> None:
        self.loop = loop
        self.tick = tick
        self._due: list[tuple[float, int, Callable[[], None]]] = []  # (grid time, order, callback)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf  # the grid time the loop's timer is set for
        self._firing = False
        self.fired = 0  # the loop's timer went off (each a wake-up at most)
        self.failed = 0  # callbacks that raised

    def on_grid(self, when: float) -> float:
        """The first grid time at or after ``when``."""
        return math.ceil(when / self.tick - 1e-9) * self.tick

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the first grid time at or after ``when`` (loop time)."""
        at = self.on_grid(when)
        heapq.heappush(self._due, (at, next(self._order), callback))
        if at < self._armed_for and not self._firing:  # a callback's own next time is armed after them all
            self._arm(at)

    async def sleep(self, delay: float) -> None:
        """``asyncio.sleep(delay)``, ending on the grid (cancellable the same way)."""
        future = self.loop.create_future()

        def wake() -> None:
            if not future.done():  # cancelled meanwhile
                future.set_result(None)

        self.call_at(self.loop.time() + delay, wake)
        await future

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = at
        self._timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        self.fired += 1
        # the loop's clock has millisecond steps: a timer may run a hair before its grid time
        until = self.loop.time() + self.tick / 2
        due = self._due
        ready = []
        while due and due[0][0] <= until:
            ready.append(heapq.heappop(due)[2])
        self._firing = True
        try:
            for callback in ready:
                try:
                    callback()
                except Exception:  # one connection's failure must not stop the others' upkeep, nor the clock
                    self.failed += 1
                    log.exception("periodic upkeep failed")
        finally:
            self._firing = False
        if due:
            self._arm(due[0][0])


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UpkeepClock] = weakref.WeakKeyDictionary()


def upkeep_clock() -> UpkeepClock:
    """The running loop's :class:`UpkeepClock`."""
    loop = asyncio.get_running_loop()
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = UpkeepClock(loop)
    return clock
