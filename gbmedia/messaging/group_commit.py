"""Group commit for chat sends: every send waiting at one moment goes to PostgreSQL in ONE statement.

Why
    A send on its own costs a transaction: BEGIN, the conversation's row lock, the
    message, its outbox row, COMMIT (a WAL flush), each a round trip. At thousands of
    messages a second that per-transaction cost, on the server and in PostgreSQL, is
    most of the work. Here sends that arrive while a batch is being written wait for
    the next one, which takes them all: one statement, one commit, one WAL flush.

How
    :class:`SendBatcher` keeps a queue. ``submit`` adds a send and starts the writer
    task if none runs; the writer takes everything queued (up to :data:`MAX_BATCH`),
    runs :data:`BATCH_SQL` once in autocommit (a single statement is its own
    transaction) and, after the commit, answers every send of the batch. Then it takes
    what queued meanwhile, at once: there is no timer, so a lone send waits for
    nothing but its own statement, and under load batches grow by themselves. There
    are ``GBMEDIA_CHAT_WRITERS`` such queues, each conversation always in the same
    one, so several statements (each on its own conversations) run at once while the node
    fans out what the others committed.

The statement, in order:
    1. locks the batch's conversation rows ``FOR UPDATE`` in id order (every writer
       locks in the same order, so two nodes' batches cannot deadlock), reading their
       ``last_seq`` and members under the lock;
    2. judges every send: the conversation exists in the caller's instance, the caller
       is a member (or an administrator), the idempotency key is not stored yet;
    3. numbers the accepted sends per conversation ``last_seq + 1, + 2, ...`` in queue
       order, inserts them, moves ``last_seq``, and writes one outbox row per message
       (in seq order, so the relay keeps the conversation's order), and a webhook
       ``message_created`` event with its deliveries where the instance has an endpoint
       that selected it, all in the same statement, so in the same transaction;
    4. returns one row per send: what happened to it, the message (new or the one the
       key already stored), the conversation and its members (for the fan-out).

Guarantees kept
    * Acknowledged only after the commit: a send's future is resolved after the
      statement returned, which is after its commit.
    * Gap-free seq in commit order: seqs are taken under the conversation's row lock
      and written in the same transaction as ``last_seq``.
    * No duplicates: one key appears at most once per batch (a second send with the
      same key waits for the next batch, which finds the first stored); a key stored by
      a transaction that committed while this one waited for the lock is not visible
      to this statement's snapshot, but the unique index refuses the insert; the batch
      then falls back to one statement per send, where the retry sees the stored row.
    * One bad send fails alone: if the batch statement fails for any reason, each of
      its sends is written on its own, so only the one that fails again gets the error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import asyncpg

from gbmedia.messaging.conversations import CONVERSATION_COLUMNS
from gbmedia.messaging.models import Conversation, Message
from gbmedia.metrics import Sample

log = logging.getLogger(__name__)

MAX_BATCH = 512  # sends per statement; more wait for the next one
DEFAULT_LANES = 2  # writers working at once, each on its own share of the conversations (GBMEDIA_CHAT_WRITERS)

_CONVERSATION_FIELDS = [c.strip() for c in CONVERSATION_COLUMNS.split(",")]

# Python's datetime.isoformat() of a UTC timestamp, so the outbox event and the socket's event agree.
_ISO_UTC = (
    "to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
    "CASE WHEN to_char(t, 'US') = '000000' THEN '' ELSE '.' || to_char(t, 'US') END || '+00:00'"
)

BATCH_SQL = f"""
WITH input AS MATERIALIZED (
    SELECT * FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::text[], $5::bool[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[])
        AS t(ord, conversation_id, instance_id, identity, admin, sender, kind, content, metadata,
             idempotency_key, ts_config)
),
clock AS MATERIALIZED (
    SELECT now() AS at, (SELECT {_ISO_UTC} FROM (SELECT now() AS t) n) AS at_text
),
locked AS MATERIALIZED (
    SELECT {", ".join("c." + c for c in _CONVERSATION_FIELDS)},
           ARRAY(SELECT m.identity FROM conversation_members m WHERE m.conversation_id = c.id) AS members
      FROM conversations c
     WHERE c.id IN (SELECT conversation_id FROM input)
     ORDER BY c.id
       FOR UPDATE OF c
),
judged AS MATERIALIZED (
    SELECT i.*, l.id IS NOT NULL AND (i.instance_id IS NULL OR l.instance_id = i.instance_id) AS found,
           min(i.ord) OVER (PARTITION BY i.conversation_id) AS first_ord,
           COALESCE(i.admin OR i.identity = ANY (l.members), false) AS allowed,
           l.shard_key, l.customer_id, l.instance_id AS conversation_instance, l.last_seq,
           e.id AS x_id, e.seq AS x_seq, e.sender_id AS x_sender, e.kind AS x_kind, e.content AS x_content,
           e.metadata AS x_metadata, e.created_at AS x_created_at, e.edited_at AS x_edited_at,
           e.deleted_at AS x_deleted_at
      FROM input i
      LEFT JOIN locked l ON l.id = i.conversation_id
      -- LATERAL ... LIMIT 1: one index probe per send, never a hash join over every stored message
      LEFT JOIN LATERAL (
          SELECT x.id, x.seq, x.sender_id, x.kind, x.content, x.metadata, x.created_at, x.edited_at, x.deleted_at
            FROM messages x
           WHERE x.shard_key = l.shard_key AND x.conversation_id = l.id AND x.sender_id = i.sender
             AND x.idempotency_key = i.idempotency_key AND x.idempotency_key IS NOT NULL
           LIMIT 1) e ON true
),
fresh AS MATERIALIZED (
    SELECT j.*, j.last_seq + row_number() OVER (PARTITION BY j.conversation_id ORDER BY j.ord) AS seq,
           gen_random_uuid() AS id, gen_random_uuid() AS event_id, gen_random_uuid() AS hook_id
      FROM judged j
     WHERE j.found AND j.allowed AND j.x_id IS NULL
),
inserted AS (
    INSERT INTO messages (id, shard_key, customer_id, instance_id, conversation_id, seq, sender_id, kind, content,
                          metadata, idempotency_key, ts_config, created_at)
    SELECT f.id, f.shard_key, f.customer_id, f.conversation_instance, f.conversation_id, f.seq, f.sender, f.kind,
           f.content, f.metadata::jsonb, f.idempotency_key, f.ts_config::regconfig, (SELECT at FROM clock)
      FROM fresh f
),
bumped AS (
    UPDATE conversations c SET last_seq = t.top
      FROM (SELECT conversation_id, max(seq) AS top FROM fresh GROUP BY conversation_id) t
     WHERE c.id = t.conversation_id
),
queued AS (
    INSERT INTO outbox (event_id, topic, key, payload)
    SELECT f.event_id, 'chat.messages', f.conversation_id::text,
           jsonb_build_object(
               'type', 'message.created', 'event_id', f.event_id,
               'message', jsonb_build_object(
                   'id', f.id, 'conversation_id', f.conversation_id, 'seq', f.seq, 'sender', f.sender,
                   'kind', f.kind, 'content', f.content, 'metadata', f.metadata::jsonb,
                   'idempotency_key', f.idempotency_key, 'created_at', (SELECT at_text FROM clock),
                   'edited_at', NULL, 'deleted_at', NULL))
      FROM fresh f
     ORDER BY f.conversation_id, f.seq
),
-- Webhooks (tenancy/webhook_events.py): a message_created event only where an enabled endpoint of the
-- message's instance selected it (one index probe per message otherwise), and its deliveries.
hooked AS (
    INSERT INTO webhook_events (event_id, instance_id, type, body)
    SELECT f.hook_id, f.conversation_instance, 'message_created',
           jsonb_build_object(
               'id', f.hook_id, 'type', 'message_created', 'created_at', (SELECT at_text FROM clock),
               'instance_id', f.conversation_instance,
               'data', jsonb_build_object('message', jsonb_build_object(
                   'id', f.id, 'conversation_id', f.conversation_id, 'seq', f.seq, 'sender', f.sender,
                   'kind', f.kind, 'content', f.content, 'metadata', f.metadata::jsonb,
                   'created_at', (SELECT at_text FROM clock))))
      FROM fresh f
     WHERE EXISTS (SELECT 1 FROM webhook_endpoints w
                    WHERE w.instance_id = f.conversation_instance AND w.enabled AND 'message_created' = ANY (w.events))
     ORDER BY f.conversation_id, f.seq
    RETURNING event_id, instance_id
),
hooked_deliveries AS (
    INSERT INTO webhook_deliveries (event_id, endpoint_id)
    SELECT h.event_id, w.id
      FROM hooked h
      JOIN webhook_endpoints w
        ON w.instance_id = h.instance_id AND w.enabled AND 'message_created' = ANY (w.events)
)
SELECT j.ord, j.found, j.allowed, f.id AS new_id, f.seq AS new_seq, (SELECT at FROM clock) AS created_at,
       j.x_id, j.x_seq, j.x_sender, j.x_kind, j.x_content, j.x_metadata, j.x_created_at, j.x_edited_at,
       j.x_deleted_at,
       -- the conversation and its members once, on the first row of each conversation
       {", ".join(f"CASE WHEN j.ord = j.first_ord THEN l.{c} END AS c_{c}" for c in _CONVERSATION_FIELDS)},
       CASE WHEN j.ord = j.first_ord THEN l.members END AS members, j.conversation_id
  FROM judged j
  LEFT JOIN fresh f ON f.ord = j.ord
  LEFT JOIN locked l ON l.id = j.conversation_id
 ORDER BY j.ord
