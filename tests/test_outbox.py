"""The transactional outbox against real PostgreSQL and a real Kafka-compatible broker (tansu)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from gbmedia import waits
from gbmedia.db.pool import _init_connection
from gbmedia.outbox import (
    EVENT_ID_HEADER,
    TOPICS,
    EventDeduper,
    OutboxRelay,
    OutboxTrimmer,
    _Periodic,
    enqueue,
    event_id_of,
    kafka_topic,
)

DEADLINE = 60.0  # seconds: generous, only so that a broken relay fails instead of hanging


async def eventually(check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def make_relay(pool: asyncpg.Pool, bootstrap: str, **options: Any) -> OutboxRelay:
    values: dict[str, Any] = {"request_timeout": 2.0, "send_timeout": 5.0, "backoff_max": 0.3}
    values.update(options)
    return OutboxRelay(pool, bootstrap, **values)


@pytest.fixture
async def relay(pool: asyncpg.Pool, kafka_bootstrap: str) -> AsyncIterator[OutboxRelay]:
    r = make_relay(pool, kafka_bootstrap)
    r.start()
    await eventually(async_true(lambda: r.connected), "the relay to connect")
    yield r
    await r.stop()


def async_true(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def unsent(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


async def all_sent(pool: asyncpg.Pool) -> bool:
    return await unsent(pool) == 0


async def enqueue_events(
    pool: asyncpg.Pool, events: Iterable[tuple[str, str, dict[str, Any]]], per_transaction: int = 10
) -> list[uuid.UUID]:
    """Enqueue (topic, key, payload) events, ``per_transaction`` to a committed transaction."""
    pending = list(events)
    ids: list[uuid.UUID] = []
    for start in range(0, len(pending), per_transaction):
        async with pool.acquire() as conn, conn.transaction():
            for topic, key, payload in pending[start : start + per_transaction]:
                ids.append(await enqueue(conn, topic, key, payload))
    return ids


async def read_topics(bootstrap: str, topics: Iterable[str], partitions: int = 8) -> list[ConsumerRecord]:
    """Everything in ``topics``, read by a consumer group from the earliest offset to the end."""
    names = sorted(kafka_topic(t) for t in topics)
    consumer = AIOKafkaConsumer(
        *names,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=1000,
        heartbeat_interval_ms=200,
        rebalance_timeout_ms=1000,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        end = time.monotonic() + DEADLINE
        while len(consumer.assignment()) < partitions * len(names):
            assert time.monotonic() < end, f"partitions never assigned: {consumer.assignment()}"
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(batch)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while True:
            behind = [tp for tp, offset in ends.items() if await consumer.position(tp) < offset]
            if not behind:
                return records
            assert time.monotonic() < end, f"could not read to the end of {behind}"
            for batch in (await consumer.getmany(*behind, timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()


def deduped(records: Iterable[ConsumerRecord]) -> list[ConsumerRecord]:
    deduper = EventDeduper()
    return [r for r in records if not deduper.seen(event_id_of(r))]


# -- enqueue ----------------------------------------------------------------------------------


async def test_enqueue_stores_the_payload_with_its_event_id(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        conversation = uuid.uuid4()
        at = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        event_id = await enqueue(
            conn,
            "chat.messages",
            str(conversation),
            {"conversation_id": conversation, "text": "héllo", "seq": 1, "at": at},
        )
    row = await pool.fetchrow("SELECT * FROM outbox")
    assert row["event_id"] == event_id
    assert row["topic"] == "chat.messages" and row["key"] == str(conversation) and row["sent_at"] is None
    assert row["payload"] == {
        "conversation_id": str(conversation),
        "text": "héllo",
        "seq": 1,
        "at": "2025-01-02T03:04:05+00:00",
        "event_id": str(event_id),
    }


async def test_invalid_topic_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for topic in ["chat.Messages", "chat.unknown", "other.topic", "", "chat messages", "gbmedia.chat.messages"]:
            with pytest.raises(ValueError, match="topic"):
                await enqueue(conn, topic, "k", {"a": 1})
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    with pytest.raises(ValueError, match="prefix"):
        OutboxRelay(pool, "127.0.0.1:9", topic_prefix="Bad Prefix")


async def test_enqueue_refuses_bad_input(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await enqueue(conn, "chat.messages", "k", {"a": 1})
        async with conn.transaction():
            with pytest.raises(ValueError, match="event_id"):
                await enqueue(conn, "chat.messages", "k", {"event_id": "mine"})
            with pytest.raises(ValueError, match="key"):
                await enqueue(conn, "chat.messages", "", {"a": 1})
            with pytest.raises(TypeError):
                await enqueue(conn, "chat.messages", "k", ["not", "an", "object"])  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await enqueue(conn, "chat.messages", "k", {"a": object()})
            with pytest.raises(ValueError, match="larger"):
                await enqueue(conn, "chat.messages", "k", {"a": "x" * (600 * 1024)})
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_enqueue_works_without_the_pools_json_codec(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)  # a bare connection: jsonb as text
    try:
        async with conn.transaction():
            event_id = await enqueue(conn, "chat.receipts", "k", {"n": 1})
        stored = json.loads(await conn.fetchval("SELECT payload::text FROM outbox"))
    finally:
        await conn.close()
    assert stored == {"n": 1, "event_id": str(event_id)}


# -- relay ------------------------------------------------------------------------------------


async def test_committed_rows_are_published_and_marked_sent(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_bootstrap: str
) -> None:
    ids = await enqueue_events(
        pool,
        [
            ("chat.messages", "conv-1", {"text": "one"}),
            ("chat.receipts", "conv-1", {"read_seq": 1}),
            ("chat.conversations", "conv-2", {"name": "ünïcode"}),
        ],
    )
    await eventually(lambda: all_sent(pool), "rows marked sent")
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 3
    records = await read_topics(kafka_bootstrap, TOPICS)
    assert sorted(event_id_of(r) for r in records) == sorted(ids)
    by_id = {event_id_of(r): r for r in records}
    message = by_id[ids[0]]
    assert message.topic == "gbmedia.chat.messages" and message.key == b"conv-1"
    assert dict(message.headers)[EVENT_ID_HEADER] == str(ids[0]).encode()
    assert json.loads(message.value) == {"text": "one", "event_id": str(ids[0])}
    assert json.loads(by_id[ids[2]].value)["name"] == "ünïcode"
    assert by_id[ids[2]].topic == "gbmedia.chat.conversations"
    assert relay.sent == 3 and relay.failed_batches == 0
    await eventually(async_true(lambda: relay.lag == 0.0), "lag back to zero")
    figures = {s.name: s.value for s in relay.samples()}
    assert figures["gbmedia_outbox_sent_total"] == 3 and figures["gbmedia_outbox_connected"] == 1.0
    assert figures["gbmedia_outbox_lag_seconds"] == 0.0


async def test_a_change_listener_wakes_the_relay(pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    relay = make_relay(pool, kafka_bootstrap, idle_interval=3600.0)  # only a wake-up can make it poll
    relay.start()
    try:
        await eventually(async_true(lambda: relay.connected), "the relay to connect")
        await asyncio.sleep(0.1)  # let it settle into its idle wait
        await enqueue_events(pool, [("chat.messages", "k", {"n": 1})])
        await relay.changed("message", {}, None)
        await eventually(lambda: all_sent(pool), "the row sent after the wake-up")
    finally:
        await relay.stop()


async def test_rolled_back_transaction_publishes_nothing(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_bootstrap: str
) -> None:
    rolled_back: list[uuid.UUID] = []
    with pytest.raises(ZeroDivisionError):
        async with pool.acquire() as conn, conn.transaction():
            rolled_back.append(await enqueue(conn, "chat.messages", "k", {"n": 1}))
            rolled_back.append(await enqueue(conn, "chat.messages", "k", {"n": 2}))
            1 / 0  # noqa: B018  (the change fails after its events were written)
    [marker] = await enqueue_events(pool, [("chat.messages", "k", {"n": 3})])
    await eventually(lambda: all_sent(pool), "the marker sent")
    records = await read_topics(kafka_bootstrap, ["chat.messages"])
    assert [event_id_of(r) for r in records] == [marker]
    assert await pool.fetchval("SELECT array_agg(event_id) FROM outbox") == [marker]
    assert not set(rolled_back) & {event_id_of(r) for r in records}


def check_order(records: list[ConsumerRecord], expected: dict[str, list[int]]) -> None:
    got: dict[str, list[int]] = defaultdict(list)
    for record in records:
        payload = json.loads(record.value)
        assert record.key == payload["key"].encode()
        got[payload["key"]].append(payload["n"])
    assert got == expected  # every event exactly once, in enqueue order per key


async def test_every_event_once_in_order_per_key_across_partitions(pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    relay = make_relay(pool, kafka_bootstrap, batch_size=16)  # many batches
    relay.start()
    try:
        keys = [f"conversation-{i}" for i in range(5)]
        events = [("chat.messages", keys[n % 5], {"key": keys[n % 5], "n": n}) for n in range(200)]
        ids = await enqueue_events(pool, events, per_transaction=7)
        await eventually(lambda: all_sent(pool), "200 rows sent")
        assert relay.sent == 200 and relay.batches >= 200 // 16
    finally:
        await relay.stop()
    records = await read_topics(kafka_bootstrap, ["chat.messages"])
    unique = deduped(records)
    assert {event_id_of(r) for r in unique} == set(ids) and len(unique) == 200
    check_order(unique, {k: [n for n in range(200) if n % 5 == i] for i, k in enumerate(keys)})
    partitions = {r.partition for r in unique}
    assert len(partitions) >= 2, partitions
    for key in keys:  # one key, one partition
        assert len({r.partition for r in unique if r.key == key.encode()}) == 1


async def test_relay_rides_out_a_broker_outage(pool: asyncpg.Pool, tansu_broker: Any) -> None:
    relay = make_relay(pool, tansu_broker.bootstrap)
    relay.start()
    try:
        await eventually(async_true(lambda: relay.connected), "the relay to connect")
        await tansu_broker.kill()
        ids = await enqueue_events(
            pool, [("chat.messages", f"k{n % 3}", {"key": f"k{n % 3}", "n": n}) for n in range(30)]
        )
        await eventually(
            async_true(lambda: relay.failed_batches + relay.connect_failures >= 2), "the relay to notice the outage"
        )
        assert await unsent(pool) == 30
        assert relay.lag > 0 and relay.last_error
        await tansu_broker.start()  # same port, empty: the relay creates its topics again
        await eventually(lambda: all_sent(pool), "the backlog sent after the broker came back")
        await eventually(async_true(lambda: relay.lag == 0.0), "lag back to zero")
    finally:
        await relay.stop()
    unique = deduped(await read_topics(tansu_broker.bootstrap, ["chat.messages"]))
    assert sorted(event_id_of(r) for r in unique) == sorted(ids)
    check_order(unique, {f"k{i}": [n for n in range(30) if n % 3 == i] for i in range(3)})


async def test_relay_stopped_during_an_outage_keeps_the_rows(pool: asyncpg.Pool, tansu_broker: Any) -> None:
    relay = make_relay(pool, tansu_broker.bootstrap)
    relay.start()
    await eventually(async_true(lambda: relay.connected), "the relay to connect")
    await tansu_broker.kill()
    ids = await enqueue_events(pool, [("chat.receipts", "k", {"key": "k", "n": n}) for n in range(12)])
    await eventually(async_true(lambda: relay.failed_batches >= 1), "a failed batch")
    await relay.stop()  # while the broker is away
    assert not relay.running and not relay.connected
    assert await unsent(pool) == 12

    await tansu_broker.start()
    again = make_relay(pool, tansu_broker.bootstrap)
    again.start()
    try:
        await eventually(lambda: all_sent(pool), "the rows sent by the restarted relay")
    finally:
        await again.stop()
    unique = deduped(await read_topics(tansu_broker.bootstrap, ["chat.receipts"]))
    assert [event_id_of(r) for r in unique] == ids  # one key: the enqueue order


class SlowRelay(OutboxRelay):
    """A relay that dawdles before producing: wide windows for the other relay to overtake it."""

    async def _produce(self, producer: Any, rows: Any) -> Any:
        await asyncio.sleep(0.05)
        return await super()._produce(producer, rows)


async def test_two_relays_never_both_send_a_row(pool: asyncpg.Pool, database_url: str, kafka_bootstrap: str) -> None:
    other_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=_init_connection)
    first = SlowRelay(pool, kafka_bootstrap, batch_size=20, request_timeout=2.0, send_timeout=5.0)
    second = make_relay(other_pool, kafka_bootstrap, batch_size=20, client_id="gbmedia-outbox-2")
    keys = [f"c{i}" for i in range(6)]
    events = [("chat.messages", keys[n % 6], {"key": keys[n % 6], "n": n}) for n in range(300)]
    # A backlog first, so that both relays start on it at once...
    ids = await enqueue_events(pool, events[:200])
    first.start()
    second.start()
    try:
        # ...then more through both pools while both relays poll, so they compete for every batch.
        for i in range(200, 300, 25):
            ids += await enqueue_events(pool if i % 50 else other_pool, events[i : i + 25], per_transaction=5)
        await eventually(lambda: all_sent(pool), "300 rows sent")
        assert first.sent + second.sent == 300
        assert first.failed_batches == second.failed_batches == 0
    finally:
        await first.stop()
        await second.stop()
        await other_pool.close()
    records = await read_topics(kafka_bootstrap, ["chat.messages"])
    assert len(records) == 300  # healthy relays: no duplicates at all
    assert sorted(event_id_of(r) for r in records) == sorted(ids)
    check_order(records, {k: [n for n in range(300) if n % 6 == i] for i, k in enumerate(keys)})


class CrashingRelay(OutboxRelay):
    """Loses its first batch's commit after the broker acknowledged it (a crash in between)."""

    crashes = 1

    async def _produce(self, producer: Any, rows: Any) -> Any:
        result = await super()._produce(producer, rows)
        if self.crashes:
            self.crashes -= 1
            raise ConnectionResetError("crashed between the acks and the commit")
        return result


