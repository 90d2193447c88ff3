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

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise Fault(f"{name!r} is not a table name (letters, digits and _, up to 63)")
    return name


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

    async def insert(self, name: str, row: dict[str, Any]) -> dict[str, Any]:
        await self.pool.execute(
            "INSERT INTO bot_rows (instance_id, table_name, data) VALUES ($1, $2, $3::jsonb)",
            self.instance_id,
            name,
            row,
        )
        return row

    async def rows(self, name: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        records = await self.pool.fetch(
            "SELECT id, data FROM bot_rows WHERE instance_id = $1 AND table_name = $2 ORDER BY id LIMIT $3",
            self.instance_id,
            name,
            limit,
        )
        return [(r["id"], dict(r["data"])) for r in records]

    async def replace(self, name: str, row_id: int, row: dict[str, Any]) -> None:
        await self.pool.execute(
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
