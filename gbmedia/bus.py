"""Publish/subscribe between the server processes of a cluster.

Chat delivery, room events and similar fan-out go to every node, and each node hands
them to its own WebSockets. A cluster uses Redis pub/sub (``RedisBus``); a single
node without Redis uses ``MemoryBus``, which behaves the same in-process.

Delivery is at most once, like Redis pub/sub itself: a message published while a
node's connection is down never reaches that node. Anything that must not be lost
(chat messages, receipts) lives in PostgreSQL; the bus only says "look now".

Every subscription has its own queue and task, so a slow or failing handler delays
only itself, and each handler sees one channel's messages in the order a publisher
sent them. A node also receives what it publishes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class Subscription(Protocol):
    async def close(self) -> None: ...


class Bus(Protocol):
    # False: every subscriber lives in this process (a single node), so what a node already handed
    # its own sessions needs no publishing at all.
    spans_nodes: bool

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> Subscription: ...

    async def close(self) -> None: ...


def _encode(message: dict[str, Any]) -> str:
    """JSON on both implementations, so a message that works on one node works in a cluster."""
    if not isinstance(message, dict):
        raise TypeError(f"bus messages are dicts, not {type(message).__name__}")
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Subscription:
    """One handler on one channel, fed through its own bounded queue by its own task."""

    def __init__(
        self, channel: str, handler: Handler, release: Callable[[_Subscription], Awaitable[None]], max_pending: int
    ) -> None:
        self.channel = channel
        self.dropped = 0  # messages lost because the handler fell max_pending behind
        self._handler = handler
        self._release = release
        self._closed = False
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_pending)
        self._task = asyncio.create_task(self._run(), name=f"gbmedia.bus.subscription:{channel}")

    def deliver(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            # A stuck handler must not grow memory without bound; say so rarely, not per message.
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "bus subscriber is falling behind; dropping messages",
                    extra={"channel": self.channel, "dropped": self.dropped, "max_pending": self._queue.maxsize},
                )

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            if self._closed:
                return
            try:
                await self._handler(message)
            except Exception:
                log.exception(
                    "bus handler failed",
                    extra={
                        "channel": self.channel,
                        "handler": getattr(self._handler, "__qualname__", repr(self._handler)),
                    },
                )

    def abort(self) -> asyncio.Task[None] | None:
        """Stop without releasing; returns the task to wait for (None when it is the caller's own)."""
        self._closed = True
        self._task.cancel()
        return None if self._task is asyncio.current_task() else self._task

    async def close(self) -> None:
        """Stop delivery; safe to call twice, and from inside the handler itself."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._release(self)
        finally:
            task = self.abort()
            if task is not None:
                await asyncio.wait([task])


class _Hub:
    """The subscriptions of one bus, by channel; shared by both implementations."""

    def __init__(self, max_pending: int) -> None:
        self._subs: dict[str, list[_Subscription]] = {}
        self._max_pending = max_pending
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")

    def _add(self, channel: str, handler: Handler) -> _Subscription:
        sub = _Subscription(channel, handler, self._release, self._max_pending)
        self._subs.setdefault(channel, []).append(sub)
        return sub

    def _remove(self, sub: _Subscription) -> bool:
        """Forget ``sub``; True when its channel has no subscriber left."""
        subs = self._subs.get(sub.channel)
        if subs is None or sub not in subs:
            return False
        subs.remove(sub)
        if subs:
            return False
        del self._subs[sub.channel]
        return True

    async def _release(self, sub: _Subscription) -> None:
        self._remove(sub)

    def _dispatch(self, channel: str, message: dict[str, Any]) -> None:
        for sub in self._subs.get(channel, ()):
            sub.deliver(message)

    async def _close_subscriptions(self) -> None:
        subs = [sub for channel_subs in self._subs.values() for sub in channel_subs]
        self._subs.clear()
        tasks = [task for task in (sub.abort() for sub in subs) if task is not None]
        if tasks:
            await asyncio.wait(tasks)


class MemoryBus(_Hub):
    """In-process bus for a single node. Messages go through JSON as they would through Redis."""

    spans_nodes = False

    def __init__(self, *, max_pending: int = 10_000) -> None:
        super().__init__(max_pending)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._check_open()
        self._dispatch(channel, json.loads(_encode(message)))

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        self._check_open()
        return self._add(channel, handler)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_subscriptions()


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


class RedisBus(_Hub):
    """Redis pub/sub over one pubsub connection per bus, read by one task.

    ``subscribe`` returns once Redis has confirmed the channel, so a message published
    after it returns (from any node) is delivered. If Redis is unreachable it waits
    for the reconnect; bound it with ``asyncio.timeout`` where that matters.

    When the connection drops (or stops answering pings) the reader opens a new one
    with exponential backoff and subscribes every channel again; messages published
    in between are lost. The caller owns ``client`` and closes it after the bus.
    """

    spans_nodes = True

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "gbmedia:bus:",
        *,
        max_pending: int = 10_000,
        ping_interval: float = 15.0,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
    ) -> None:
        super().__init__(max_pending)
        self._client = client
        self._prefix = prefix
        self._ping_interval = ping_interval
        self._reconnect_min, self._reconnect_max = reconnect_min, reconnect_max
        self._delay = reconnect_min
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()  # one command at a time on the pubsub connection
        self._reader: asyncio.Task[None] | None = None
        self._confirmations: dict[str, asyncio.Event] = {}  # channels sent SUBSCRIBE, not yet confirmed

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Raises Redis' own errors when it is unreachable: the caller decides what that means."""
        self._check_open()
        await self._client.publish(self._prefix + channel, _encode(message))

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        self._check_open()
        name = self._prefix + channel
        first = name not in self._subs
        sub = self._add(name, handler)
        try:
            if first:
                self._confirmations[name] = asyncio.Event()
                if self._reader is None:
                    self._reader = asyncio.create_task(self._run(), name="gbmedia.bus.reader")
                await self._send("subscribe", name)
            confirmed = self._confirmations.get(name)
            if confirmed is not None:
                await confirmed.wait()
                self._check_open()
        except BaseException:
            await sub.close()
            raise
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for confirmed in self._confirmations.values():
            confirmed.set()  # waiting subscribers wake up and see the bus closed
        self._confirmations.clear()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        await self._close_subscriptions()
        await self._drop_pubsub()

    async def _release(self, sub: _Subscription) -> None:
        if self._remove(sub) and not self._closed:
            confirmed = self._confirmations.pop(sub.channel, None)
            if confirmed is not None:
                confirmed.set()
            await self._send("unsubscribe", sub.channel)

    async def _send(self, command: str, name: str) -> None:
        async with self._lock:
            # Re-checked under the lock: a subscribe and an unsubscribe may have crossed.
            if self._pubsub is None or (name in self._subs) != (command == "subscribe"):
                return  # with no connection, the reader subscribes every channel when it connects
            # A broken connection fails here and in the reader, which reconnects and resubscribes.
            with contextlib.suppress(Exception):
                if command == "subscribe":
                    await self._pubsub.subscribe(name)
                else:
                    await self._pubsub.unsubscribe(name)

    async def _run(self) -> None:
        """The reader task: connect, read, and on any failure reconnect after a backoff."""
        lost = False
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    if lost:
                        log.info("bus reconnected", extra={"channels": len(self._subs)})
                        lost = False
                await self._read(self._pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                lost = True
                delay = self._delay * random.uniform(0.5, 1.0)  # jitter: nodes don't reconnect in step
                self._delay = min(self._delay * 2, self._reconnect_max)
                log.warning(
                    "bus connection lost; reconnecting", extra={"error": repr(exc), "retry_in": round(delay, 3)}
                )
                await self._drop_pubsub()
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        async with self._lock:
            self._pubsub = self._client.pubsub()
            await self._pubsub.connect()
            if self._subs:
                await self._pubsub.subscribe(*self._subs)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # a broken connection is gone either way
                await pubsub.aclose()

    async def _read(self, pubsub: PubSub | None) -> None:
        assert pubsub is not None
        awaiting_pong = False
        while True:
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is None:
                # Quiet for a whole interval: a half-open TCP connection would stay quiet forever.
                if awaiting_pong:
                    raise ConnectionError("no reply from Redis within ping_interval")
                async with self._lock:
                    await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            self._delay = self._reconnect_min
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = _text(message["channel"])
        if kind == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None:
                confirmed.set()
        elif kind == "message" and channel in self._subs:
            try:
                data = json.loads(message["data"])
            except ValueError:
                data = None
            if not isinstance(data, dict):
                log.warning("bus message is not a JSON object; dropped", extra={"channel": channel})
                return
            self._dispatch(channel, data)
