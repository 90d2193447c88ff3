"""The terminal's tables keep PostgreSQL's rules: auto numbers, unique fields, a scratch file that round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from gbmedia.bots.errors import Fault
from gbmedia.bots.memory_tables import MemoryTables

FIELDS = [
    {"name": "id", "type": "integer", "auto": True, "key": True},
    {"name": "email", "type": "string", "unique": True},
]


async def test_rows_are_numbered_unique_fields_refused_and_changes_kept(tmp_path: Path) -> None:
    tables = MemoryTables()
    with pytest.raises(Fault, match="not declared"):
        await tables.fields("people")
    await tables.declare("people", FIELDS)
    assert await tables.insert("people", {"email": "a@x"}, FIELDS) == {"email": "a@x", "id": 1}
    assert (await tables.insert("people", {"email": "b@x"}, FIELDS))["id"] == 2
    with pytest.raises(Fault, match="already has a row with email = a@x"):
        await tables.insert("people", {"email": "a@x"}, FIELDS)
    (first, _), (second, _) = await tables.rows("people", 10)
    with pytest.raises(Fault, match="already has a row"):
        await tables.replace("people", second, {"id": 2, "email": "a@x"}, FIELDS)
    await tables.replace("people", second, {"id": 2, "email": "c@x"}, FIELDS)
    assert await tables.remove("people", [first, 999]) == 1

    scratch = tmp_path / "tables.json"
    tables.dump(scratch)
    again = MemoryTables.load(scratch)
    assert await again.rows("people", 10) == [(second, {"id": 2, "email": "c@x"})]
    assert await again.fields("people") == FIELDS
    await again.insert("people", {"email": "d@x"}, FIELDS)
    assert [i for i, _ in await again.rows("people", 10)] == [second, second + 1]  # ids never reused
    assert MemoryTables.load(tmp_path / "none.json").declared == {}
    with pytest.raises(Fault, match="not a table name"):
        await tables.declare("bad name", FIELDS)
