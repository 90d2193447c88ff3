"""Token-bucket rate limits, in memory and shared through a real Redis."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import RedisError

from gbmedia.app import create_app
from gbmedia.node import Node
from gbmedia.ratelimit import Decision, FallbackRateLimiter, MemoryRateLimiter, RedisRateLimiter
from tests.conftest import make_settings
from tests.helpers import OPERATOR

# --- in memory ------------------------------------------------------------------------


async def test_memory_allows_burst_then_denies():
    limiter = MemoryRateLimiter(rate=1.0, burst=3)
    for _ in range(3):
        assert await limiter.take("k") == Decision(True, 0.0)
    denied = await limiter.take("k")
    assert denied.allowed is False
    assert denied.retry_after == pytest.approx(1.0, abs=0.05)


async def test_memory_retry_after_scales_with_rate():
    limiter = MemoryRateLimiter(rate=4.0, burst=1)
    assert (await limiter.take("k")).allowed
    denied = await limiter.take("k")
    assert not denied.allowed
    assert 0.2 < denied.retry_after <= 0.25


async def test_memory_refills_over_time():
    limiter = MemoryRateLimiter(rate=50.0, burst=2)
    assert (await limiter.take("k")).allowed
    assert (await limiter.take("k")).allowed
    assert not (await limiter.take("k")).allowed
    await asyncio.sleep(0.05)  # 2.5 tokens' worth at 50/s, capped at the burst
    assert (await limiter.take("k")).allowed


async def test_memory_refill_is_capped_at_burst():
    limiter = MemoryRateLimiter(rate=1000.0, burst=2)
    await limiter.take("k")
    await asyncio.sleep(0.05)  # would be 50 tokens without the cap
    results = [(await limiter.take("k")).allowed for _ in range(5)]
    assert results[:2] == [True, True]
    assert results.count(True) <= 3  # at most a token or two refilled meanwhile


async def test_memory_keys_are_independent():
    limiter = MemoryRateLimiter(rate=0.001, burst=1)
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed
    assert (await limiter.take("b")).allowed
    assert not (await limiter.take("b")).allowed
    assert not (await limiter.take("a")).allowed


async def test_memory_evicts_full_buckets_at_max_keys():
    limiter = MemoryRateLimiter(rate=1000.0, burst=1, max_keys=5)
    for i in range(5):
        await limiter.take(f"old{i}")
    assert len(limiter._buckets) == 5
    await asyncio.sleep(0.02)  # every old bucket has refilled: it holds no state
    assert (await limiter.take("new")).allowed
    assert set(limiter._buckets) == {"new"}


async def test_memory_stays_bounded_under_a_flood_of_keys():
    limiter = MemoryRateLimiter(rate=1000.0, burst=1, max_keys=10)
    for i in range(200):
        assert (await limiter.take(f"k{i}")).allowed
        assert len(limiter._buckets) <= 10
        if i % 10 == 9:
            await asyncio.sleep(0.005)


async def test_memory_eviction_keeps_spent_buckets():
    """Flooding other keys must not reset a caller's spent bucket."""
    limiter = MemoryRateLimiter(rate=0.001, burst=1, max_keys=2)
    assert (await limiter.take("caller")).allowed
    await limiter.take("other1")
    await limiter.take("other2")
    assert "caller" in limiter._buckets
    assert not (await limiter.take("caller")).allowed


async def test_memory_existing_key_at_max_keys_does_not_evict():
    limiter = MemoryRateLimiter(rate=1000.0, burst=1, max_keys=2)
    await limiter.take("a")
    await limiter.take("b")
    await asyncio.sleep(0.01)
    assert (await limiter.take("a")).allowed
    assert set(limiter._buckets) == {"a", "b"}


# --- Redis ------------------------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"gbmedia-test:rl:{uuid.uuid4().hex}:"


@pytest.mark.redis
async def test_redis_allows_burst_then_denies(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=1.0, burst=3, prefix=prefix)
    for _ in range(3):
        assert await limiter.take("k") == Decision(True, 0.0)
    denied = await limiter.take("k")
    assert denied.allowed is False
    assert 0.8 < denied.retry_after <= 1.0


@pytest.mark.redis
async def test_redis_refills_over_time(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=50.0, burst=2, prefix=prefix)
    assert (await limiter.take("k")).allowed
    assert (await limiter.take("k")).allowed
    assert not (await limiter.take("k")).allowed
    await asyncio.sleep(0.05)
    assert (await limiter.take("k")).allowed


@pytest.mark.redis
async def test_redis_keys_are_independent(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=0.01, burst=1, prefix=prefix)
    assert (await limiter.take("a")).allowed
    assert not (await limiter.take("a")).allowed
    assert (await limiter.take("b")).allowed


@pytest.mark.redis
async def test_redis_limiters_share_one_bucket(redis_url: str, redis_client: aioredis.Redis, prefix: str):
    other_client = aioredis.from_url(redis_url)
    try:
        node_a = RedisRateLimiter(redis_client, rate=0.01, burst=2, prefix=prefix)
        node_b = RedisRateLimiter(other_client, rate=0.01, burst=2, prefix=prefix)
        assert (await node_a.take("caller")).allowed
        assert (await node_b.take("caller")).allowed
        assert not (await node_a.take("caller")).allowed
        assert not (await node_b.take("caller")).allowed
    finally:
        await other_client.aclose()


@pytest.mark.redis
async def test_redis_concurrent_takes_never_overspend(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=0.01, burst=5, prefix=prefix)
    results = await asyncio.gather(*(limiter.take("k") for _ in range(20)))
    assert sum(d.allowed for d in results) == 5


