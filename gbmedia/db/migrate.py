"""Versioned schema migrations: numbered SQL files applied once, in order.

Each file in ``migrations/`` is named ``NNNN_description.sql`` and runs in its own
transaction together with the row that records it, so a failed migration leaves
nothing half-applied. An advisory lock serialises nodes that start at the same time.
(A library such as Alembic would bring SQLAlchemy and a second, synchronous driver
for what is a loop over files; this keeps asyncpg the only database dependency.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_ID = 0x6762_6D65  # "gbme": any constant shared by every node
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("gbmedia.db.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration; returns what was applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        done = await applied_versions(conn)
        applied = []
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("migration applied", extra={"version": migration.version, "migration": migration.name})
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
