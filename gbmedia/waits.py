"""Waiting for an event with a time limit, and stopping a task, without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` returns the awaited result when the waiting task is cancelled
in the same loop turn as the awaited thing finishes (CPython gh-86296, fixed in 3.12): the
cancellation is swallowed. A background loop that sleeps with ``wait_for(event.wait(), t)`` and is
stopped by ``task.cancel()`` then goes on running when the event was set at that moment (a webhook
due just as the node stops), and whoever awaits the cancelled task waits forever: one full test
run hung five minutes in ``Node.stop`` that way. ``asyncio.timeout`` cancels the current task
itself and counts it, so a cancellation from outside always propagates.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Until ``event`` is set (True) or ``seconds`` have passed (False)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


CANCEL_RETRY_SECONDS = 1.0


async def cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again each second it goes on.

    A cancellation can be swallowed below a background loop's own code: Python 3.11's
    ``asyncio.wait_for`` returns instead of raising when the task is cancelled in the loop turn its
    awaitable finishes (CPython gh-86296), and the libraries a loop awaits (the Kafka client, the database driver)
    have timeouts of their own. The outbox relay then went back to waiting for rows, and a node's
    stop awaited it forever (tests/deploy/test_monitoring.py hung 300 s with the relay idle in its wait
    after the cancellation; docs/testing.md).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=CANCEL_RETRY_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
