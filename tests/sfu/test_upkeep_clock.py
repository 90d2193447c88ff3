"""The node's periodic upkeep on one grid of times (gbmedia/sfu/upkeep_clock.py).

What a node depends on: sender reports and consent checks due within the same tick share one
wake-up of the loop, none runs before the time it asked for, and one failing or cancelled
timer stops no other.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gbmedia.sfu.upkeep_clock import UPKEEP_TICK, UpkeepClock, upkeep_clock

TICK = 0.05
MS = 0.0015  # the loop's clock steps in milliseconds


def test_grid_times_are_never_before_the_time_asked_for() -> None:
    clock = UpkeepClock(asyncio.new_event_loop(), tick=0.1)
    try:
        assert clock.on_grid(0.3) == pytest.approx(0.3)  # a grid time is its own (0.3 / 0.1 is 2.9999...)
        assert clock.on_grid(0.30001) == pytest.approx(0.4)
        for _ in range(1000):
            when = random.uniform(0, 1e5)
            at = clock.on_grid(when)
            assert when - 1e-6 <= at < when + 0.1
    finally:
        clock.loop.close()


async def test_timers_due_in_one_tick_run_from_one_wake_up_and_none_early() -> None:
    loop = asyncio.get_running_loop()
    clock = UpkeepClock(loop, tick=TICK)
    ran: list[tuple[float, float, int]] = []  # (asked for, ran at, in which of the clock's wake-ups)
    start = clock.on_grid(loop.time()) + TICK
    for _ in range(20):  # twenty connections' timers, scattered over one tick
        when = start + random.uniform(0.001, TICK - 0.001)
        clock.call_at(when, lambda when=when: ran.append((when, loop.time(), clock.fired)))
    later = start + 10 * TICK + 0.01
    clock.call_at(later, lambda: ran.append((later, loop.time(), clock.fired)))
    await asyncio.sleep(start + 12 * TICK - loop.time())
    assert len(ran) == 21
    assert {fired for _, _, fired in ran} == {1, 2}
    assert all(fired == 1 for _, _, fired in ran[:20])  # all twenty from the first wake-up, the last from the next
    assert all(at >= asked - MS for asked, at, _ in ran)  # never early
    assert clock.fired == 2 and clock.failed == 0


async def test_sleeps_end_on_the_grid_together_and_a_cancelled_one_stops_nothing() -> None:
    loop = asyncio.get_running_loop()
    clock = UpkeepClock(loop, tick=0.2)
    await clock.sleep(0)  # now just after a grid time
    woke: dict[str, int] = {}  # which of the clock's wake-ups ended each sleep

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke[name] = clock.fired

    short = asyncio.create_task(sleeper("short", 0.01))
    long_ = asyncio.create_task(sleeper("long", 0.1))
    gone = asyncio.create_task(sleeper("gone", 0.05))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(short, long_)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert woke == {"short": 2, "long": 2}  # one wake-up for both (the first was the sleep(0))
    assert "gone" not in woke
    assert clock.failed == 0


async def test_a_failing_timer_is_counted_and_the_others_and_the_clock_go_on(caplog) -> None:
    loop = asyncio.get_running_loop()
    clock = UpkeepClock(loop, tick=TICK)
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("one connection's report")

    now = loop.time()
    clock.call_at(now, fail)
    clock.call_at(now, lambda: ran.append("same tick"))
    clock.call_at(now + 2 * TICK, lambda: ran.append("later"))
    await asyncio.sleep(4 * TICK)
    assert ran == ["same tick", "later"]
    assert clock.failed == 1
    assert "periodic upkeep failed" in caplog.text


async def test_a_timer_that_asks_for_its_next_time_while_firing_gets_it() -> None:
    """What each sender report and consent check does: run, then ask for the next one."""
    loop = asyncio.get_running_loop()
    clock = UpkeepClock(loop, tick=TICK)
    times: list[float] = []
    done = loop.create_future()

    def report() -> None:
        times.append(loop.time())
        if len(times) < 3:
            clock.call_at(loop.time() + 0.001, report)  # due in the next tick, not this one again
        else:
            done.set_result(None)

    clock.call_at(loop.time(), report)
    await asyncio.wait_for(done, 2)
    assert len(times) == 3 and times[0] < times[1] < times[2]
    assert clock.fired == 3


async def test_each_loop_has_its_own_clock_with_the_default_tick() -> None:
    clock = upkeep_clock()
    assert upkeep_clock() is clock
    assert clock.loop is asyncio.get_running_loop() and clock.tick == UPKEEP_TICK
