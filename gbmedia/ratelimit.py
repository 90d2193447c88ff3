"""Token-bucket rate limits, shared by every node through Redis when there is one.

A bucket holds ``burst`` tokens and refills at ``rate`` per second; each request
takes one. The Redis version runs the whole check in one Lua script so concurrent
nodes cannot both spend the last token. A single node with no Redis keeps the same
buckets in memory. ``peek`` asks whether a bucket has a token without spending it:
the failed-authentication limit is charged only on failures but checked before
every attempt.

A limiter must never take the API down with Redis: :class:`FallbackRateLimiter`
gives each Redis call a short timeout and, while Redis does not answer, counts in
this node's memory instead (each node then allows the full budget on its own),
going back to Redis as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gbmedia.metrics import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until one token is available; 0 when allowed


class RateLimiter(Protocol):
    async def take(self, key: str) -> Decision: ...

    async def peek(self, key: str) -> Decision:
        """Whether ``key`` has a token, without spending it."""
        ...


def _refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - last) * rate)


class MemoryRateLimiter:
    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str) -> Decision:
        return self._spend(key, 1.0)

    async def peek(self, key: str) -> Decision:
        return self._spend(key, 0.0)

    def _spend(self, key: str, cost: float) -> Decision:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = _refill(tokens, last, now, self.rate, self.burst)
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._evict_full(now)
        if tokens >= 1.0:
            if cost:
                self._buckets[key] = (tokens - cost, now)
            return Decision(True, 0.0)
        if cost:
            self._buckets[key] = (tokens, now)
        return Decision(False, (1.0 - tokens) / self.rate)

    def _evict_full(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no state."""
        for key, (tokens, last) in list(self._buckets.items()):
            if _refill(tokens, last, now, self.rate, self.burst) >= self.burst:
                del self._buckets[key]


# KEYS[1] bucket; ARGV: rate, burst, ttl seconds, cost (0: only look). Uses Redis' own clock so nodes
# with skewed clocks agree.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local cost = tonumber(ARGV[4])
local allowed = 0
if tokens >= 1 then
  tokens = tokens - cost
  allowed = 1
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, rate: float, burst: int, *, prefix: str = "gbmedia:rl:") -> None:
        self.rate, self.burst, self.prefix = rate, burst, prefix
        self._script = client.register_script(_TAKE)
        # A bucket left alone this long has refilled; Redis may forget it.
        self._ttl = max(1, math.ceil(burst / rate) + 1)

    async def take(self, key: str) -> Decision:
        return await self._spend(key, 1)

    async def peek(self, key: str) -> Decision:
        return await self._spend(key, 0)

    async def _spend(self, key: str, cost: int) -> Decision:
        allowed, tokens = await self._script(keys=[self.prefix + key], args=[self.rate, self.burst, self._ttl, cost])
        if int(allowed):
            return Decision(True, 0.0)
        return Decision(False, (1.0 - float(tokens)) / self.rate)


class FallbackRateLimiter:
    """Redis' buckets while Redis answers within ``timeout``; this node's memory while it does not.

    The first failure is logged (once per outage) and counted; while degraded, at most one
    request per ``retry_interval`` tries Redis again, so the others never wait on a dead
    server, and the first answer from Redis ends the outage (logged too).
    """

    def __init__(
        self,
        redis: RedisRateLimiter,
        memory: MemoryRateLimiter,
        *,
        name: str,
        timeout: float = 0.25,
        retry_interval: float = 1.0,
    ) -> None:
        self.redis, self.memory, self.name = redis, memory, name
        self.timeout, self.retry_interval = timeout, retry_interval
        self.degraded = False
        self.fallbacks = 0  # outages begun: Redis failed while it was in use
        self._next_try = 0.0

    async def take(self, key: str) -> Decision:
        return await self._decide(key, take=True)

    async def peek(self, key: str) -> Decision:
        return await self._decide(key, take=False)

    async def _decide(self, key: str, *, take: bool) -> Decision:
        now = time.monotonic()
        if not self.degraded or now >= self._next_try:
            try:
                async with asyncio.timeout(self.timeout):
                    decision = await (self.redis.take(key) if take else self.redis.peek(key))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, now)
            else:
                if self.degraded:
                    self.degraded = False
                    log.warning("rate limiter is back on Redis", extra={"limiter": self.name})
                return decision
        return await (self.memory.take(key) if take else self.memory.peek(key))

    def _failed(self, exc: BaseException, now: float) -> None:
        self._next_try = now + self.retry_interval
        if self.degraded:
            return
        self.degraded = True
        self.fallbacks += 1
        log.warning(
            "rate limiter falls back to memory: Redis does not answer",
            extra={"limiter": self.name, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )

    def samples(self) -> list[Sample]:
        labels = (("limiter", self.name),)
        return [
            Sample(
                "gbmedia_ratelimit_redis_fallbacks_total",
                "Times a rate limiter stopped reaching Redis and counted in memory instead",
                self.fallbacks,
                counter=True,
                labels=labels,
            ),
            Sample(
                "gbmedia_ratelimit_degraded",
                "1 while a rate limiter counts in memory because Redis does not answer",
                1 if self.degraded else 0,
                labels=labels,
            ),
        ]


def rate_limiter(redis: aioredis.Redis | None, rate: float, burst: int, *, name: str) -> RateLimiter:
    """The node's limiter for one budget: shared through Redis (with the memory fallback), or in memory."""
    memory = MemoryRateLimiter(rate, burst)
    if redis is None:
        return memory
    return FallbackRateLimiter(RedisRateLimiter(redis, rate, burst), memory, name=name)
