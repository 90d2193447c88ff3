"""Usage events: written once each, rolled up per hour, read back per hour, day or period.

Every event has a deterministic ``key`` (a meter session's id and tick number, a
recording's id, an hourly storage snapshot's customer and hour). The insert is
``ON CONFLICT (idempotency_key) DO NOTHING``, and the hourly rollup (``usage_hourly``)
and the outbox row (topic ``usage.events``, relayed to Kafka when configured) are
written by the same statement from the rows the insert returned, so a write retried
after a lost answer, or replayed after a crash, adds nothing: no minute is ever
counted twice. The outbox event's ``event_id`` is the UUIDv5 of the key, so a
consumer deduplicating on it agrees with the database.

Units: minute kinds in minutes (fractions, from seconds, to the microminute),
``messages`` and ``bytes_out`` counts, ``storage_bytes`` bytes held (a snapshot: its
hour, day and period figures are the largest snapshot, not a sum).

A billing period is a calendar month in UTC.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from gbmedia.tenancy.customers import quota_exceeded

MINUTE_KINDS = ("publish_minutes", "subscribe_minutes", "viewer_minutes", "recording_minutes")
COUNT_KINDS = ("messages", "bytes_out")
GAUGE_KINDS = ("storage_bytes",)
KINDS = MINUTE_KINDS + COUNT_KINDS + GAUGE_KINDS
CHANNELS = ("webrtc", "whep", "hls")
NIL = uuid.UUID(int=0)  # usage_hourly's instance for customer-wide usage (storage)
_KEY_NAMESPACE = uuid.UUID("6f1d0c84-3c52-5b1e-9a51-67626d657465")
_MICRO = Decimal("0.000001")

Granularity = Literal["hour", "day", "period"]


@dataclass(frozen=True)
class UsageEvent:
    customer_id: uuid.UUID
    instance_id: uuid.UUID | None
    kind: str
    quantity: Decimal
    key: str  # deterministic: the same measurement always has the same key
    occurred_at: dt.datetime
    room_id: uuid.UUID | None = None
    subject: str | None = None
    channel: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown usage kind {self.kind!r}")
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValueError(f"unknown viewer channel {self.channel!r}")
        if self.quantity < 0:
            raise ValueError("usage quantity cannot be negative")


def minutes(seconds: float) -> Decimal:
    """Seconds as minutes, to the microminute (exact decimal, never a float sum)."""
    return (Decimal(repr(max(seconds, 0.0))) / 60).quantize(_MICRO)


def event_id(key: str) -> uuid.UUID:
    return uuid.uuid5(_KEY_NAMESPACE, key)


_RECORD = """
WITH ins AS (
    INSERT INTO usage_events (customer_id, instance_id, kind, quantity, room_id, occurred_at,
                              subject, channel, idempotency_key)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::uuid[],
                         $6::timestamptz[], $7::text[], $8::text[], $9::text[])
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING customer_id, instance_id, kind, quantity, room_id, occurred_at, subject, channel, idempotency_key
), summed AS (
    INSERT INTO usage_hourly (customer_id, instance_id, kind, hour, quantity)
    SELECT customer_id, coalesce(instance_id, $10::uuid), kind, date_trunc('hour', occurred_at, 'UTC'), sum(quantity)
      FROM ins WHERE kind <> 'storage_bytes' GROUP BY 1, 2, 3, 4
    ON CONFLICT (customer_id, hour, kind, instance_id)
    DO UPDATE SET quantity = usage_hourly.quantity + EXCLUDED.quantity
), peaked AS (
    INSERT INTO usage_hourly (customer_id, instance_id, kind, hour, quantity)
    SELECT customer_id, coalesce(instance_id, $10::uuid), kind, date_trunc('hour', occurred_at, 'UTC'), max(quantity)
      FROM ins WHERE kind = 'storage_bytes' GROUP BY 1, 2, 3, 4
    ON CONFLICT (customer_id, hour, kind, instance_id)
    DO UPDATE SET quantity = greatest(usage_hourly.quantity, EXCLUDED.quantity)
), streamed AS (
    INSERT INTO outbox (event_id, topic, key, payload)
    SELECT ids.event_id, 'usage.events', ins.customer_id::text,
           jsonb_build_object('type', 'usage', 'event_id', ids.event_id, 'customer_id', ins.customer_id,
                              'instance_id', ins.instance_id, 'kind', ins.kind, 'quantity', ins.quantity,
                              'room_id', ins.room_id, 'occurred_at', ins.occurred_at, 'subject', ins.subject,
                              'channel', ins.channel, 'key', ins.idempotency_key)
      FROM ins JOIN unnest($9::text[], $11::uuid[]) AS ids (key, event_id) ON ids.key = ins.idempotency_key
)
SELECT count(*) FROM ins
"""


async def record(db: asyncpg.Pool | asyncpg.Connection, events: Sequence[UsageEvent]) -> int:
    """Write ``events`` (those whose key is new) with their rollup and outbox rows; how many were new.

    One statement: atomic on its own, or part of the caller's transaction when ``db`` is
    a connection inside one (a recording's final row and its minutes commit together).
    """
    if not events:
        return 0
    keys = [e.key for e in events]
    if len(set(keys)) != len(keys):
        raise ValueError("usage events in one write must have distinct keys")
    return int(
        await db.fetchval(
            _RECORD,
            [e.customer_id for e in events],
            [e.instance_id for e in events],
            [e.kind for e in events],
            [e.quantity for e in events],
            [e.room_id for e in events],
            [e.occurred_at for e in events],
            [e.subject for e in events],
            [e.channel for e in events],
            keys,
            NIL,
            [event_id(k) for k in keys],
        )
    )


_TRUNC = {"hour": "hour", "day": "day", "period": "month"}
_STEP = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


def bucket_end(start: dt.datetime, granularity: Granularity) -> dt.datetime:
    if granularity == "period":
        return period_bounds(start)[1]
    return start + _STEP[granularity]


def period_bounds(at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The billing period (calendar month, UTC) that contains ``at``."""
    at = at.astimezone(dt.UTC)
    start = dt.datetime(at.year, at.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def _number(kind: str, value: Decimal) -> float | int:
    return int(value) if kind not in MINUTE_KINDS else float(value.quantize(_MICRO))


@dataclass
class Bucket:
    start: dt.datetime
    end: dt.datetime
    totals: dict[str, float | int] = field(default_factory=dict)
    instances: dict[str, dict[str, float | int]] = field(default_factory=dict)


async def report(
    db: asyncpg.Pool | asyncpg.Connection,
    customer_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    granularity: Granularity,
    instance_id: uuid.UUID | None = None,
) -> list[Bucket]:
    """The customer's usage in ``[start, end)`` (whole hours) per bucket, in total and per instance.

    Read from the hourly rollup: sums per bucket, the largest snapshot for storage.
    Customer-wide usage (storage) is in the totals only.
    """
    trunc = _TRUNC[granularity]
    rows = await db.fetch(
        f"""SELECT date_trunc('{trunc}', hour, 'UTC') AS bucket, instance_id, kind,
                   CASE WHEN kind = 'storage_bytes' THEN max(quantity) ELSE sum(quantity) END AS quantity
              FROM usage_hourly
             WHERE customer_id = $1 AND hour >= $2 AND hour < $3 AND ($4::uuid IS NULL OR instance_id = $4)
             GROUP BY 1, 2, 3 ORDER BY 1""",
        customer_id,
        start,
        end,
        instance_id,
    )
    buckets: dict[dt.datetime, Bucket] = {}
    raw: dict[tuple[dt.datetime, str], Decimal] = {}
    for row in rows:
        begin = row["bucket"].astimezone(dt.UTC)
        bucket = buckets.setdefault(begin, Bucket(begin, bucket_end(begin, granularity)))
        kind, quantity = row["kind"], row["quantity"]
        if row["instance_id"] != NIL:
            bucket.instances.setdefault(str(row["instance_id"]), {})[kind] = _number(kind, quantity)
        seen = raw.get((begin, kind))
        raw[(begin, kind)] = (
            quantity if seen is None else (max(seen, quantity) if kind in GAUGE_KINDS else seen + quantity)
        )
    for (begin, kind), quantity in raw.items():
        buckets[begin].totals[kind] = _number(kind, quantity)
    return list(buckets.values())


async def period_totals(
    db: asyncpg.Pool | asyncpg.Connection, customer_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> dict[str, Decimal]:
    """Exact totals per kind over ``[start, end)``, for invoices (storage: the peak held)."""
    rows = await db.fetch(
        """SELECT kind, CASE WHEN kind = 'storage_bytes' THEN max(quantity) ELSE sum(quantity) END AS quantity
             FROM usage_hourly WHERE customer_id = $1 AND hour >= $2 AND hour < $3 GROUP BY kind""",
        customer_id,
        start,
        end,
    )
    return {row["kind"]: row["quantity"] for row in rows}


async def snapshot_storage(db: asyncpg.Pool | asyncpg.Connection, now: dt.datetime) -> int:
    """One ``storage_bytes`` event per customer holding recordings, keyed by the hour: any node may
    take it, the first one counts. The bytes are what the recordings' rows say they hold."""
    hour = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    rows = await db.fetch(
        """SELECT customer_id, sum(size_bytes)::bigint AS held FROM recordings
            GROUP BY customer_id HAVING sum(size_bytes) > 0"""
    )
    events = [
        UsageEvent(
            customer_id=row["customer_id"],
            instance_id=None,
            kind="storage_bytes",
            quantity=Decimal(row["held"]),
            key=f"storage:{row['customer_id']}:{hour.isoformat()}",
            occurred_at=now,
        )
        for row in rows
    ]
    return await record(db, events)


async def require_participant_minutes(db: asyncpg.Pool | asyncpg.Connection, instance_id: uuid.UUID) -> None:
    """Refuse a new session (403 ``quota_participant_minutes_per_month_exceeded``) once the customer's
    participant minutes this period (receiving and viewing, as metered so far) reach the tier's quota.

    Checked when a session starts (a join, WHIP, WHEP): sessions already running go on; a node's
    unflushed ticks (at most ``GBMEDIA_USAGE_FLUSH_SECONDS``) are not counted yet.
    """
    row = await db.fetchrow(
        """SELECT c.id, p.participant_minutes_per_month AS quota
             FROM instances i JOIN customers c ON c.id = i.customer_id JOIN plans p ON p.id = c.subscription_tier
            WHERE i.id = $1""",
        instance_id,
    )
    if row is None or row["quota"] is None:
        return
    customer_id, limit = row["id"], row["quota"]
    start, end = period_bounds(dt.datetime.now(dt.UTC))
    used = await db.fetchval(
        """SELECT coalesce(sum(quantity), 0) FROM usage_hourly
            WHERE customer_id = $1 AND kind IN ('subscribe_minutes', 'viewer_minutes') AND hour >= $2 AND hour < $3""",
        customer_id,
        start,
        end,
    )
    if used >= limit:
        raise quota_exceeded("participant_minutes_per_month", limit, int(used))


def bucket_json(bucket: Bucket) -> dict[str, Any]:
    return {"start": bucket.start, "end": bucket.end, "totals": bucket.totals, "instances": bucket.instances}