async def test_a_crash_before_the_commit_resends_and_consumers_dedupe(pool: asyncpg.Pool, kafka_bootstrap: str) -> None:
    ids = await enqueue_events(pool, [("chat.messages", f"k{n % 2}", {"key": f"k{n % 2}", "n": n}) for n in range(10)])
    relay = CrashingRelay(pool, kafka_bootstrap, batch_size=4, request_timeout=2.0, backoff_max=0.3)
    relay.start()
    try:
        await eventually(lambda: all_sent(pool), "rows sent after the crash")
    finally:
        await relay.stop()
    assert relay.sent == 10 and relay.last_error and "crashed" in relay.last_error
    records = await read_topics(kafka_bootstrap, ["chat.messages"])
    assert len(records) == 14  # the first batch of 4 went out twice: at least once
    unique = deduped(records)
    assert sorted(event_id_of(r) for r in unique) == sorted(ids)
    check_order(unique, {"k0": [0, 2, 4, 6, 8], "k1": [1, 3, 5, 7, 9]})


async def test_relay_deletes_sent_rows_after_the_retention(pool: asyncpg.Pool) -> None:
    ids = await enqueue_events(pool, [("chat.messages", "k", {"n": n}) for n in range(4)])
    await pool.execute(
        "UPDATE outbox SET sent_at = now() - interval '2 hours' WHERE event_id = ANY($1::uuid[])", ids[:2]
    )
    await pool.execute("UPDATE outbox SET sent_at = now() WHERE event_id = $1", ids[2])
    await pool.execute("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE event_id = $1", ids[3])
    relay = OutboxRelay(pool, "127.0.0.1:9")  # never connects: delete_sent needs only the database
    assert await relay.delete_sent() == 2
    assert relay.deleted == 2
    left = await pool.fetch("SELECT event_id FROM outbox ORDER BY id")
    assert [r["event_id"] for r in left] == ids[2:]  # recently sent, and old but unsent, stay


