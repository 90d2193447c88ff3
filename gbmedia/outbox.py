"""The transactional outbox: events written with the change they describe, relayed to Kafka.

A chat send (or receipt, or conversation change) calls :func:`enqueue` inside its own
transaction, so the event exists exactly when the change does: a rolled-back send
leaves no event, a committed one cannot lose it. :class:`OutboxRelay` then publishes
unsent rows to Kafka and marks them sent.

Guarantees
    * **At least once.** A row is marked sent in the transaction that selected it, after
      the broker acknowledged it (``acks="all"``). A crash between the ack and the commit
      sends the row again, so consumers deduplicate on ``event_id`` (every message carries
      it in its ``event_id`` header and in its JSON value); :class:`EventDeduper` is the
      helper for that.
    * **Order per key.** Kafka partitions by key and a relay sends a batch in ``id``
      order, at most one produce request in flight per broker, so one key's events reach
      its partition in ``id`` order. For that to be the order of the changes, a caller
      must enqueue under the lock that orders the key's changes (a conversation's events
      after taking the conversation row lock); otherwise two transactions may commit in
      the opposite order of their ids. A batch that fails stops there: the acknowledged
      prefix is marked sent, the rest is retried with backoff. If the broker acknowledged a
      later row of a key while an earlier one failed (a broker fault in the middle of a
      batch), the later one arrives again after the earlier one; consumers that need
      strict order within a key also carry a sequence number (chat messages have ``seq``).
      With a real Kafka cluster, ``idempotent=True`` removes that case; tansu, the test
      broker, does not support the idempotent producer.
    * **One relay at a time.** Every batch runs in a transaction that first takes a
      transaction-scoped advisory lock (``pg_try_advisory_xact_lock``) and then selects its
      rows ``FOR UPDATE SKIP LOCKED``. ``SKIP LOCKED`` alone keeps two nodes from sending
      the same row, but it would let the second node send a key's later row while the
      first still holds the earlier one; the lock keeps order across nodes too. A node
      that finds the lock taken just waits for its next poll, so every node can run a
      relay: whichever gets the lock sends, and a crashed node's lock goes with its
      connection.

Waking up
    The relay polls: again at once while batches come back full, every ``idle_interval``
    (250 ms) otherwise; the poll is one index-only probe of the ``outbox_unsent`` partial
    index. :meth:`OutboxRelay.wake` wakes it at once (a service on the same node can call
    it after its commit). PostgreSQL ``LISTEN/NOTIFY`` is deliberately not used: a
    transaction that executed ``NOTIFY`` takes a database-wide lock at commit that is held
    through the commit's WAL flush, which serialises every chat send's commit behind every
    other's; a quarter-second poll costs far less than that.

Topics
    Rows store the logical topic (one of :data:`TOPICS`); the relay publishes to
    ``topic_prefix + topic`` (``gbmedia.chat.messages`` by default), creating missing
    topics when it connects (``partitions``, default 8). The message key is the row's key
    (UTF-8), the value the payload's JSON.

Housekeeping
    The relay deletes rows sent more than ``retention`` ago (1 hour). Without Kafka a
    node runs :class:`OutboxTrimmer` instead, which deletes every row older than its
    retention, so a single node's table never grows without bound.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gbmedia.metrics import Sample
from gbmedia.waits import cancel_until_done, wait_for_event

log = logging.getLogger(__name__)

#: The event stream's topics, as stored in ``outbox.topic``; Kafka's names add a prefix.
TOPICS: frozenset[str] = frozenset({"chat.messages", "chat.receipts", "chat.conversations", "usage.events"})
DEFAULT_TOPIC_PREFIX = "gbmedia."
DEFAULT_PARTITIONS = 8
DEFAULT_RETENTION = 3600.0  # seconds
#: Largest payload :func:`enqueue` accepts (JSON bytes): well below Kafka's default 1 MiB
#: message limit, so a row can never be refused by the broker and block its key forever.
MAX_PAYLOAD_BYTES = 512 * 1024
EVENT_ID_HEADER = "event_id"

_TOPIC_RE = re.compile(r"^[a-z0-9._-]+$")  # the outbox table's CHECK
_PREFIX_RE = re.compile(r"^[a-z0-9._-]*$")
# Two-int advisory lock ("gbme", "outb"): a namespace of its own, apart from the
# single-bigint locks (migrations, direct conversations).
_RELAY_LOCK = (0x6762_6D65, 0x6F75_7462)
_DELETE_CHUNK = 5000


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"payload value of type {type(value).__name__} is not JSON serializable")


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise ValueError(f"invalid outbox topic {topic!r}: must match {_TOPIC_RE.pattern}")
    if topic not in TOPICS:
        raise ValueError(f"unknown outbox topic {topic!r}: must be one of {sorted(TOPICS)}")
    return topic


async def enqueue(conn: asyncpg.Connection, topic: str, key: str, payload: Mapping[str, Any]) -> uuid.UUID:
    """Add one event to the outbox inside the caller's open transaction; returns its event_id.

    ``topic`` is one of :data:`TOPICS`; ``key`` orders events (a conversation id: events
    with one key are delivered in the order they were enqueued, provided the caller holds
    the lock that orders the key's changes). The stored payload is a copy of ``payload``
    with ``event_id`` added (UUIDs and datetimes become strings); ``payload`` must not
    have an ``event_id`` of its own. The event is published only if the transaction
    commits.
    """
    _check_topic(topic)
    if not isinstance(key, str) or not key:
        raise ValueError("outbox key must be a non-empty string")
    if not isinstance(payload, Mapping):
        raise TypeError("outbox payload must be a mapping (a JSON object)")
    if "event_id" in payload:
        raise ValueError("outbox payload must not carry its own event_id; enqueue assigns it")
    if not conn.is_in_transaction():
        raise RuntimeError("enqueue must run inside the transaction of the change it describes")
    event_id = uuid.uuid4()
    body = json.dumps(
        {**payload, "event_id": str(event_id)}, default=_json_default, ensure_ascii=False, separators=(",", ":")
    )
    if len(body.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"outbox payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    # ::text::jsonb: the text travels as is, whatever JSON codec the connection has.
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4::text::jsonb)",
        event_id,
        topic,
        key,
        body,
    )
    return event_id


def kafka_topic(topic: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """Kafka's name for an outbox topic: what consumers subscribe to."""
    return prefix + _check_topic(topic)


def event_id_of(record: Any) -> uuid.UUID:
    """The event_id of a consumed Kafka record: its header, else its JSON value's field."""
    for name, value in getattr(record, "headers", None) or ():
        if name == EVENT_ID_HEADER:
            return uuid.UUID(value.decode() if isinstance(value, bytes | bytearray) else str(value))
    return uuid.UUID(str(json.loads(record.value)["event_id"]))


class EventDeduper:
    """What consumers of the event stream use to turn at-least-once into effectively once.

    The relay may send an event more than once (a crash between the broker's ack and the
    commit that marks the row sent, or a failed batch retried). A consumer calls
    ``seen(event_id)`` for every record and skips it when that returns True. The memory
    is a bounded LRU of the last ``capacity`` event ids, which covers redeliveries (they
    follow the original within one batch or one retry); a consumer whose effects must
    be exactly once across restarts stores the event ids with its effects instead.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[uuid.UUID, None] = OrderedDict()

    def seen(self, event_id: uuid.UUID | str | bytes) -> bool:
        """True if ``event_id`` was seen before (a duplicate); otherwise remember it, False."""
        if isinstance(event_id, bytes | bytearray):
            event_id = event_id.decode()
        key = event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)


class OutboxSendError(RuntimeError):
    """A batch was not fully acknowledged; its acknowledged prefix was marked sent."""

    def __init__(self, cause: BaseException, selected: int, sent: int, first_unsent_id: int) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.selected = selected
        self.sent = sent
        self.first_unsent_id = first_unsent_id


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # Futures of a failed batch may fail after we stopped waiting: keep asyncio quiet.
    if not fut.cancelled():
        fut.exception()


async def _delete_in_chunks(pool: asyncpg.Pool, condition: str, retention: float) -> int:
    total = 0
    while True:
        status = await pool.execute(
            f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE {condition} ORDER BY id LIMIT $2)",
            dt.timedelta(seconds=retention),
            _DELETE_CHUNK,
        )
        count = int(status.split()[-1])
        total += count
        if count < _DELETE_CHUNK:
            return total


class _Periodic(abc.ABC):
    """start/stop of a background task, in the node's style (see RoomSweeper)."""

    _task_name = "outbox"
    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_until_done(task)
        await self._closed()

    @abc.abstractmethod
    async def _run(self) -> None:
        """The task's loop; each subclass has its own."""

    async def _closed(self) -> None:
        return None


class OutboxRelay(_Periodic):
    """Publishes the outbox to Kafka: the node's background task when Kafka is configured.

    Metrics (plain attributes, for the node to export): ``sent`` (rows acknowledged and
    marked sent), ``batches`` (batches that sent at least one row), ``failed_batches``,
    ``connect_failures``, ``deleted`` (sent rows removed after the retention), ``lag``
    (seconds since the oldest unsent row was written; 0 when none), ``connected``.
    """

    _task_name = "outbox-relay"

    def __init__(
        self,
        pool: asyncpg.Pool,
        bootstrap_servers: str,
        *,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = 1,
        batch_size: int = 500,
        idle_interval: float = 0.25,
        busy_interval: float = 0.0,
        retention: float = DEFAULT_RETENTION,
        cleanup_interval: float = 60.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        request_timeout: float = 10.0,
        send_timeout: float = 30.0,
        idempotent: bool = False,
        client_id: str = "gbmedia-outbox",
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not _PREFIX_RE.match(topic_prefix):
            raise ValueError(f"invalid topic prefix {topic_prefix!r}: must match {_PREFIX_RE.pattern}")
        if partitions < 1 or replication_factor < 1 or batch_size < 1:
            raise ValueError("partitions, replication_factor and batch_size must be at least 1")
        self.pool = pool
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.busy_interval = busy_interval
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.idempotent = idempotent
        self.client_id = client_id
        self.producer_options = dict(producer_options or {})
        # metrics
        self.sent = 0
        self.batches = 0
        self.failed_batches = 0
        self.connect_failures = 0
        self.deleted = 0
        self.last_error: str | None = None
        self._oldest_unsent: float | None = None  # epoch seconds of the oldest unsent row seen
        self._producer: Any = None
        self._wake = asyncio.Event()
        self._next_cleanup = 0.0

    @property
    def lag(self) -> float:
        """Seconds since the oldest unsent row (as of the last poll) was written; 0 if none."""
        oldest = self._oldest_unsent
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def kafka_topic(self, topic: str) -> str:
        return kafka_topic(topic, self.topic_prefix)

    def wake(self) -> None:
        """Run the next poll now (e.g. right after a commit that enqueued events)."""
        self._wake.set()

    async def changed(self, *_: object) -> None:
        """A chat change listener (``chat.messages.on_change``): wakes the relay after the commit."""
        self.wake()

    def samples(self) -> list[Sample]:
        """The relay's figures for ``node.metrics.watch``."""
        return [
            Sample(
                "gbmedia_outbox_sent_total",
                "Outbox events acknowledged by Kafka and marked sent",
                self.sent,
                counter=True,
            ),
            Sample(
                "gbmedia_outbox_failed_batches_total",
                "Outbox batches Kafka did not fully acknowledge",
                self.failed_batches,
                counter=True,
            ),
            Sample(
                "gbmedia_outbox_connect_failures_total",
                "Failed connections of the outbox relay to Kafka",
                self.connect_failures,
                counter=True,
            ),
            Sample(
                "gbmedia_outbox_deleted_total",
                "Sent outbox rows deleted after the retention",
                self.deleted,
                counter=True,
            ),
            Sample("gbmedia_outbox_lag_seconds", "Age of the oldest unsent outbox row (0 when none)", self.lag),
            Sample(
                "gbmedia_outbox_connected",
                "1 while the outbox relay has a Kafka producer",
                1.0 if self.connected else 0.0,
            ),
        ]

    # -- Kafka -------------------------------------------------------------------------

    async def ensure_topics(self) -> list[str]:
        """Create the missing topics of :data:`TOPICS`; returns those it created."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            request_timeout_ms=int(self.request_timeout * 1000),
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = sorted(self.kafka_topic(t) for t in TOPICS if self.kafka_topic(t) not in existing)
            if missing:
                response = await admin.create_topics(
                    [NewTopic(name, self.partitions, self.replication_factor) for name in missing]
                )
                for name, code, message in response.topic_errors:
                    if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another node won the race)
                        raise RuntimeError(f"creating topic {name} failed: error {code}: {message}")
            return missing
        finally:
            await admin.close()

    async def _connect(self) -> None:
        created = await self.ensure_topics()
        options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": self.idempotent,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "client_id": self.client_id,
        }
        options.update(self.producer_options)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **options)
        try:
            await producer.start()
        except BaseException:
            await self._stop_producer(producer)
            raise
        self._producer = producer
        log.info(
            "outbox relay connected",
            extra={
                "bootstrap_servers": self.bootstrap_servers,
                "topics_created": created,
                "topic_prefix": self.topic_prefix,
            },
        )

    async def _stop_producer(self, producer: Any) -> None:
        # stop() flushes what is queued; bounded so a dead broker cannot hold up shutdown. Not
        # asyncio.wait_for: on Python 3.11 it swallows the relay's own cancellation when the stop
        # finishes in the same loop turn, and the relay then runs on while the node waits for it
        # (gbmedia/waits.py).
        try:
            async with asyncio.timeout(self.request_timeout):
                await producer.stop()
        except Exception as exc:  # the producer is dropped either way
            log.debug("outbox producer stop failed: %s: %s", type(exc).__name__, exc)

    async def _disconnect(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_producer(producer)

    async def _closed(self) -> None:
        await self._disconnect()

    # -- one batch ----------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Send one batch; returns the rows marked sent (0 also when another relay holds the lock).

        Connects first if needed. Raises :class:`OutboxSendError` when the batch was only
        partly acknowledged (that prefix is committed as sent).
        """
        if self._producer is None:
            await self._connect()
        producer = self._producer
        async with self.pool.acquire() as conn, conn.transaction():
            locked, oldest = await conn.fetchrow(
                """SELECT pg_try_advisory_xact_lock($1, $2),
                          (SELECT created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1)""",
                *_RELAY_LOCK,
            )
            self._oldest_unsent = oldest.timestamp() if oldest is not None else None
            if not locked or oldest is None:
                return 0
            rows = await conn.fetch(
                """SELECT id, event_id, topic, key, payload::text AS payload, created_at FROM outbox
                    WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
                self.batch_size,
            )
            if not rows:
                return 0
            acked, error = await self._produce(producer, rows)
            if acked:
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows[:acked]],
                )
        if acked:
            self.sent += acked
            self.batches += 1
        if error is not None:
            self._oldest_unsent = rows[acked]["created_at"].timestamp()
            raise OutboxSendError(error, len(rows), acked, rows[acked]["id"])
        if len(rows) < self.batch_size:
            self._oldest_unsent = None
        return acked

    async def _produce(self, producer: Any, rows: Sequence[asyncpg.Record]) -> tuple[int, BaseException | None]:
        """Produce ``rows`` in order and wait for the acks: (acknowledged prefix, first error)."""
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self.send_timeout):
                try:
                    for row in rows:
                        fut = await producer.send(
                            self.topic_prefix + row["topic"],
                            value=row["payload"].encode(),
                            key=row["key"].encode(),
                            headers=[(EVENT_ID_HEADER, str(row["event_id"]).encode())],
                        )
                        fut.add_done_callback(_retrieve)
                        futures.append(fut)
                except Exception as exc:  # queueing failed (no metadata, closed producer): stop here
                    error = exc
                if futures:
                    await asyncio.wait(futures)
        except TimeoutError as exc:
            error = error or exc
        acked = 0
        for fut in futures:
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                if fut.done() and not fut.cancelled():
                    error = fut.exception()
                elif error is None or isinstance(error, TimeoutError):
                    error = TimeoutError(f"no broker ack within {self.send_timeout} s")
                break
            acked += 1
        return acked, error

    async def delete_sent(self) -> int:
        """Delete rows sent more than ``retention`` seconds ago; returns how many."""
        count = await _delete_in_chunks(self.pool, "sent_at < now() - $1::interval", self.retention)
        self.deleted += count
        return count

    # -- the loop ---------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_initial * (2 ** min(failures - 1, 30)))
        return delay * random.uniform(0.5, 1.0)

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            full = False
            try:
                if self._producer is None:
                    try:
                        await self._connect()
                    except Exception:
                        self.connect_failures += 1
                        raise
                full = await self.relay_once() >= self.batch_size
                if time.monotonic() >= self._next_cleanup:
                    self._next_cleanup = time.monotonic() + self.cleanup_interval
                    await self.delete_sent()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or the database away: keep the rows, retry later
                failures += 1
                kafka_side = self._producer is None or isinstance(exc, OutboxSendError)
                if isinstance(exc, OutboxSendError):
                    self.failed_batches += 1
                cause = exc.cause if isinstance(exc, OutboxSendError) else exc
                self.last_error = f"{type(cause).__name__}: {cause}"[:300]
                delay = self._backoff(failures)
                log.warning(
                    "outbox relay failed",
                    extra={
                        "error": type(cause).__name__,
                        "detail": str(cause)[:300],
                        "attempt": failures,
                        "retry_in_s": round(delay, 3),
                        "lag_s": round(self.lag, 3),
                        "batch_rows": getattr(exc, "selected", None),
                        "batch_sent": getattr(exc, "sent", None),
                        "first_unsent_id": getattr(exc, "first_unsent_id", None),
                    },
                )
                if kafka_side:
                    # Reconnect from scratch: a restarted broker may have lost its topics.
                    await self._disconnect()
                await asyncio.sleep(delay)
                continue
            if full:
                await asyncio.sleep(self.busy_interval)
            else:
                await wait_for_event(self._wake, self.idle_interval)


class OutboxTrimmer(_Periodic):
    """Without Kafka: deletes outbox rows older than ``retention`` every ``interval`` seconds.

    Nobody publishes the rows on such a node; they are kept for ``retention`` (a Kafka
    configured later still gets the last hour) and then dropped.
    """

    _task_name = "outbox-trimmer"

    def __init__(self, pool: asyncpg.Pool, retention: float = DEFAULT_RETENTION, interval: float = 60.0) -> None:
        self.pool = pool
        self.retention = retention
        self.interval = interval
        self.deleted = 0

    def samples(self) -> list[Sample]:
        """The trimmer's figures for ``node.metrics.watch``."""
        return [
            Sample(
                "gbmedia_outbox_trimmed_total",
                "Outbox rows deleted unsent (no Kafka configured)",
                self.deleted,
                counter=True,
            )
        ]

    async def trim(self) -> int:
        """Delete rows created more than ``retention`` seconds ago; returns how many."""
        count = await _delete_in_chunks(self.pool, "created_at < now() - $1::interval", self.retention)
        self.deleted += count
        return count

    async def _run(self) -> None:
        while True:
            try:
                await self.trim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a while; try again later
                log.warning("outbox trim failed", extra={"error": type(exc).__name__, "detail": str(exc)[:300]})
            await asyncio.sleep(self.interval)
