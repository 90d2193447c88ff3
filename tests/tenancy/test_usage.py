"""Usage events and the meter against a real PostgreSQL: idempotent writes, the hourly
rollup, reports per hour, day and period, and ticks that survive a crash without
counting a minute twice."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from gbmedia.outbox import OutboxRelay, event_id_of
from gbmedia.tenancy import usage
from gbmedia.tenancy.metering import Usage, UsageMeter
from gbmedia.tenancy.usage import UsageEvent
from tests.test_bus import wait_until
from tests.test_outbox import all_sent, async_true, eventually, make_relay, read_topics

T0 = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def _customer(pool: asyncpg.Pool, tier: str = "starter") -> tuple[uuid.UUID, uuid.UUID]:
    cid = await pool.fetchval(
        "INSERT INTO customers (name, subscription_tier, max_instances) VALUES ('c', $1, 3) RETURNING id", tier
    )
    iid = await pool.fetchval(
        "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, 'i', 0, 'r') RETURNING id", cid
    )
    return cid, iid


def _event(cid: uuid.UUID, iid: uuid.UUID | None, kind: str, quantity: str, key: str, at: dt.datetime) -> UsageEvent:
    return UsageEvent(cid, iid, kind, Decimal(quantity), key, at)


async def test_an_event_counts_once_however_often_it_is_written(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    event = _event(cid, iid, "publish_minutes", "1.5", "s1:0", T0)
    assert await usage.record(pool, [event]) == 1
    assert await usage.record(pool, [event, _event(cid, iid, "messages", "3", "m:0", T0)]) == 1
    assert await usage.record(pool, [event]) == 0
    rows = await pool.fetch("SELECT kind, quantity FROM usage_hourly WHERE customer_id = $1 ORDER BY kind", cid)
    assert [(r["kind"], r["quantity"]) for r in rows] == [("messages", 3), ("publish_minutes", Decimal("1.5"))]
    outbox = await pool.fetch("SELECT event_id, topic, key, payload FROM outbox ORDER BY id")
    assert [(r["topic"], r["key"]) for r in outbox] == [("usage.events", str(cid))] * 2
    assert outbox[0]["event_id"] == usage.event_id("s1:0")
    payload = outbox[0]["payload"] if isinstance(outbox[0]["payload"], dict) else json.loads(outbox[0]["payload"])
    assert payload["kind"] == "publish_minutes" and payload["event_id"] == str(usage.event_id("s1:0"))


async def test_bad_events_are_refused_before_the_database():
    cid = uuid.uuid4()
    with pytest.raises(ValueError, match="unknown usage kind"):
        _event(cid, None, "minutes", "1", "k", T0)
    with pytest.raises(ValueError, match="negative"):
        _event(cid, None, "messages", "-1", "k", T0)
    with pytest.raises(ValueError, match="channel"):
        UsageEvent(cid, None, "viewer_minutes", Decimal(1), "k", T0, channel="fax")
    with pytest.raises(ValueError, match="distinct keys"):
        await usage.record(None, [_event(cid, None, "messages", "1", "k", T0)] * 2)  # type: ignore[arg-type]


async def test_reports_sum_per_hour_day_and_period_and_storage_is_a_peak(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    _, other = await _customer(pool)
    await pool.execute("UPDATE instances SET customer_id = $1, name = $3 WHERE id = $2", cid, other, "j")
    events = [
        _event(cid, iid, "subscribe_minutes", "2", "a", T0 + dt.timedelta(minutes=5)),
        _event(cid, iid, "subscribe_minutes", "3", "b", T0 + dt.timedelta(minutes=50)),
        _event(cid, other, "subscribe_minutes", "4", "c", T0 + dt.timedelta(hours=1, minutes=1)),
        _event(cid, iid, "bytes_out", "1000", "d", T0 + dt.timedelta(hours=3)),  # 2026-12-01 01:00
        _event(cid, None, "storage_bytes", "500", "s1", T0),
        _event(cid, None, "storage_bytes", "700", "s2", T0 + dt.timedelta(hours=1)),
        _event(cid, None, "storage_bytes", "600", "s3", T0 + dt.timedelta(hours=3)),
    ]
    await usage.record(pool, events)
    hours = await usage.report(pool, cid, T0, T0 + dt.timedelta(hours=4), "hour")
    assert [(b.start.hour, b.totals) for b in hours] == [
        (22, {"subscribe_minutes": 5.0, "storage_bytes": 500}),
        (23, {"subscribe_minutes": 4.0, "storage_bytes": 700}),
        (1, {"bytes_out": 1000, "storage_bytes": 600}),
    ]
    assert hours[0].instances == {str(iid): {"subscribe_minutes": 5.0}}
    assert hours[1].instances == {str(other): {"subscribe_minutes": 4.0}}
    days = await usage.report(pool, cid, T0 - dt.timedelta(hours=22), T0 + dt.timedelta(days=1), "day")
    assert [(b.start.day, b.end.day, b.totals) for b in days] == [
        (30, 1, {"subscribe_minutes": 9.0, "storage_bytes": 700}),
        (1, 2, {"bytes_out": 1000, "storage_bytes": 600}),
    ]
    periods = await usage.report(pool, cid, T0 - dt.timedelta(days=40), T0 + dt.timedelta(days=40), "period")
    assert [(b.start.month, b.end.month) for b in periods] == [(11, 12), (12, 1)]
    only = await usage.report(pool, cid, T0, T0 + dt.timedelta(hours=4), "period", instance_id=other)
    assert [b.totals for b in only] == [{"subscribe_minutes": 4.0}]
    totals = await usage.period_totals(pool, cid, *usage.period_bounds(T0))
    assert totals == {"subscribe_minutes": Decimal(9), "storage_bytes": Decimal(700)}
    assert usage.period_bounds(dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)) == (
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )


async def test_storage_snapshots_once_an_hour_whichever_node_takes_them(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    room = await pool.fetchval(
        "INSERT INTO rooms (customer_id, instance_id, name, max_participants) VALUES ($1, $2, 'r', 5) RETURNING id",
        cid,
        iid,
    )
    await pool.execute(
        """INSERT INTO recordings (customer_id, instance_id, room_id, kinds, status, storage, node_id, started_by,
                                 size_bytes)
           VALUES ($1, $2, $3, '{tracks}', 'completed', 'local', 'n', 't', 4096)""",
        cid,
        iid,
        room,
    )
    assert await usage.snapshot_storage(pool, T0 + dt.timedelta(minutes=1)) == 1
    assert await usage.snapshot_storage(pool, T0 + dt.timedelta(minutes=30)) == 0  # another node, same hour
    assert await usage.snapshot_storage(pool, T0 + dt.timedelta(hours=1)) == 1
    assert await usage.period_totals(pool, cid, T0, T0 + dt.timedelta(hours=2)) == {"storage_bytes": 4096}


async def test_a_session_is_written_in_ticks_and_ends_exactly(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    clock = Clock(T0)
    meter = UsageMeter(pool, 5.0, clock)
    owner = Usage(cid, iid, None)
    meter.open("in:alice", owner, "subscribe_minutes", subject="alice", started=clock() - 2)
    meter.open("in:alice", owner, "subscribe_minutes", subject="alice")  # already open: ignored
    clock.advance(4)
    assert await meter.flush() == 1  # 6 s
    clock.advance(5)
    meter.close("in:alice", clock() - 1.5)  # left 1.5 s ago
    meter.count(owner, "messages", 2)
    meter.count(owner, "messages")
    meter.count(owner, "messages", 0)
    assert not meter.is_open("in:alice")
    assert await meter.flush() == 2
    assert meter.sessions == {}
    clock.advance(5)
    assert await meter.flush() == 0
    rows = await pool.fetch(
        "SELECT idempotency_key, quantity, subject FROM usage_events WHERE kind = 'subscribe_minutes' ORDER BY id"
    )
    assert [(r["idempotency_key"], r["quantity"], r["subject"]) for r in rows] == [
        ("in:alice:0", usage.minutes(6), "alice"),
        ("in:alice:1", usage.minutes(9.5) - usage.minutes(6), "alice"),
    ]
    totals = await usage.period_totals(pool, cid, *usage.period_bounds(T0))
    assert totals == {"subscribe_minutes": usage.minutes(9.5), "messages": 3}
    with pytest.raises(ValueError):
        meter.open("x", owner, "messages")
    with pytest.raises(ValueError):
        meter.count(owner, "publish_minutes")
    with pytest.raises(ValueError):
        meter.count_seconds(owner, "messages", 1.0)


async def test_a_failed_flush_is_written_again_unchanged_and_never_twice(pool: asyncpg.Pool, database_url: str):
    cid, iid = await _customer(pool)
    clock = Clock(T0)
    broken = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await broken.close()
    meter = UsageMeter(broken, 1.0, clock)
    owner = Usage(cid, iid, None)
    meter.open("pub:bob", owner, "publish_minutes", started=clock())
    meter.count(owner, "bytes_out", 100)
    clock.advance(3)
    with pytest.raises(asyncpg.InterfaceError):
        await meter.flush()
    # The same tick (3 s, 100 bytes) was committed by someone else's retry of it: a conflict, not a count.
    first = meter._fix_ticks(clock())
    await usage.record(pool, first)
    meter.pool = pool
    clock.advance(2)
    meter.count(owner, "bytes_out", 50)
    assert await meter.flush() == 0  # the fixed tick again: already there
    assert await meter.flush() == 2  # then the next tick: 2 s, 50 bytes
    totals = await usage.period_totals(pool, cid, *usage.period_bounds(T0))
    assert totals == {"publish_minutes": usage.minutes(5), "bytes_out": 150}


async def test_a_killed_meter_loses_only_its_unflushed_tick(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    clock = Clock(T0)
    meter = UsageMeter(pool, 1.0, clock)
    meter.open("in:carol", Usage(cid, iid, None), "subscribe_minutes", started=clock())
    for _ in range(3):
        clock.advance(1)
        await meter.flush()
    clock.advance(0.6)  # then the process dies: this 0.6 s is never written
    del meter
    restarted = UsageMeter(pool, 1.0, clock)
    restarted.open("in:carol-again", Usage(cid, iid, None), "subscribe_minutes", started=clock())
    clock.advance(2)
    await restarted.stop()  # a clean stop flushes
    totals = await usage.period_totals(pool, cid, *usage.period_bounds(T0))
    assert totals == {"subscribe_minutes": usage.minutes(3) + usage.minutes(2)}


async def test_the_meter_task_flushes_on_its_own(pool: asyncpg.Pool):
    cid, iid = await _customer(pool)
    meter = UsageMeter(pool, 0.1)
    seen: list[int] = []
    meter.before_flush(lambda: seen.append(1))
    meter.count(Usage(cid, iid, None), "messages", 7)
    meter.start()
    meter.start()  # once
    try:
        await wait_until(lambda: meter.written > 0)
    finally:
        await meter.stop()
    assert meter.written == 1 and seen


@pytest.fixture
async def relay(pool: asyncpg.Pool, kafka_bootstrap: str) -> AsyncIterator[OutboxRelay]:
    running = make_relay(pool, kafka_bootstrap)
    running.start()
    await eventually(async_true(lambda: running.connected), "the relay to connect")
    yield running
    await running.stop()


async def test_usage_events_reach_kafka_once_through_the_outbox(
    pool: asyncpg.Pool, relay: OutboxRelay, kafka_bootstrap: str
):
    cid, iid = await _customer(pool)
    event = _event(cid, iid, "viewer_minutes", "0.5", "whep:s1:0", T0)
    assert await usage.record(pool, [event]) == 1
    assert await usage.record(pool, [event]) == 0  # a replay: no second outbox row either
    await eventually(lambda: all_sent(pool), "the usage event relayed")
    (record,) = await read_topics(kafka_bootstrap, ["usage.events"])
    assert record.topic == "gbmedia.usage.events" and record.key == str(cid).encode()
    assert event_id_of(record) == usage.event_id("whep:s1:0")
    value = json.loads(record.value)
    assert (value["kind"], value["quantity"], value["key"]) == ("viewer_minutes", 0.5, "whep:s1:0")
