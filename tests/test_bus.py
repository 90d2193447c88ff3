"""The pub/sub bus between nodes: every behaviour in memory and through a real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gbmedia.bus import Bus, MemoryBus, RedisBus


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def recorder() -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], Any]]:
    seen: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> None:
        seen.append(message)

    return seen, handler


def bus_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}


@pytest.fixture
def prefix() -> str:
    return f"gbmedia-test:bus:{uuid.uuid4().hex}:"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the memory bus, the Redis URL for the Redis one."""
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
async def bus(backend: str | None, prefix: str) -> AsyncIterator[Bus]:
    if backend is None:
        memory = MemoryBus()
        yield memory
        await memory.close()
        return
    client = aioredis.from_url(backend)
    redis_bus = RedisBus(client, prefix=prefix)
    yield redis_bus
    await redis_bus.close()
    await client.aclose()


# --- both implementations ------------------------------------------------------------------


async def test_delivers_to_every_subscriber(bus: Bus):
    seen_a, handler_a = recorder()
    seen_b, handler_b = recorder()
    seen_other, handler_other = recorder()
    await bus.subscribe("room", handler_a)
    await bus.subscribe("room", handler_b)
    await bus.subscribe("elsewhere", handler_other)
    await bus.publish("room", {"text": "hello", "n": 1})
    await wait_until(lambda: len(seen_a) == 1 and len(seen_b) == 1)
    assert seen_a == seen_b == [{"text": "hello", "n": 1}]
    await bus.publish("elsewhere", {"n": 2})
    await wait_until(lambda: len(seen_other) == 1)
    assert seen_other == [{"n": 2}]
    assert len(seen_a) == 1


