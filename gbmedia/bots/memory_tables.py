"""Dialog tables held in memory, optionally kept in a JSON scratch file: ``gbmedia bot run``'s tables.

An author trying a dialog in the terminal has no instance and should not need a
database: TABLE, SAVE, FIND, MERGE and DELETE work here with the same rules as in
PostgreSQL (``auto`` numbering and ``unique`` fields through
:func:`~gbmedia.bots.tables.complete_row`), so what a dialog does here it does on a node.
With a scratch file the rows outlive the run (a form filled in one run, reported in the next).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmedia.bots.errors import Fault
from gbmedia.bots.tables import check_table_name, complete_row


@dataclass
class MemoryTables:
    """The TableStore of a terminal run: ``fields`` per table, rows numbered from 1."""

    declared: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    next_id: int = 1

    @classmethod
    def load(cls, path: Path) -> MemoryTables:
        """The tables a scratch file holds (none when it does not exist yet)."""
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        tables = cls(
            declared={k: list(v) for k, v in raw.get("fields", {}).items()},
            data={k: [(int(i), dict(r)) for i, r in v] for k, v in raw.get("rows", {}).items()},
        )
        tables.next_id = 1 + max((i for rows in tables.data.values() for i, _ in rows), default=0)
        return tables

    def dump(self, path: Path) -> None:
        path.write_text(
            json.dumps({"fields": self.declared, "rows": self.data}, indent=1, default=str), encoding="utf-8"
        )

    async def declare(self, name: str, fields: list[dict[str, Any]]) -> None:
        self.declared[check_table_name(name)] = list(fields)
        self.data.setdefault(name, [])

    async def fields(self, name: str) -> list[dict[str, Any]]:
        if check_table_name(name) not in self.declared:
            raise Fault(f"table {name} is not declared (TABLE {name} ... END TABLE)")
        return list(self.declared[name])

    async def insert(self, name: str, row: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
        rows = self.data.setdefault(name, [])
        complete_row(name, row, fields, rows)
        rows.append((self.next_id, dict(row)))
        self.next_id += 1
        return row

    async def rows(self, name: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        return [(i, dict(r)) for i, r in self.data.get(name, [])[:limit]]

    async def replace(self, name: str, row_id: int, row: dict[str, Any], fields: list[dict[str, Any]]) -> None:
        rows = self.data.get(name, [])
        complete_row(name, row, fields, rows, skip_id=row_id)
        self.data[name] = [(i, dict(row) if i == row_id else r) for i, r in rows]

    async def remove(self, name: str, row_ids: list[int]) -> int:
        rows = self.data.get(name, [])
        kept = [(i, r) for i, r in rows if i not in set(row_ids)]
        self.data[name] = kept
        return len(rows) - len(kept)
