"""The audit trail: every mutating administrative call leaves one row.

Rows are written on the same connection and in the same transaction as the change
they describe, so a change without its audit row (or the reverse) cannot happen.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gbmedia.tenancy.models import Actor, AuditEntry


async def record(
    conn: asyncpg.Connection,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: object,
    *,
    customer_id: uuid.UUID | None = None,
    instance_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_log (actor, actor_kind, action, target_type, target_id,
                                  customer_id, instance_id, details, request_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        actor.name,
        actor.kind,
        action,
        target_type,
        str(target_id),
        customer_id,
        instance_id,
        details or {},
        actor.request_id,
    )


async def list_entries(
    pool: asyncpg.Pool,
    *,
    customer_id: uuid.UUID | None = None,
    instance_id: uuid.UUID | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first; ``before_id`` pages backwards."""
    rows = await pool.fetch(
        """SELECT id, at, actor, actor_kind, action, target_type, target_id,
                  customer_id, instance_id, details, request_id
             FROM audit_log
            WHERE ($1::uuid IS NULL OR customer_id = $1)
              AND ($2::uuid IS NULL OR instance_id = $2)
              AND ($3::bigint IS NULL OR id < $3)
            ORDER BY id DESC
            LIMIT $4""",
        customer_id,
        instance_id,
        before_id,
        limit,
    )
    return [AuditEntry(**dict(r)) for r in rows]
