"""Presence: in memory and in a real Redis, with the same expiry rules."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gbmedia.messaging.presence import MemoryPresence, Presence, RedisPresence


async def wait_for_status(presence: Presence, instance: str, identity: str, status: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (await presence.get(instance, [identity]))[identity] != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{identity} never became {status}")
        await asyncio.sleep(0.01)


@pytest.fixture
def prefix() -> str:
    return f"gbmedia-test:presence:{uuid.uuid4().hex}:"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for memory, the Redis URL for Redis."""
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
async def presence(backend: str | None, prefix: str) -> AsyncIterator[Presence]:
    if backend is None:
        yield MemoryPresence()
        return
    client = aioredis.from_url(backend)
    yield RedisPresence(client, prefix=prefix)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def instance() -> str:
    return str(uuid.uuid4())


async def test_set_then_get(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 30)
    await presence.set(instance, "bob", "away", 30)
    assert await presence.get(instance, ["alice", "bob"]) == {"alice": "online", "bob": "away"}


async def test_unknown_identities_are_offline(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 30)
    assert await presence.get(instance, ["alice", "nobody", "ghost"]) == {
        "alice": "online",
        "nobody": "offline",
        "ghost": "offline",
    }
    assert await presence.get(instance, []) == {}


async def test_set_replaces_status_and_ttl(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 0.2)
    await presence.set(instance, "alice", "away", 30)
    assert (await presence.get(instance, ["alice"]))["alice"] == "away"
    await asyncio.sleep(0.3)  # the first, shorter TTL no longer applies
    assert (await presence.get(instance, ["alice"]))["alice"] == "away"


async def test_entries_expire_after_ttl(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 0.2)
    await presence.set(instance, "bob", "online", 30)
    await wait_for_status(presence, instance, "alice", "offline")
    assert (await presence.get(instance, ["bob"]))["bob"] == "online"


async def test_refresh_keeps_someone_online(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 0.5)
    for _ in range(12):  # a live connection refreshes well within its TTL, for longer than one TTL
        await asyncio.sleep(0.05)
        await presence.set(instance, "alice", "online", 0.5)
        assert (await presence.get(instance, ["alice"]))["alice"] == "online"


async def test_clear(presence: Presence, instance: str):
    await presence.set(instance, "alice", "online", 30)
    await presence.set(instance, "bob", "online", 30)
    await presence.clear(instance, "alice")
    await presence.clear(instance, "never-set")  # harmless
    assert await presence.get(instance, ["alice", "bob"]) == {"alice": "offline", "bob": "online"}


async def test_instances_are_separate(presence: Presence, instance: str):
    other = str(uuid.uuid4())
    await presence.set(instance, "alice", "online", 30)
    await presence.set(other, "alice", "away", 30)
    assert await presence.get(instance, ["alice"]) == {"alice": "online"}
    assert await presence.get(other, ["alice"]) == {"alice": "away"}
    await presence.clear(other, "alice")
    assert await presence.get(instance, ["alice"]) == {"alice": "online"}
    assert await presence.get(str(uuid.uuid4()), ["alice"]) == {"alice": "offline"}


async def test_identities_with_separators_do_not_collide(presence: Presence, instance: str):
    await presence.set(instance, "a:b", "online", 30)
    assert await presence.get(instance, ["a:b", "a", "b", "a:b:"]) == {
        "a:b": "online",
        "a": "offline",
        "b": "offline",
        "a:b:": "offline",
    }


async def test_rejects_bad_arguments(presence: Presence, instance: str):
    with pytest.raises(ValueError):
        await presence.set(instance, "alice", "busy", 30)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await presence.set(instance, "alice", "online", 0)
    with pytest.raises(ValueError):
        await presence.set(instance, "alice", "online", -1)
    for bad in ("", "{x}", "a}b"):
        with pytest.raises(ValueError):
            await presence.get(bad, ["alice"])
        with pytest.raises(ValueError):
            await presence.clear(bad, "alice")
    assert await presence.get(instance, ["alice"]) == {"alice": "offline"}


# --- implementation details ----------------------------------------------------------------


async def test_memory_sweeps_expired_entries():
    presence = MemoryPresence()
    instance = str(uuid.uuid4())
    for i in range(1000):
        await presence.set(instance, f"gone{i}", "online", 0.01)
    await asyncio.sleep(0.05)
    for i in range(100):
        await presence.set(instance, f"live{i}", "online", 30)
    assert len(presence._entries) < 200  # the expired thousand were forgotten unasked
    statuses = await presence.get(instance, ["live0", "gone0"])
    assert statuses == {"live0": "online", "gone0": "offline"}


@pytest.mark.redis
async def test_redis_keys_carry_an_expiry(redis_url: str, prefix: str, instance: str):
    client = aioredis.from_url(redis_url)
    try:
        presence = RedisPresence(client, prefix=prefix)
        await presence.set(instance, "alice", "online", 5)
        key = f"{prefix}{{{instance}}}:alice"
        assert await client.get(key) == b"online"
        assert 0 < await client.pttl(key) <= 5000
        await presence.set(instance, "bob", "away", 0.0001)  # rounds up to 1 ms, never "no expiry"
        await wait_for_status(presence, instance, "bob", "offline")
    finally:
        await client.delete(f"{prefix}{{{instance}}}:alice")
        await client.aclose()


@pytest.mark.redis
async def test_redis_nodes_share_presence(redis_url: str, prefix: str, instance: str):
    client_a, client_b = aioredis.from_url(redis_url), aioredis.from_url(redis_url, decode_responses=True)
    try:
        node_a, node_b = RedisPresence(client_a, prefix=prefix), RedisPresence(client_b, prefix=prefix)
        await node_a.set(instance, "alice", "away", 30)
        assert await node_b.get(instance, ["alice", "bob"]) == {"alice": "away", "bob": "offline"}
        await node_b.clear(instance, "alice")
        assert await node_a.get(instance, ["alice"]) == {"alice": "offline"}
    finally:
        await client_a.aclose()
        await client_b.aclose()
