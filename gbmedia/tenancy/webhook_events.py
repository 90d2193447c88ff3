"""Webhook events: written in the transaction of the change they describe, signed when sent.

The module that knows an event emits it: rooms (started, finished, participants,
tracks, live), recordings, chat messages. :func:`emit` runs inside the caller's
transaction, so the event exists exactly when the change does (the transactional
outbox's promise, :mod:`gbmedia.outbox`): one statement inserts the event's body and one
delivery row per enabled endpoint of the instance that selected its type, and nothing
at all when none did. Events of the live state on one node (a participant joining, a
track published) have no transaction of their own: :class:`WebhookEmitter` writes each
in a short transaction of its own as it happens. :mod:`gbmedia.tenancy.webhook_dispatch`
sends them.

The body is ``{"id", "type", "created_at", "instance_id", "data"}``; ``id`` (also the
``X-Gbmedia-Webhook-Id`` header) is the event's id, the same on every retry, so a
receiver deduplicates on it (delivery is at least once). The signature is an HMAC-SHA256,
with the endpoint's secret, of ``timestamp + "." + body`` (docs/api.md, "Webhooks").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "recording_started",
    "recording_finished",
    "live_started",
    "live_ended",
    "message_created",
)
TEST_EVENT = "test"  # what "send test event" sends; not selectable, sent to the one endpoint asked
SIGNATURE_VERSION = "v1"
ID_HEADER = "X-Gbmedia-Webhook-Id"
TIMESTAMP_HEADER = "X-Gbmedia-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Gbmedia-Webhook-Signature"
EVENT_HEADER = "X-Gbmedia-Webhook-Event"
ATTEMPT_HEADER = "X-Gbmedia-Webhook-Attempt"
REPLAY_WINDOW_SECONDS = 300  # what docs/api.md tells receivers to accept; signatures older are refused

# One statement: the event only if some enabled endpoint of the instance selected its type,
# and a delivery per such endpoint. $1 event_id, $2 instance_id, $3 type, $4 body (JSON text).
EMIT_SQL = """
WITH wanted AS (
    SELECT id FROM webhook_endpoints WHERE instance_id = $2::uuid AND enabled AND $3::text = ANY (events)
),
event AS (
    INSERT INTO webhook_events (event_id, instance_id, type, body)
    SELECT $1::uuid, $2::uuid, $3::text, $4::text::jsonb WHERE EXISTS (SELECT 1 FROM wanted)
    RETURNING event_id
)
INSERT INTO webhook_deliveries (event_id, endpoint_id)
SELECT event.event_id, wanted.id FROM event, wanted
"""


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"webhook data of type {type(value).__name__} is not JSON serializable")


def event_body(event_id: uuid.UUID, instance_id: uuid.UUID, event_type: str, data: Mapping[str, Any]) -> str:
    """The JSON text every endpoint receives for one event."""
    return json.dumps(
        {
            "id": str(event_id),
            "type": event_type,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "instance_id": str(instance_id),
            "data": dict(data),
        },
        default=_json_default,
        ensure_ascii=False,
        separators=(",", ":"),
    )


async def emit(conn: asyncpg.Connection, instance_id: uuid.UUID, event_type: str, data: Mapping[str, Any]) -> uuid.UUID:
    """Write one event for the instance's endpoints inside the caller's open transaction; its id.

    Nothing is written when no enabled endpoint selected ``event_type``; the event is
    delivered only if the transaction commits.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    if not conn.is_in_transaction():
        raise RuntimeError("emit must run inside the transaction of the change it describes")
    event_id = uuid.uuid4()
    await conn.execute(EMIT_SQL, event_id, instance_id, event_type, event_body(event_id, instance_id, event_type, data))
    return event_id


class WebhookEmitter:
    """Events with no transaction of their own (a node's live state): each written by one statement.

    A failure (the database away) is logged, never raised: a participant's join must not
    fail because its event could not be written, and the join itself touches the database.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.failures = 0

    async def publish(self, instance_id: uuid.UUID, event_type: str, data: Mapping[str, Any]) -> uuid.UUID | None:
        """Write the event (one statement, so one round trip and atomic on its own); its id, or None."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event {event_type!r}")
        event_id = uuid.uuid4()
        body = event_body(event_id, instance_id, event_type, data)
        try:
            await self.pool.execute(EMIT_SQL, event_id, instance_id, event_type, body)
            return event_id
        except Exception as exc:  # the database away: the event is lost with the change's own writes
            self.failures += 1
            log.warning(
                "webhook event not written",
                extra={"event": event_type, "instance_id": str(instance_id), "error": repr(exc)[:300]},
            )
            return None


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Gbmedia-Webhook-Signature`` value: ``v1=`` and the hex HMAC-SHA256 of ``timestamp.body``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"
