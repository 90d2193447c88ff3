"""Sends webhook deliveries: signed, one node at a time per delivery, retried, dead-lettered.

Every node runs a :class:`WebhookDispatcher`. It claims due deliveries in one short
transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` (two nodes never take the same row),
then the claim itself is written in the row: the attempt counter goes up, and
``next_attempt_at`` moves to the end of a lease (twice the request timeout, plus
five seconds), and the attempt is logged as started. The request goes out after the
commit, so no transaction stays open across the network. Its outcome is then written
with the row: ``delivered`` on a 2xx, else the next try after an exponential backoff
(``GBMEDIA_WEBHOOK_BACKOFF_SECONDS`` doubling up to ``..._BACKOFF_MAX_SECONDS``), and
``dead`` after ``GBMEDIA_WEBHOOK_MAX_ATTEMPTS`` failed attempts (a redelivery by hand
gives it that many again).

A node killed mid-attempt never writes the outcome: the row is simply due again when
its lease lapses, on whichever node claims it first, and its unfinished attempt is
logged as interrupted. So an event is never lost, and may arrive twice (the receiver
answered, the node died before it wrote so): receivers deduplicate on the event id.

Each request goes only where :class:`~gbmedia.http.guard.DestinationGuard` allows
(public addresses, plus ``GBMEDIA_WEBHOOK_ALLOW_NETWORKS``), checked after resolution
and connected to the checked address; redirects are not followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import asyncpg

import gbmedia
from gbmedia.http.guard import DestinationGuard, DestinationRefused, PinnedResolver, pinned_session
from gbmedia.metrics import Sample
from gbmedia.tenancy.secrets import SecretBox
from gbmedia.tenancy.webhook_events import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)
from gbmedia.waits import wait_for_event

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500
RETENTION_SECONDS = 7 * 86400.0  # delivered and dead deliveries are listed this long, then deleted
TRIM_INTERVAL = 600.0  # seconds between two deletions of old deliveries
INTERRUPTED = "interrupted: its node stopped before the outcome was recorded"

CLAIM_SQL = """
WITH due AS (
    SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
     WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled
     ORDER BY d.next_attempt_at, d.id
     LIMIT $1
       FOR UPDATE OF d SKIP LOCKED
),
claimed AS (
    UPDATE webhook_deliveries d
       SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2::float8)
      FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.endpoint_id, d.attempts, d.retry_base
),
interrupted AS (
    UPDATE webhook_attempts a SET finished_at = now(), error = $4::text
      FROM claimed c WHERE a.delivery_id = c.id AND a.finished_at IS NULL
),
started AS (
    INSERT INTO webhook_attempts (delivery_id, attempt, node_id) SELECT id, attempts, $3::text FROM claimed
)
SELECT c.id, c.event_id, c.attempts, c.retry_base, e.type, e.body::text AS body, w.url, w.secret_encrypted
  FROM claimed c
  JOIN webhook_events e ON e.event_id = c.event_id
  JOIN webhook_endpoints w ON w.id = c.endpoint_id
