"""Who is online, per instance: "online", "away", or "offline" when nothing is known.

Every entry carries a TTL: a client's connection refreshes its presence while it is
alive, so a node that dies without saying goodbye leaves no one "online" for longer
than one TTL. A cluster keeps the entries in Redis (one key per person, PX expiry);
a single node without Redis keeps them in memory with the same expiry.
"""

from __future__ import annotations

import math
import time
from typing import Literal, Protocol

import redis.asyncio as aioredis

Status = Literal["online", "away"]
_STATUSES = ("online", "away")


class Presence(Protocol):
    async def set(self, instance_id: str, identity: str, status: Status, ttl: float) -> None: ...

    async def clear(self, instance_id: str, identity: str) -> None: ...

    async def get(self, instance_id: str, identities: list[str]) -> dict[str, str]: ...


def _check(instance_id: str, status: str | None = None, ttl: float | None = None) -> None:
    # Braces would break the Redis key's hash tag (see RedisPresence); keep both implementations equally strict.
    if not instance_id or "{" in instance_id or "}" in instance_id:
        raise ValueError(f"invalid instance id {instance_id!r}")
    if status is not None and status not in _STATUSES:
        raise ValueError(f"presence status must be one of {_STATUSES}, not {status!r}")
    if ttl is not None and not ttl > 0:
        raise ValueError(f"presence ttl must be positive, not {ttl!r}")


class MemoryPresence:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}  # -> (status, monotonic expiry)
        self._sweep_at = 1024

    async def set(self, instance_id: str, identity: str, status: Status, ttl: float) -> None:
        _check(instance_id, status, ttl)
        now = time.monotonic()
        self._entries[(instance_id, identity)] = (status, now + ttl)
        if len(self._entries) >= self._sweep_at:
            self._sweep(now)

    async def clear(self, instance_id: str, identity: str) -> None:
        _check(instance_id)
        self._entries.pop((instance_id, identity), None)

    async def get(self, instance_id: str, identities: list[str]) -> dict[str, str]:
        _check(instance_id)
        now = time.monotonic()
        result: dict[str, str] = {}
        for identity in identities:
            entry = self._entries.get((instance_id, identity))
            if entry is not None and entry[1] <= now:
                del self._entries[(instance_id, identity)]
                entry = None
            result[identity] = entry[0] if entry is not None else "offline"
        return result

    def _sweep(self, now: float) -> None:
        """Forget expired entries nobody asked about; amortised by doubling the threshold."""
        self._entries = {key: entry for key, entry in self._entries.items() if entry[1] > now}
        self._sweep_at = max(1024, 2 * len(self._entries))


class RedisPresence:
    """One key per (instance, identity): ``{prefix}{<instance_id>}:<identity>``.

    The instance id is a hash tag, so on Redis Cluster all of an instance's keys share
    a slot and ``get`` stays one MGET.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "gbmedia:presence:") -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, instance_id: str, identity: str) -> str:
        return f"{self._prefix}{{{instance_id}}}:{identity}"

    async def set(self, instance_id: str, identity: str, status: Status, ttl: float) -> None:
        _check(instance_id, status, ttl)
        await self._client.set(self._key(instance_id, identity), status, px=max(1, math.ceil(ttl * 1000)))

    async def clear(self, instance_id: str, identity: str) -> None:
        _check(instance_id)
        await self._client.delete(self._key(instance_id, identity))

    async def get(self, instance_id: str, identities: list[str]) -> dict[str, str]:
        _check(instance_id)
        if not identities:
            return {}
        values = await self._client.mget([self._key(instance_id, identity) for identity in identities])
        result: dict[str, str] = {}
        for identity, value in zip(identities, values, strict=True):
            status = value.decode() if isinstance(value, bytes) else value
            result[identity] = status if status in _STATUSES else "offline"
        return result
