"""Token-bucket rate limits, shared by every node through Redis when there is one.

A bucket holds ``burst`` tokens and refills at ``rate`` per second; each request
takes one. The Redis version runs the whole check in one Lua script so concurrent
nodes cannot both spend the last token. A single node with no Redis keeps the same
buckets in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until one token is available; 0 when allowed


class RateLimiter(Protocol):
    async def take(self, key: str) -> Decision: ...


def _refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - last) * rate)


class MemoryRateLimiter:
    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key: str) -> Decision:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = _refill(tokens, last, now, self.rate, self.burst)
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._evict_full(now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return Decision(True, 0.0)
        self._buckets[key] = (tokens, now)
        return Decision(False, (1.0 - tokens) / self.rate)

    def _evict_full(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no state."""
        for key, (tokens, last) in list(self._buckets.items()):
            if _refill(tokens, last, now, self.rate, self.burst) >= self.burst:
                del self._buckets[key]


# KEYS[1] bucket; ARGV: rate, burst, ttl seconds. Uses Redis' own clock so nodes
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
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    def __init__(self, client: aioredis.Redis, rate: float, burst: int, *, prefix: str = "gbmedia:rl:") -> None:
        self.rate, self.burst, self.prefix = rate, burst, prefix
        self._script = client.register_script(_TAKE)
        # A bucket left alone this long has refilled; Redis may forget it.
        self._ttl = max(1, math.ceil(burst / rate) + 1)

    async def take(self, key: str) -> Decision:
        allowed, tokens = await self._script(keys=[self.prefix + key], args=[self.rate, self.burst, self._ttl])
        if int(allowed):
            return Decision(True, 0.0)
        return Decision(False, (1.0 - float(tokens)) / self.rate)