"""


@dataclass(frozen=True)
class DispatchSettings:
    """The dispatcher's knobs (GBMEDIA_WEBHOOK_*)."""

    max_attempts: int = 10
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    concurrency: int = 16
    idle_interval: float = 0.5

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds a delivery: past it, a node that died mid-attempt leaves it to others."""
        return 2 * self.timeout_seconds + 5.0

    def backoff(self, failures: int) -> float:
        """Seconds before the next try after ``failures`` failed attempts in a row."""
        return min(self.backoff_max_seconds, self.backoff_seconds * 2 ** min(failures - 1, 40))


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    event_id: uuid.UUID
    attempt: int
    retry_base: int
    event_type: str
    body: bytes
    url: str
    secret: str


class WebhookDispatcher:
    """The node's background task that sends due webhook deliveries."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        secrets_box: SecretBox,
        guard: DestinationGuard,
        node_id: str,
        settings: DispatchSettings | None = None,
    ) -> None:
        self.pool = pool
        self.secrets = secrets_box
        self.guard = guard
        self.node_id = node_id
        self.settings = settings or DispatchSettings()
        self.user_agent = f"gbmedia-webhooks/{gbmedia.__version__}"
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        # metrics
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop claiming and drop attempts in flight: their claims lapse and another try follows."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inflight, self._inflight = self._inflight, set()
        for each in inflight:
            each.cancel()
        for each in inflight:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await each

    def wake(self) -> None:
        """Look for due deliveries now (after a commit that wrote some)."""
        self._wake.set()

    def samples(self) -> list[Sample]:
        return [
            Sample(
                "gbmedia_webhook_delivered_total",
                "Webhook deliveries a receiver acknowledged (2xx)",
                self.delivered,
                counter=True,
            ),
            Sample(
                "gbmedia_webhook_failed_attempts_total",
                "Webhook attempts that failed (no answer, refused address, non-2xx)",
                self.failed_attempts,
                counter=True,
            ),
            Sample(
                "gbmedia_webhook_dead_total",
                "Webhook deliveries dead-lettered after their last attempt",
                self.dead,
                counter=True,
            ),
            Sample("gbmedia_webhook_in_flight", "Webhook attempts this node is making now", len(self._inflight)),
        ]

    async def trim(self, older_than: float = RETENTION_SECONDS) -> int:
        """Delete deliveries delivered or dead more than ``older_than`` seconds ago, and the events
        left without deliveries; returns the deliveries deleted. Pending ones always stay."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                """DELETE FROM webhook_deliveries
                    WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1::float8)""",
                older_than,
            )
            await conn.execute(
                """DELETE FROM webhook_events e
                    WHERE e.created_at < now() - make_interval(secs => $1::float8)
                      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.event_id)""",
                older_than,
            )
        return int(status.split()[-1])

    async def _run(self) -> None:
        next_trim = time.monotonic() + TRIM_INTERVAL
        while True:
            self._wake.clear()
            try:
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + TRIM_INTERVAL
                    await self.trim()
                room = self.settings.concurrency - len(self._inflight)
                claimed = await self.claim(room) if room > 0 else []
                for claim in claimed:
                    task = asyncio.get_running_loop().create_task(self._attempt(claim), name="webhook-attempt")
                    self._inflight.add(task)
                    task.add_done_callback(self._finished)
                if claimed and len(claimed) == room:
                    continue  # more may be due: claim again once a slot frees (or at once)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: try again at the next poll
                log.warning("webhook claim failed", extra={"error": type(exc).__name__, "detail": str(exc)[:300]})
            await wait_for_event(self._wake, self.settings.idle_interval)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt crashed", exc_info=task.exception())

    # --- one delivery ---------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        """Take up to ``limit`` due deliveries for this node (none another node holds)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM_SQL, limit, self.settings.lease_seconds, self.node_id, INTERRUPTED)
        claims = []
        for row in rows:
            try:
                secret = self.secrets.decrypt(row["secret_encrypted"])
            except Exception as exc:  # another node key stored it: the attempt fails, and says why
                await self._record(row["id"], row["attempts"], row["retry_base"], None, str(exc))
                continue
            claims.append(
                Claim(
                    row["id"],
                    row["event_id"],
                    row["attempts"],
                    row["retry_base"],
                    row["type"],
                    row["body"].encode(),
                    row["url"],
                    secret,
                )
            )
        return claims

    async def _attempt(self, claim: Claim) -> None:
        status, error = await self.send(claim)
        await self._record(claim.delivery_id, claim.attempt, claim.retry_base, status, error)

    def headers(self, claim: Claim, timestamp: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            ID_HEADER: str(claim.event_id),
            EVENT_HEADER: claim.event_type,
            ATTEMPT_HEADER: str(claim.attempt),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(claim.secret, timestamp, claim.body),
        }

    async def send(self, claim: Claim) -> tuple[int | None, str | None]:
        """POST the signed body once: (the receiver's status or None, why it failed or None)."""
        host = urlsplit(claim.url).hostname or ""
        resolver = PinnedResolver()
        timeout = self.settings.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                resolver.pins[host] = await self.guard.checked_addresses(host)
                async with (
                    pinned_session(resolver, limit=1) as session,
                    session.post(
                        claim.url,
                        data=claim.body,
                        headers=self.headers(claim, int(time.time())),
                        allow_redirects=False,
                    ) as response,
                ):
                    await response.content.read(64 * 1024)  # what a receiver says is not kept; read a little
                    status = response.status
        except DestinationRefused as exc:
            return None, str(exc)[:MAX_ERROR_CHARS]
        except TimeoutError:
            return None, f"no answer within {timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        if 200 <= status < 300:
            return status, None
        if 300 <= status < 400:
            return status, f"the receiver answered {status}: redirects are not followed"
        return status, f"the receiver answered {status}"

    async def _record(
        self, delivery_id: int, attempt: int, retry_base: int, status: int | None, error: str | None
    ) -> None:
        """The attempt's outcome and the delivery's next state; a claim that lapsed meanwhile
        (another node took the row) leaves the delivery to that node."""
        failures = attempt - retry_base
        if error is None:
            state, next_in = "delivered", 0.0
        elif failures >= self.settings.max_attempts:
            state, next_in = "dead", 0.0
        else:
            state, next_in = "pending", self.settings.backoff(failures)
        async with self.pool.acquire() as conn, conn.transaction():
            # The delivery's row before its attempt's: the order in which deleting an endpoint (cascading to
            # its deliveries, then their attempts) takes them, or the two deadlock.
            changed = await conn.execute(
                """UPDATE webhook_deliveries
                      SET status = $3::text,
                          next_attempt_at = CASE WHEN $3::text = 'pending'
                                                 THEN now() + make_interval(secs => $4::float8)
                                                 ELSE next_attempt_at END,
                          finished_at = CASE WHEN $3::text = 'pending' THEN NULL ELSE now() END
                    WHERE id = $1 AND attempts = $2 AND status = 'pending'""",
                delivery_id,
                attempt,
                state,
                next_in,
            )
            await conn.execute(
                """UPDATE webhook_attempts SET finished_at = now(), status_code = $3, error = $4
                    WHERE delivery_id = $1 AND attempt = $2""",
                delivery_id,
                attempt,
                status,
                error,
            )
        if changed == "UPDATE 0":
            return
        if state == "delivered":
            self.delivered += 1
        else:
            self.failed_attempts += 1
            if state == "dead":
                self.dead += 1
                log.warning(
                    "webhook delivery dead-lettered",
                    extra={"delivery_id": delivery_id, "attempts": attempt, "error": error},
                )