@pytest.mark.redis
async def test_redis_different_prefixes_do_not_share(redis_client: aioredis.Redis, prefix: str):
    a = RedisRateLimiter(redis_client, rate=0.01, burst=1, prefix=prefix + "a:")
    b = RedisRateLimiter(redis_client, rate=0.01, burst=1, prefix=prefix + "b:")
    assert (await a.take("k")).allowed
    assert (await b.take("k")).allowed


@pytest.mark.redis
async def test_redis_key_gets_a_ttl(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=1.0, burst=3, prefix=prefix)
    await limiter.take("k")
    ttl = await redis_client.ttl(prefix + "k")
    assert 0 < ttl <= 4  # ceil(burst / rate) + 1: long enough to refill completely
    fields = await redis_client.hgetall(prefix + "k")
    assert float(fields[b"tokens"]) == pytest.approx(2.0, abs=0.01)


# --- peek -------------------------------------------------------------------------------


async def test_memory_peek_looks_without_spending():
    limiter = MemoryRateLimiter(rate=0.001, burst=2)
    for _ in range(5):
        assert (await limiter.peek("k")).allowed
    assert (await limiter.take("k")).allowed
    assert (await limiter.take("k")).allowed
    denied = await limiter.peek("k")
    assert not denied.allowed and denied.retry_after > 0
    assert not (await limiter.take("k")).allowed


@pytest.mark.redis
async def test_redis_peek_looks_without_spending(redis_client: aioredis.Redis, prefix: str):
    limiter = RedisRateLimiter(redis_client, rate=0.001, burst=2, prefix=prefix)
    for _ in range(5):
        assert (await limiter.peek("k")).allowed
    assert not await redis_client.exists(prefix + "k")  # looking writes nothing
    assert (await limiter.take("k")).allowed
    assert (await limiter.take("k")).allowed
    assert not (await limiter.peek("k")).allowed
    assert not (await limiter.take("k")).allowed


# --- Redis going away -------------------------------------------------------------------


class RedisChild:
    """A redis-server of the test's own, on a port of its own, that the test stops and starts again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except (RedisError, OSError):
                    await asyncio.sleep(0.025)
            raise AssertionError("redis-server did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None


@pytest.fixture
async def redis_child(tmp_path: Path) -> AsyncIterator[RedisChild]:
    child = RedisChild(tmp_path)
    await child.start()
    yield child
    await child.stop()


async def test_the_redis_limiter_falls_back_to_memory_while_redis_is_down_and_goes_back(
    redis_child: RedisChild, caplog: pytest.LogCaptureFixture
):
    client = aioredis.from_url(redis_child.url)
    redis = RedisRateLimiter(client, rate=0.001, burst=3)
    limiter = FallbackRateLimiter(redis, MemoryRateLimiter(0.001, 3), name="api", timeout=0.5, retry_interval=0.05)
    try:
        assert (await limiter.take("caller")).allowed
        assert await client.exists("gbmedia:rl:caller")  # counted in Redis while it answers
        await redis_child.stop()
        with caplog.at_level(logging.WARNING, logger="gbmedia.ratelimit"):
            decisions = [await limiter.take("caller") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]  # memory's own bucket of three
        assert limiter.degraded and limiter.fallbacks == 1
        falls = [r for r in caplog.records if "falls back" in r.getMessage()]
        assert len(falls) == 1  # once per outage, not per request
        assert {s.name: s.value for s in limiter.samples()} == {
            "gbmedia_ratelimit_redis_fallbacks_total": 1,
            "gbmedia_ratelimit_degraded": 1,
        }
        await redis_child.start()  # an empty Redis: its buckets start full
        await asyncio.sleep(0.06)  # past retry_interval: the next request tries Redis again
        with caplog.at_level(logging.WARNING, logger="gbmedia.ratelimit"):
            assert (await limiter.take("caller")).allowed
        assert not limiter.degraded
        assert any("back on Redis" in r.getMessage() for r in caplog.records)
        assert await client.exists("gbmedia:rl:caller")
    finally:
        await client.aclose()


async def test_a_redis_that_does_not_answer_costs_a_request_the_timeout_at_most(redis_child: RedisChild):
    """A stopped (SIGSTOP) Redis accepts connections and never answers: the timeout ends the wait."""
    client = aioredis.from_url(redis_child.url)
    limiter = FallbackRateLimiter(
        RedisRateLimiter(client, rate=1.0, burst=1), MemoryRateLimiter(1.0, 1), name="api", timeout=0.2
    )
    assert redis_child.process is not None
    try:
        assert (await limiter.take("a")).allowed
        redis_child.process.send_signal(signal.SIGSTOP)
        try:
            decision = await asyncio.wait_for(limiter.take("b"), 5)  # would hang without the limiter's timeout
            assert decision.allowed and limiter.degraded
            assert (await limiter.peek("b")).allowed is False  # memory answers at once, without waiting again
        finally:
            redis_child.process.send_signal(signal.SIGCONT)
    finally:
        await client.aclose()


async def test_the_rest_api_stays_up_while_its_redis_is_down(
    tmp_path: Path, database_url: str, redis_child: RedisChild
):
    node = await Node.start(make_settings(tmp_path, database_url, redis_url=redis_child.url))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            assert (await client.get("/api/v1/plans", headers=OPERATOR)).status == 200
            await redis_child.stop()
            resp = await client.get("/api/v1/plans", headers=OPERATOR)
            assert resp.status == 200, await resp.text()
            metrics = await (await client.get("/metrics")).text()
            assert 'gbmedia_ratelimit_degraded{limiter="api"} 1.0' in metrics
            assert 'gbmedia_ratelimit_redis_fallbacks_total{limiter="api"} 1.0' in metrics
    finally:
        await node.stop()
