"""An instance's webhook endpoints, their deliveries and each delivery's attempts.

An endpoint is a URL, the event types it selected, an enabled flag and a secret that
signs what it is sent. The secret is generated here and shown once, in the answer
that creates the endpoint; it is stored encrypted with the node's key
(:class:`~gbmedia.tenancy.secrets.SecretBox`), since every delivery must sign with it.
A URL must name a public address: an IP literal or a ``localhost`` name that is not is
refused at once (``webhook_url_refused``), and a host name is resolved and checked again
at every delivery (:mod:`gbmedia.http.guard`), since where a name points may change.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg

from gbmedia.errors import bad_request, conflict, not_found
from gbmedia.http.guard import DestinationGuard, Network, parse_networks
from gbmedia.tenancy import audit
from gbmedia.tenancy.models import Actor
from gbmedia.tenancy.secrets import SecretBox
from gbmedia.tenancy.webhook_events import TEST_EVENT, event_body

_ENDPOINT_COLUMNS = "id, instance_id, url, description, events, enabled, created_at, updated_at"
DELIVERY_STATUSES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class WebhookEndpoint:
    id: uuid.UUID
    instance_id: uuid.UUID
    url: str
    description: str
    events: list[str]
    enabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class WebhookAttempt:
    attempt: int
    node_id: str
    started_at: dt.datetime
    finished_at: dt.datetime | None  # None: running, or its node stopped before it ended
    status_code: int | None  # the receiver's HTTP status; None when none came
    error: str | None  # why it failed; None when it succeeded


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: dt.datetime | None  # None once delivered or dead
    created_at: dt.datetime
    finished_at: dt.datetime | None
    attempt_log: list[WebhookAttempt]


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _endpoint(row: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(**{**dict(row), "events": list(row["events"])})


class Webhooks:
    """Endpoints of instances in PostgreSQL; every change writes the audit log in its transaction."""

    def __init__(self, pool: asyncpg.Pool, secrets_box: SecretBox, guard: DestinationGuard) -> None:
        self.pool = pool
        self.secrets = secrets_box
        self.guard = guard

    def check_url(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request("webhook_url_refused", f"{url!r} is not an http(s) URL with a host")
        if parts.username or parts.password:
            raise bad_request("webhook_url_refused", "a webhook URL carries no credentials; the signature is the proof")
        refusal = self.guard.literal_refusal(parts.hostname)
        if refusal is not None:
            raise bad_request("webhook_url_refused", refusal)
        return url

    async def create(
        self,
        actor: Actor,
        customer_id: uuid.UUID,
        instance_id: uuid.UUID,
        url: str,
        events: list[str],
        *,
        description: str = "",
        enabled: bool = True,
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its secret (which nothing shows again)."""
        self.check_url(url)
        secret = new_webhook_secret()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""INSERT INTO webhook_endpoints (customer_id, instance_id, url, description, events, enabled,
                                                   secret_encrypted)
                    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_ENDPOINT_COLUMNS}""",
                customer_id,
                instance_id,
                url,
                description,
                sorted(set(events)),
                enabled,
                self.secrets.encrypt(secret),
            )
            endpoint = _endpoint(row)
            await audit.record(
                conn,
                actor,
                "webhook.create",
                "webhook",
                endpoint.id,
                customer_id=customer_id,
                instance_id=instance_id,
                details={"url": url, "events": endpoint.events, "enabled": enabled},
            )
        return endpoint, secret

    async def list(self, instance_id: uuid.UUID) -> list[WebhookEndpoint]:
        rows = await self.pool.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE instance_id = $1 ORDER BY created_at, id",
            instance_id,
        )
        return [_endpoint(r) for r in rows]

    async def get(
        self, instance_id: uuid.UUID, endpoint_id: uuid.UUID, conn: asyncpg.Connection | None = None
    ) -> WebhookEndpoint:
        """The instance's endpoint; another instance's answers exactly like a missing one."""
        row = await (conn or self.pool).fetchrow(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND instance_id = $2",
            endpoint_id,
            instance_id,
        )
        if row is None:
            raise not_found("webhook", endpoint_id)
        return _endpoint(row)

    async def update(
        self, actor: Actor, customer_id: uuid.UUID, instance_id: uuid.UUID, endpoint_id: uuid.UUID, changes: dict
    ) -> WebhookEndpoint:
        if "url" in changes:
            self.check_url(changes["url"])
        if "events" in changes:
            changes = {**changes, "events": sorted(set(changes["events"]))}
        async with self.pool.acquire() as conn, conn.transaction():
            await self.get(instance_id, endpoint_id, conn)
            if changes:
                assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=3))
                row = await conn.fetchrow(
                    f"""UPDATE webhook_endpoints SET {assignments}, updated_at = now()
                         WHERE id = $1 AND instance_id = $2 RETURNING {_ENDPOINT_COLUMNS}""",
                    endpoint_id,
                    instance_id,
                    *changes.values(),
                )
                await audit.record(
                    conn,
                    actor,
                    "webhook.update",
                    "webhook",
                    endpoint_id,
                    customer_id=customer_id,
                    instance_id=instance_id,
                    details=changes,
                )
                return _endpoint(row)
            return await self.get(instance_id, endpoint_id, conn)

    async def delete(
        self, actor: Actor, customer_id: uuid.UUID, instance_id: uuid.UUID, endpoint_id: uuid.UUID
    ) -> WebhookEndpoint:
        """Remove the endpoint with its deliveries (pending ones are never sent)."""
        async with self.pool.acquire() as conn, conn.transaction():
            endpoint = await self.get(instance_id, endpoint_id, conn)
            await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
            await audit.record(
                conn,
                actor,
                "webhook.delete",
                "webhook",
                endpoint_id,
                customer_id=customer_id,
                instance_id=instance_id,
                details={"url": endpoint.url},
            )
        return endpoint

    async def send_test(
        self, actor: Actor, customer_id: uuid.UUID, instance_id: uuid.UUID, endpoint_id: uuid.UUID
    ) -> WebhookDelivery:
        """A ``test`` event for this endpoint alone, delivered (signed, retried) like any other."""
        event_id = uuid.uuid4()
        body = event_body(event_id, instance_id, TEST_EVENT, {"webhook_id": str(endpoint_id)})
        async with self.pool.acquire() as conn, conn.transaction():
            endpoint = await self.get(instance_id, endpoint_id, conn)
            if not endpoint.enabled:
                raise conflict("webhook_disabled", "the endpoint is disabled; enable it to send it events")
            await conn.execute(
                "INSERT INTO webhook_events (event_id, instance_id, type, body) VALUES ($1, $2, $3, $4::text::jsonb)",
                event_id,
                instance_id,
                TEST_EVENT,
                body,
            )
            delivery_id = await conn.fetchval(
                "INSERT INTO webhook_deliveries (event_id, endpoint_id) VALUES ($1, $2) RETURNING id",
                event_id,
                endpoint_id,
            )
            await audit.record(
                conn,
                actor,
                "webhook.test",
                "webhook",
                endpoint_id,
                customer_id=customer_id,
                instance_id=instance_id,
                details={"event_id": str(event_id)},
            )
        return await self.delivery(instance_id, endpoint_id, delivery_id)

    async def deliveries(
        self,
        instance_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        status: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[WebhookDelivery]:
        """Newest first, each with every attempt; ``before_id`` pages backwards."""
        await self.get(instance_id, endpoint_id)
        if status is not None and status not in DELIVERY_STATUSES:
            raise bad_request("invalid_query", f"status must be one of {DELIVERY_STATUSES}")
        rows = await self.pool.fetch(
            """SELECT d.id, d.event_id, e.type AS event_type, d.status, d.attempts, d.next_attempt_at,
                      d.created_at, d.finished_at,
                      COALESCE((SELECT json_agg(json_build_object(
                                    'attempt', a.attempt, 'node_id', a.node_id, 'started_at', a.started_at,
                                    'finished_at', a.finished_at, 'status_code', a.status_code, 'error', a.error)
                                    ORDER BY a.attempt)
                                  FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]')::text AS attempt_log
                 FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
                WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2)
                  AND ($3::bigint IS NULL OR d.id < $3)
                ORDER BY d.id DESC LIMIT $4""",
            endpoint_id,
            status,
            before_id,
            limit,
        )
        return [_delivery(r) for r in rows]

    async def delivery(self, instance_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: int) -> WebhookDelivery:
        found = [d for d in await self.deliveries(instance_id, endpoint_id, before_id=delivery_id + 1, limit=1)]
        if not found or found[0].id != delivery_id:
            raise not_found("delivery", delivery_id)
        return found[0]

    async def redeliver(
        self, actor: Actor, customer_id: uuid.UUID, instance_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: int
    ) -> WebhookDelivery:
        """Send a delivery again now, with a fresh budget of attempts (a dead one is pending again)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self.get(instance_id, endpoint_id, conn)
            updated = await conn.fetchval(
                """UPDATE webhook_deliveries SET status = 'pending', retry_base = attempts, next_attempt_at = now(),
                                                 finished_at = NULL
                    WHERE id = $1 AND endpoint_id = $2 RETURNING id""",
                delivery_id,
                endpoint_id,
            )
            if updated is None:
                raise not_found("delivery", delivery_id)
            await audit.record(
                conn,
                actor,
                "webhook.redeliver",
                "webhook",
                endpoint_id,
                customer_id=customer_id,
                instance_id=instance_id,
                details={"delivery_id": delivery_id},
            )
        return await self.delivery(instance_id, endpoint_id, delivery_id)


def _delivery(row: asyncpg.Record) -> WebhookDelivery:
    attempts = [
        WebhookAttempt(
            attempt=a["attempt"],
            node_id=a["node_id"],
            started_at=dt.datetime.fromisoformat(a["started_at"]),
            finished_at=dt.datetime.fromisoformat(a["finished_at"]) if a["finished_at"] else None,
            status_code=a["status_code"],
            error=a["error"],
        )
        for a in json.loads(row["attempt_log"])
    ]
    return WebhookDelivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        attempt_log=attempts,
    )


def parse_allow_networks(value: str) -> list[Network]:
    """``GBMEDIA_WEBHOOK_ALLOW_NETWORKS`` as networks (config.py checked the syntax)."""
    return parse_networks(item for item in value.split(",") if item.strip())
