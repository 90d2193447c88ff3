"""The task dump a hung test prints before pytest-timeout fails it (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.conftest import awaited_frames


async def test_a_hung_fixture_teardown_shows_the_fixtures_own_line():
    gate = asyncio.Event()

    async def stuck_fixture() -> AsyncIterator[str]:
        yield "value"
        await gate.wait()  # the teardown that hangs

    async def finalizer(gen_obj: AsyncIterator[str]) -> None:  # as pytest-asyncio finalizes a fixture
        with contextlib.suppress(StopAsyncIteration):
            await gen_obj.__anext__()

    fixture = stuck_fixture()
    assert await fixture.__anext__() == "value"
    task = asyncio.ensure_future(finalizer(fixture))
    await asyncio.sleep(0)
    try:
        names = [frame.f_code.co_name for frame in awaited_frames(task.get_coro())]
        assert names == ["finalizer", "stuck_fixture", "wait"]  # through the asend, to the line that waits
    finally:
        gate.set()
        await asyncio.wait_for(task, 5)


async def test_a_plain_chain_of_coroutines_is_shown_outermost_first():
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.ensure_future(outer())
    await asyncio.sleep(0)
    try:
        assert [frame.f_code.co_name for frame in awaited_frames(task.get_coro())] == ["outer", "inner", "wait"]
    finally:
        gate.set()
        await asyncio.wait_for(task, 5)
