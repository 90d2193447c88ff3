"""Waiting for an event with a time limit, without losing a cancellation.

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


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Until ``event`` is set (True) or ``seconds`` have passed (False)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
