"""An instance's dialog tables in PostgreSQL (migration 0007: ``bot_tables``, ``bot_rows``).

The pool's connections encode and decode JSON themselves (gbmedia.db.pool), so values go
in and come out as Python lists and dicts.

Built for one instance: every query carries its id, so a dialog can reach no other
tenant's rows whatever table name it writes.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from gbmedia.bots.errors import Fault
from gbmedia.bots.values import compare, to_number, to_text

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise Fault(f"{name!r} is not a table name (letters, digits and _, up to 63)")
    return name


def complete_row(
    table: str,
    row: dict[str, Any],
    fields: list[dict[str, Any]],
    existing: list[tuple[int, dict[str, Any]]],
    skip_id: int | None = None,
) -> dict[str, Any]:
    """Number the row's empty ``auto`` integer fields and refuse a value a ``unique`` or ``key`` field already has."""
    for f in fields:
        name = f["name"]
        if f.get("auto") and f["type"] == "integer" and row.get(name) is None:
            taken = [int(to_number(r.get(name))) for _, r in existing if r.get(name) is not None]
            row[name] = 1 + max(taken, default=0)
        if (f.get("unique") or f.get("key")) and row.get(name) is not None:
            for row_id, other in existing:
                if row_id != skip_id and compare("=", other.get(name), row[name]):
                    raise Fault(f"table {table} already has a row with {name} = {to_text(row[name])}")
    return row


class PgTables:
    """The TableStore of one instance."""

    def __init__(self, pool: asyncpg.Pool, instance_id: str) -> None:
        self.pool = pool
        self.instance_id = instance_id

    async def declare(self, name: str, fields: list[dict[str, Any]]) -> None:
        await self.pool.execute(
            """INSERT INTO bot_tables (instance_id, name, fields) VALUES ($1, $2, $3::jsonb)
               ON CONFLICT (instance_id, name) DO UPDATE SET fields = EXCLUDED.fields, updated_at = now()""",
            self.instance_id,
            check_table_name(name),
            fields,
        )

    async def fields(self, name: str) -> list[dict[str, Any]]:
        raw = await self.pool.fetchval(
            "SELECT fields FROM bot_tables WHERE instance_id = $1 AND name = $2",
            self.instance_id,
            check_table_name(name),
        )
        if raw is None:
            raise Fault(f"table {name} is not declared (TABLE {name} ... END TABLE)")
        return list(raw)

    async def insert(self, name: str, row: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
        """Add a row, numbering and checking it under the table's lock: two runs saving at once get two numbers."""
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await self._locked_rows(conn, name)
            complete_row(name, row, fields, existing)
            await conn.execute(
                "INSERT INTO bot_rows (instance_id, table_name, data) VALUES ($1, $2, $3::jsonb)",
                self.instance_id,
                name,
                row,
            )
        return row

    async def _locked_rows(self, conn: asyncpg.Connection, name: str) -> list[tuple[int, dict[str, Any]]]:
        lock = f"bot_rows/{self.instance_id}/{name}"  # one writer per table at a time; readers are not held up
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
        records = await conn.fetch(
            "SELECT id, data FROM bot_rows WHERE instance_id = $1 AND table_name = $2", self.instance_id, name
        )
        return [(r["id"], dict(r["data"])) for r in records]

    async def rows(self, name: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        records = await self.pool.fetch(
            "SELECT id, data FROM bot_rows WHERE instance_id = $1 AND table_name = $2 ORDER BY id LIMIT $3",
            self.instance_id,
            name,
            limit,
        )
        return [(r["id"], dict(r["data"])) for r in records]

    async def replace(self, name: str, row_id: int, row: dict[str, Any], fields: list[dict[str, Any]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            complete_row(name, row, fields, await self._locked_rows(conn, name), skip_id=row_id)
            await conn.execute(
                """UPDATE bot_rows SET data = $4::jsonb, updated_at = now()
                   WHERE instance_id = $1 AND table_name = $2 AND id = $3""",
                self.instance_id,
                name,
                row_id,
                row,
            )

    async def remove(self, name: str, row_ids: list[int]) -> int:
        result = await self.pool.execute(
            "DELETE FROM bot_rows WHERE instance_id = $1 AND table_name = $2 AND id = ANY($3::bigint[])",
            self.instance_id,
            name,
            row_ids,
        )
        return int(result.split()[-1])