# -- without Kafka ----------------------------------------------------------------------------


async def test_trimmer_deletes_old_rows_and_keeps_new_ones(pool: asyncpg.Pool) -> None:
    ids = await enqueue_events(pool, [("chat.messages", "k", {"n": n}) for n in range(6)])
    await pool.execute(
        "UPDATE outbox SET created_at = now() - interval '61 minutes' WHERE event_id = ANY($1::uuid[])", ids[:3]
    )
    await pool.execute("UPDATE outbox SET sent_at = now() - interval '2 hours' WHERE event_id = $1", ids[3])
    trimmer = OutboxTrimmer(pool)
    assert await trimmer.trim() == 3
    assert trimmer.samples()[0].value == 3
    assert [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY id")] == ids[3:]

    # In the background too.
    await pool.execute("UPDATE outbox SET created_at = now() - interval '2 hours' WHERE event_id = $1", ids[4])
    background = OutboxTrimmer(pool, interval=0.05)
    background.start()
    try:

        async def trimmed() -> bool:
            return await pool.fetchval("SELECT count(*) FROM outbox") == 2

        await eventually(trimmed, "the background trim")
    finally:
        await background.stop()
    assert not background.running
    assert [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY id")] == [ids[3], ids[5]]


# -- consumers --------------------------------------------------------------------------------


def test_event_id_of_reads_the_header_else_the_value() -> None:
    header_id, value_id = uuid.uuid4(), uuid.uuid4()
    with_header = SimpleNamespace(
        headers=((EVENT_ID_HEADER, str(header_id).encode()),), value=json.dumps({"event_id": str(value_id)}).encode()
    )
    assert event_id_of(with_header) == header_id
    assert event_id_of(SimpleNamespace(headers=(), value=json.dumps({"event_id": str(value_id)}).encode())) == value_id


def test_event_deduper_is_a_bounded_lru() -> None:
    deduper = EventDeduper(capacity=3)
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    assert not deduper.seen(a)
    assert deduper.seen(a) and deduper.seen(str(a)) and deduper.seen(str(a).encode())
    assert not deduper.seen(b) and not deduper.seen(c)
    assert deduper.seen(a)  # refreshed: b is now the oldest
    assert not deduper.seen(d)  # evicts b
    assert len(deduper) == 3
    assert deduper.seen(a) and deduper.seen(c) and deduper.seen(d)
    assert not deduper.seen(b)  # forgotten, so new again
    with pytest.raises(ValueError):
        deduper.seen("not-a-uuid")
    with pytest.raises(ValueError):
        EventDeduper(capacity=0)


class Stubborn(_Periodic):
    """A loop whose first cancellation is swallowed below it, as Python 3.11's ``asyncio.wait_for`` does
    when the cancellation lands in the loop turn its wait finishes (CPython gh-86296)."""

    _task_name = "stubborn"

    def __init__(self) -> None:
        self.swallowed = 0

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1  # and back to waiting, as the relay went back to waiting for rows


async def test_a_loop_that_swallows_its_cancellation_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "CANCEL_RETRY_SECONDS", 0.05)
    loop = Stubborn()
    loop.start()
    await asyncio.sleep(0)
    assert loop.running
    async with asyncio.timeout(10) as limit:  # with one cancellation only, this stop waited forever
        await loop.stop()
    assert not limit.expired()  # stopped by itself, not by this test's limit cancelling it
    assert loop.swallowed == 1 and not loop.running