"""


@dataclass(frozen=True)
class SendRequest:
    """One send, already validated (size, kind, key format, rate, who may send as whom)."""

    conversation_id: uuid.UUID
    instance_id: uuid.UUID | None  # the caller's instance; None: the operator (any instance)
    identity: str | None  # the caller, whose membership counts
    admin: bool
    sender: str  # the author stored (the caller, or whom an administrator sends as)
    kind: str
    content: str
    metadata: dict[str, Any]
    idempotency_key: str
    ts_config: str

    @property
    def key(self) -> tuple[uuid.UUID, str, str]:
        return self.conversation_id, self.sender, self.idempotency_key


@dataclass(frozen=True)
class SendOutcome:
    """What the batch did with one send.

    ``status``: ``created`` (``message`` is new), ``stored`` (the key already stored
    ``message``), ``not_found`` (no such conversation in the caller's instance),
    ``not_member`` (the caller may not write it). ``conversation`` and ``members`` are
    read under the conversation's lock (None when not found).
    """

    status: str
    message: Message | None
    conversation: Conversation | None
    members: list[str] | None


def _outcome(
    request: SendRequest, row: asyncpg.Record, conversations: dict[uuid.UUID, tuple[Conversation, list[str]]]
) -> SendOutcome:
    """One send's row; ``conversations`` collects each conversation from the first row that carries it."""
    if row["c_id"] is not None:
        conversations[row["c_id"]] = (
            Conversation(**{c: row[f"c_{c}"] for c in _CONVERSATION_FIELDS}),
            list(row["members"]),
        )
    if not row["found"]:
        return SendOutcome("not_found", None, None, None)
    conversation, members = conversations[row["conversation_id"]]
    if not row["allowed"]:
        return SendOutcome("not_member", None, conversation, members)
    if row["x_id"] is not None:
        stored = Message(
            row["x_id"],
            request.conversation_id,
            row["x_seq"],
            row["x_sender"],
            row["x_kind"],
            row["x_content"],
            row["x_metadata"],
            request.idempotency_key,
            row["x_created_at"],
            row["x_edited_at"],
            row["x_deleted_at"],
        )
        return SendOutcome("stored", stored, conversation, members)
    created_at: dt.datetime = row["created_at"]
    message = Message(
        row["new_id"],
        request.conversation_id,
        row["new_seq"],
        request.sender,
        request.kind,
        request.content,
        request.metadata,
        request.idempotency_key,
        created_at,
        None,
        None,
    )
    return SendOutcome("created", message, conversation, members)


class _Lane:
    """One writer: a queue and the task that writes it, one statement at a time."""

    def __init__(self, batcher: SendBatcher) -> None:
        self.batcher = batcher
        self.queue: deque[tuple[SendRequest, asyncio.Future[SendOutcome]]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.writing: list[tuple[SendRequest, asyncio.Future[SendOutcome]]] = []

    async def run(self) -> None:
        try:
            while self.queue:
                self.writing = self.take()
                await self.batcher._write(self.writing)
                self.writing = []
        finally:
            self.task = None  # no await between the empty check and here: nothing can queue unseen
            # Only when the task itself was cancelled (the node stops): nobody may wait forever.
            for _, future in [*self.writing, *self.queue]:
                if not future.done():
                    future.set_exception(RuntimeError("the chat writer stopped"))
            self.writing = []
            self.queue.clear()

    def take(self) -> list[tuple[SendRequest, asyncio.Future[SendOutcome]]]:
        """Up to max_batch queued sends, each idempotency key once (a repeat waits for the next batch)."""
        batch: list[tuple[SendRequest, asyncio.Future[SendOutcome]]] = []
        later: list[tuple[SendRequest, asyncio.Future[SendOutcome]]] = []
        keys: set[tuple[uuid.UUID, str, str]] = set()
        queue = self.queue
        limit = self.batcher.max_batch
        while queue and len(batch) < limit:
            item = queue.popleft()
            if item[1].done():  # the sender gave up (cancelled) before its batch: nothing to write
                continue
            if item[0].key in keys:
                later.append(item)
            else:
                keys.add(item[0].key)
                batch.append(item)
        queue.extendleft(reversed(later))
        return batch


class SendBatcher:
    """The node's writers of chat sends; see the module docstring.

    ``committed(outcomes)`` runs after each commit, before any send of the batch is
    answered, with the batch's outcomes in queue order (the new messages of one
    conversation in seq order): the real-time fan-out hooks in there, so events leave
    in commit order.

    Lanes: a conversation always goes to the same one of ``lanes`` writers
    (by its id), each with its own queue, task and connection. One writer alone
    alternates between the server's work (building the statement, the fan-out) and
    PostgreSQL's (running it), so neither is ever busy at once and throughput is
    their sum's inverse; with several, one lane's statement runs while another
    lane's fan-out does. A conversation's sends still go through one queue, so its
    order and its events' order stay the commit order, and lanes never wait for
    each other's row locks.
    """

    def __init__(
        self, pool: asyncpg.Pool, committed: Any, *, max_batch: int = MAX_BATCH, lanes: int = DEFAULT_LANES
    ) -> None:
        self.pool = pool
        self.committed = committed
        self.max_batch = max_batch
        self.lanes = [_Lane(self) for _ in range(lanes)]
        self._loop: asyncio.AbstractEventLoop | None = None
        # Figures (metrics and tests): statements run, sends in them, fallbacks to one send each.
        self.batches = 0
        self.sends = 0
        self.largest = 0
        self.fallbacks = 0
        self.statement_seconds = 0.0  # from taking a connection to the statement's rows, summed

    def lane_of(self, conversation_id: uuid.UUID) -> _Lane:
        return self.lanes[conversation_id.int % len(self.lanes)]

    async def submit(self, request: SendRequest) -> SendOutcome:
        """Queue ``request`` in its conversation's lane and wait for its batch's commit."""
        return await self.enqueue(request)

    def enqueue(self, request: SendRequest) -> asyncio.Future[SendOutcome]:
        """Queue ``request`` now; the future is its outcome once its batch committed."""
        loop = self._loop
        if loop is None:  # once: get_running_loop costs a getpid() system call on every call
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[SendOutcome] = loop.create_future()
        lane = self.lane_of(request.conversation_id)
        lane.queue.append((request, future))
        if lane.task is None:
            lane.task = loop.create_task(lane.run())
        return future

    async def _write(self, batch: list[tuple[SendRequest, asyncio.Future[SendOutcome]]]) -> None:
        if not batch:
            return
        try:
            outcomes = await self._execute([r for r, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                await self._write_alone(batch[0], exc)
                return
            # One bad send must not fail the others: write each on its own.
            self.fallbacks += 1
            log.warning(
                "chat batch failed; writing its sends one by one", extra={"sends": len(batch), "error": repr(exc)}
            )
            for item in batch:
                if not item[1].done():
                    await self._write([item])
            return
        await self._deliver(batch, outcomes)

    async def _write_alone(self, item: tuple[SendRequest, asyncio.Future[SendOutcome]], exc: Exception) -> None:
        """One send whose statement failed: a key stored meanwhile (unique index) is retried once."""
        if isinstance(exc, asyncpg.UniqueViolationError):
            try:
                outcomes = await self._execute([item[0]])
            except Exception as again:
                exc = again
            else:
                await self._deliver([item], outcomes)
                return
        if not item[1].done():
            item[1].set_exception(exc)

    async def _deliver(
        self, batch: list[tuple[SendRequest, asyncio.Future[SendOutcome]]], outcomes: list[SendOutcome]
    ) -> None:
        try:
            await self.committed(outcomes)
        except Exception:  # delivery is best effort; the commit is what the ack promises
            log.exception("chat batch listener failed")
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _execute(self, requests: list[SendRequest]) -> list[SendOutcome]:
        columns: list[list[Any]] = [[] for _ in range(11)]
        for ord_, r in enumerate(requests):
            for i, value in enumerate(
                (
                    ord_,
                    r.conversation_id,
                    r.instance_id,
                    r.identity,
                    r.admin,
                    r.sender,
                    r.kind,
                    r.content,
                    json.dumps(r.metadata, separators=(",", ":"), ensure_ascii=False),
                    r.idempotency_key,
                    r.ts_config,
                )
            ):
                columns[i].append(value)
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(BATCH_SQL, *columns)
        self.statement_seconds += time.perf_counter() - started
        self.batches += 1
        self.sends += len(requests)
        self.largest = max(self.largest, len(requests))
        conversations: dict[uuid.UUID, tuple[Conversation, list[str]]] = {}
        return [_outcome(r, row, conversations) for r, row in zip(requests, rows, strict=True)]  # rows by ord

    def samples(self) -> list[Sample]:
        """The writer's figures for ``node.metrics.watch``: how much group commit groups."""
        return [
            Sample(
                "gbmedia_chat_send_batches_total", "Chat send statements (each one commit)", self.batches, counter=True
            ),
            Sample(
                "gbmedia_chat_sends_batched_total", "Chat sends written by those statements", self.sends, counter=True
            ),
            Sample(
                "gbmedia_chat_send_batch_fallbacks_total",
                "Chat batches that failed and were written one send at a time",
                self.fallbacks,
                counter=True,
            ),
            Sample("gbmedia_chat_send_batch_largest", "Most sends one chat statement has written", self.largest),
            Sample(
                "gbmedia_chat_send_batch_seconds_total",
                "Time chat send statements took, from taking a connection to their rows (committed)",
                self.statement_seconds,
                counter=True,
            ),
            Sample(
                "gbmedia_chat_sends_queued",
                "Chat sends waiting for the next statement",
                sum(len(lane.queue) for lane in self.lanes),
            ),
        ]
