"""Token-bucket rate limits, in memory and shared through a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gbmedia.ratelimit import Decision, MemoryRateLimiter, RedisRateLimiter

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