async def test_delivery_happens_outside_publish(bus: Bus):
    entered = asyncio.Event()
    release = asyncio.Event()

    async def blocking(message: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    await bus.subscribe("c", blocking)
    await asyncio.wait_for(bus.publish("c", {}), 5)  # returns although the handler blocks
    await asyncio.wait_for(entered.wait(), 5)
    release.set()


async def test_keeps_publish_order_for_1000_messages(bus: Bus):
    seen_a, handler_a = recorder()
    seen_b, handler_b = recorder()
    await bus.subscribe("ordered", handler_a)
    await bus.subscribe("ordered", handler_b)
    for i in range(1000):
        await bus.publish("ordered", {"i": i})
    await wait_until(lambda: len(seen_a) == 1000 and len(seen_b) == 1000)
    assert [m["i"] for m in seen_a] == list(range(1000))
    assert [m["i"] for m in seen_b] == list(range(1000))


async def test_failing_handler_does_not_stop_others(bus: Bus, caplog: pytest.LogCaptureFixture):
    calls: list[int] = []

    async def failing(message: dict[str, Any]) -> None:
        calls.append(message["i"])
        raise RuntimeError("handler broke")

    seen, handler = recorder()
    await bus.subscribe("c", failing)
    await bus.subscribe("c", handler)
    with caplog.at_level(logging.ERROR, logger="gbmedia.bus"):
        for i in range(3):
            await bus.publish("c", {"i": i})
        await wait_until(lambda: len(seen) == 3 and len(calls) == 3)
    assert [m["i"] for m in seen] == [0, 1, 2]
    assert calls == [0, 1, 2]  # the failing handler still gets every later message
    failures = [r for r in caplog.records if r.getMessage() == "bus handler failed"]
    assert len(failures) == 3
    assert failures[0].exc_info is not None
    assert failures[0].channel.endswith("c")  # type: ignore[attr-defined]


async def test_slow_handler_does_not_delay_others(bus: Bus):
    release = asyncio.Event()

    async def stuck(message: dict[str, Any]) -> None:
        await release.wait()

    seen, handler = recorder()
    await bus.subscribe("c", stuck)
    await bus.subscribe("c", handler)
    for i in range(5):
        await bus.publish("c", {"i": i})
    await wait_until(lambda: len(seen) == 5)
    release.set()


async def test_unsubscribe_stops_delivery(bus: Bus):
    seen_gone, handler_gone = recorder()
    seen_kept, handler_kept = recorder()
    gone = await bus.subscribe("c", handler_gone)
    await bus.subscribe("c", handler_kept)
    await bus.publish("c", {"i": 0})
    await wait_until(lambda: len(seen_gone) == 1 and len(seen_kept) == 1)
    await gone.close()
    await gone.close()  # twice is harmless
    await bus.publish("c", {"i": 1})
    await wait_until(lambda: len(seen_kept) == 2)
    await asyncio.sleep(0.05)
    assert seen_gone == [{"i": 0}]


async def test_resubscribe_after_last_subscriber_left(bus: Bus):
    seen, handler = recorder()
    first = await bus.subscribe("c", handler)
    await first.close()
    await bus.subscribe("c", handler)
    await bus.publish("c", {"i": 1})
    await wait_until(lambda: len(seen) == 1)


async def test_handler_may_close_its_own_subscription(bus: Bus):
    seen: list[dict[str, Any]] = []
    holder: dict[str, Any] = {}

    async def once(message: dict[str, Any]) -> None:
        seen.append(message)
        await holder["sub"].close()

    holder["sub"] = await bus.subscribe("c", once)
    seen_probe, probe = recorder()
    await bus.subscribe("c", probe)
    await bus.publish("c", {"i": 0})
    await bus.publish("c", {"i": 1})
    await wait_until(lambda: len(seen_probe) == 2)
    await asyncio.sleep(0.05)
    assert seen == [{"i": 0}]


async def test_messages_must_be_json_objects(bus: Bus):
    with pytest.raises(TypeError):
        await bus.publish("c", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await bus.publish("c", {"when": object()})
    with pytest.raises(ValueError):
        await bus.publish("c", {"x": float("nan")})


async def test_handlers_get_json_round_tripped_copies(bus: Bus):
    seen, handler = recorder()
    await bus.subscribe("c", handler)
    sent = {"pair": (1, 2), "nested": {"k": "ü"}}
    await bus.publish("c", sent)
    sent["nested"]["k"] = "changed after publish"
    await wait_until(lambda: len(seen) == 1)
    assert seen == [{"pair": [1, 2], "nested": {"k": "ü"}}]


async def test_says_whether_it_spans_more_than_this_process(bus: Bus):
    """What a publisher may skip: on a bus that spans one process, a message reaches only this node's own
    subscribers, which the chat fan-out serves directly (tests/messaging/test_delivery.py)."""
    assert bus.spans_nodes is isinstance(bus, RedisBus)


async def test_close_leaves_no_running_tasks(backend: str | None, prefix: str):
    before = asyncio.all_tasks()
    client = aioredis.from_url(backend) if backend else None
    bus: Bus = RedisBus(client, prefix=prefix) if client else MemoryBus()
    seen, handler = recorder()
    await bus.subscribe("a", handler)
    await bus.subscribe("a", handler)
    await bus.subscribe("b", handler)
    await bus.publish("a", {})
    await wait_until(lambda: len(seen) == 2)
    assert bus_tasks(before)  # subscriptions (and the Redis reader) are running
    await bus.close()
    await bus.close()  # twice is harmless
    assert bus_tasks(before) == set()
    with pytest.raises(RuntimeError):
        await bus.publish("a", {})
    with pytest.raises(RuntimeError):
        await bus.subscribe("a", handler)
    if client:
        await client.aclose()


async def test_full_queue_drops_and_counts(backend: str | None, prefix: str, caplog: pytest.LogCaptureFixture):
    client = aioredis.from_url(backend) if backend else None
    bus: Bus = RedisBus(client, prefix=prefix, max_pending=2) if client else MemoryBus(max_pending=2)
    release = asyncio.Event()
    started: list[int] = []

    async def stuck(message: dict[str, Any]) -> None:
        started.append(message["i"])
        await release.wait()

    sub = await bus.subscribe("c", stuck)
    seen, handler = recorder()
    await bus.subscribe("c", handler)
    await bus.publish("c", {"i": 0})
    await wait_until(lambda: started == [0])  # the stuck handler holds message 0
    with caplog.at_level(logging.WARNING, logger="gbmedia.bus"):
        for i in range(1, 6):
            await bus.publish("c", {"i": i})
            await wait_until(lambda n=i + 1: len(seen) == n)  # the healthy handler keeps up
    assert sub.dropped == 3  # type: ignore[attr-defined]  # 1 and 2 queued, 3..5 dropped
    drops = [r for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(drops) == 1  # logged once, not per message
    release.set()
    await wait_until(lambda: started == [0, 1, 2])
    await bus.close()
    if client:
        await client.aclose()


# --- Redis only ----------------------------------------------------------------------------


@pytest.mark.redis
async def test_two_nodes_see_each_others_messages(redis_url: str, prefix: str):
    client_a, client_b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    node_a, node_b = RedisBus(client_a, prefix=prefix), RedisBus(client_b, prefix=prefix)
    try:
        seen_a, handler_a = recorder()
        seen_b, handler_b = recorder()
        await node_a.subscribe("room", handler_a)
        await node_b.subscribe("room", handler_b)
        await node_a.publish("room", {"from": "a"})
        await node_b.publish("room", {"from": "b"})
        await wait_until(lambda: len(seen_a) == 2 and len(seen_b) == 2)
        assert seen_a == seen_b == [{"from": "a"}, {"from": "b"}]
    finally:
        await node_a.close()
        await node_b.close()
        await client_a.aclose()
        await client_b.aclose()


@pytest.mark.redis
async def test_prefixes_separate_buses(redis_client: aioredis.Redis, prefix: str):
    bus_a, bus_b = RedisBus(redis_client, prefix=prefix + "a:"), RedisBus(redis_client, prefix=prefix + "b:")
    try:
        seen_a, handler_a = recorder()
        seen_b, handler_b = recorder()
        await bus_a.subscribe("c", handler_a)
        await bus_b.subscribe("c", handler_b)
        await bus_a.publish("c", {"to": "a"})
        await bus_b.publish("c", {"to": "b"})
        await wait_until(lambda: len(seen_a) == 1 and len(seen_b) == 1)
        await asyncio.sleep(0.05)
        assert seen_a == [{"to": "a"}]
        assert seen_b == [{"to": "b"}]
    finally:
        await bus_a.close()
        await bus_b.close()


@pytest.mark.redis
async def test_subscribe_returns_once_redis_confirmed(redis_client: aioredis.Redis, prefix: str):
    bus = RedisBus(redis_client, prefix=prefix)
    try:
        _seen, handler = recorder()
        subs = [await bus.subscribe(name, handler) for name in ("a", "b", "c")]
        counts = await redis_client.pubsub_numsub(prefix + "a", prefix + "b", prefix + "c")
        assert [n for _, n in counts] == [1, 1, 1]  # confirmed before subscribe returned
        assert bus._pubsub is not None and len(bus._pubsub.channels) == 3  # one connection for all
        await bus.subscribe("a", handler)
        assert (await redis_client.pubsub_numsub(prefix + "a"))[0][1] == 1  # a second handler shares it
        for sub in subs:
            await sub.close()
        counts = await redis_client.pubsub_numsub(prefix + "b", prefix + "c")
        assert [n for _, n in counts] == [0, 0]  # the last handler's close unsubscribed
        assert (await redis_client.pubsub_numsub(prefix + "a"))[0][1] == 1
    finally:
        await bus.close()


@pytest.mark.redis
async def test_survives_a_dropped_connection(
    redis_url: str, redis_client: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
):
    client = aioredis.from_url(redis_url)
    bus = RedisBus(client, prefix=prefix)
    before = asyncio.all_tasks()
    try:
        seen, handler = recorder()
        await bus.subscribe("c", handler)
        await bus.publish("c", {"i": "before"})
        await wait_until(lambda: len(seen) == 1)
        # Kill exactly this bus's pubsub connection, not other tests' on the shared Redis.
        assert bus._pubsub is not None and bus._pubsub.connection is not None
        host, port = bus._pubsub.connection._writer.get_extra_info("sockname")[:2]
        with caplog.at_level(logging.INFO, logger="gbmedia.bus"):
            assert await redis_client.client_kill_filter(_type="pubsub", addr=f"{host}:{port}") == 1
            # Messages published while it is down are lost (at most once): probe until it is back.
            probes = 0
            while not any(m["i"] == "probe" for m in seen):
                await redis_client.publish(prefix + "c", '{"i": "probe"}')
                probes += 1
                assert probes < 1000, "bus never resubscribed"
                await asyncio.sleep(0.01)
            await bus.publish("c", {"i": "after"})
            await wait_until(lambda: seen[-1] == {"i": "after"})
        messages = [r.getMessage() for r in caplog.records]
        assert "bus connection lost; reconnecting" in messages
        assert "bus reconnected" in messages
    finally:
        await bus.close()
        await client.aclose()
    assert bus_tasks(before) == set()


@pytest.mark.redis
async def test_idle_connection_is_pinged(redis_client: aioredis.Redis, prefix: str):
    bus = RedisBus(redis_client, prefix=prefix, ping_interval=0.02)
    try:
        seen, handler = recorder()
        await bus.subscribe("c", handler)
        await asyncio.sleep(0.15)  # several ping intervals without traffic
        await bus.publish("c", {"i": 1})
        await wait_until(lambda: len(seen) == 1)
    finally:
        await bus.close()


class FreezingProxy:
    """A TCP proxy to Redis whose existing connections can go silent without closing.

    That is a half-open connection (a peer gone without a FIN or RST): only the bus's
    pings can notice it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.connections: list[dict[str, Any]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        state: dict[str, Any] = {"frozen": False, "writers": (writer, up_writer)}
        self.connections.append(state)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not state["frozen"]:
                        dst.write(data)
                        await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def freeze(self) -> None:
        for state in self.connections:
            state["frozen"] = True

    async def stop(self) -> None:
        self.server.close()
        for state in self.connections:
            for writer in state["writers"]:
                writer.close()
        await self.server.wait_closed()


@pytest.mark.redis
async def test_detects_a_silent_connection_by_ping(
    redis_url: str, redis_client: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
):
    target = urlsplit(redis_url)
    proxy = FreezingProxy(target.hostname or "127.0.0.1", target.port or 6379)
    port = await proxy.start()
    client = aioredis.from_url(f"redis://127.0.0.1:{port}{target.path}")
    bus = RedisBus(client, prefix=prefix, ping_interval=0.05)
    try:
        seen, handler = recorder()
        await bus.subscribe("c", handler)
        with caplog.at_level(logging.WARNING, logger="gbmedia.bus"):
            proxy.freeze()  # the bus's connection stays open but nothing comes through any more
            await wait_until(lambda: any("no reply from Redis" in str(getattr(r, "error", "")) for r in caplog.records))
        probes = 0
        while not seen:  # a fresh connection through the proxy is not frozen
            await redis_client.publish(prefix + "c", '{"i": "probe"}')
            probes += 1
            assert probes < 1000, "bus never resubscribed"
            await asyncio.sleep(0.01)
    finally:
        await bus.close()
        await client.aclose()
        await proxy.stop()


@pytest.mark.redis
async def test_ignores_messages_that_are_not_json_objects(
    redis_client: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
):
    bus = RedisBus(redis_client, prefix=prefix)
    try:
        seen, handler = recorder()
        await bus.subscribe("c", handler)
        with caplog.at_level(logging.WARNING, logger="gbmedia.bus"):
            await redis_client.publish(prefix + "c", "not json")
            await redis_client.publish(prefix + "c", "[1, 2]")
            await bus.publish("c", {"ok": True})
            await wait_until(lambda: len(seen) == 1)
        assert seen == [{"ok": True}]
        assert sum("not a JSON object" in r.getMessage() for r in caplog.records) == 2
    finally:
        await bus.close()


async def test_unreachable_redis_retries_and_closes_cleanly(caplog: pytest.LogCaptureFixture):
    """No server needed: nothing listens on port 1, so every connect fails at once."""
    client = aioredis.from_url("redis://127.0.0.1:1/0")
    before = asyncio.all_tasks()
    bus = RedisBus(client, reconnect_min=0.01, reconnect_max=0.02)
    _seen, handler = recorder()
    with caplog.at_level(logging.WARNING, logger="gbmedia.bus"):
        pending = asyncio.create_task(bus.subscribe("c", handler))
        await wait_until(
            lambda: sum(r.getMessage() == "bus connection lost; reconnecting" for r in caplog.records) >= 3
        )
    assert not pending.done()  # subscribe waits for Redis
    await bus.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pending
    assert bus_tasks(before) == set()
    await client.aclose()


async def test_cancelled_subscribe_leaves_nothing_behind():
    client = aioredis.from_url("redis://127.0.0.1:1/0")
    bus = RedisBus(client, reconnect_min=0.01, reconnect_max=0.02)
    _seen, handler = recorder()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await bus.subscribe("c", handler)
    assert bus._subs == {}
    await bus.close()
    await client.aclose()
