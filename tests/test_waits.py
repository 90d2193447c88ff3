"""Waiting for an event with a time limit, and stopping a task, without losing a cancellation (gbmedia/waits.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from cryptography.fernet import Fernet

from gbmedia.http.guard import DestinationGuard
from gbmedia.tenancy.secrets import SecretBox
from gbmedia.tenancy.webhook_dispatch import DispatchSettings, WebhookDispatcher
from gbmedia.waits import cancel_until_done, wait_for_event


async def test_it_says_whether_the_event_came_or_the_time_ran_out():
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_for_event(event, 5) is True
    assert await wait_for_event(event, 0) is True  # already set: no wait at all


async def cancelled_as_the_event_is_set(wait: Callable[[asyncio.Event], Awaitable[object]]) -> asyncio.Task[object]:
    """A task waiting with ``wait(event)``, cancelled in the same loop turn as its event is set."""
    event = asyncio.Event()
    task = asyncio.ensure_future(wait(event))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # it is waiting now
    event.set()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    return task


async def test_a_cancellation_as_the_event_is_set_still_cancels():
    task = await cancelled_as_the_event_is_set(lambda event: wait_for_event(event, 10))
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython gh-86296 is fixed in 3.12")
async def test_why_python_3_11s_wait_for_is_not_used():
    task = await cancelled_as_the_event_is_set(lambda event: asyncio.wait_for(event.wait(), 10))
    assert not task.cancelled() and task.result() is True  # the cancellation was swallowed


async def test_the_webhook_dispatcher_stops_when_woken_as_it_is_stopped(pool: asyncpg.Pool):
    """What hung a node's stop: a delivery due at the moment the dispatcher was cancelled."""
    settings = DispatchSettings(idle_interval=30.0)
    dispatcher = WebhookDispatcher(pool, SecretBox(Fernet.generate_key().decode()), DestinationGuard(), "n1", settings)
    dispatcher.start()
    for _ in range(50):  # until it sleeps between polls (its first claim found nothing)
        await asyncio.sleep(0.02)
    dispatcher.wake()
    stopping = asyncio.ensure_future(dispatcher.stop())
    done, _ = await asyncio.wait([stopping], timeout=5)  # waits without cancelling anything itself
    if not done:  # it swallowed its cancellation and runs on: end it for the next tests, then fail
        stopping.cancel()
        await asyncio.wait([stopping], timeout=5)
    assert done, "the dispatcher did not stop"
    assert not dispatcher.running


async def test_cancel_until_done_cancels_once_a_loop_that_listens_and_keeps_a_failure() -> None:
    cancellations = []

    async def listens() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancellations.append(1)
            raise

    task = asyncio.ensure_future(listens())
    await asyncio.sleep(0)
    await cancel_until_done(task)
    assert task.cancelled() and cancellations == [1]

    async def fails_when_stopped() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("a failure while stopping") from None

    task = asyncio.ensure_future(fails_when_stopped())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="a failure while stopping"):
        await cancel_until_done(task)
