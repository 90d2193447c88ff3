"""The keyword API's storage names over an instance's tables, and ``executeSQL`` over a list.

Tables are the rows of migration 0007's typed JSONB store (``bot_tables`` declares a
table's fields, ``bot_rows`` holds its rows, both keyed by the instance): ``TABLE ...
END TABLE`` declares, ``save``/``find``/``merge``/``delete`` (gbmedia/bots/lib_data.py)
and these read and write. ``executeSQL`` never touches the server's database: it loads
the list it is given into an in-memory SQLite database of its own, lets only reading
statements run there (SQLite's authorizer refuses any write, ATTACH or PRAGMA), under
an instruction budget, in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_data import _build_row, _table_rows, parse_filter
from gbmedia.bots.limits import OverLimit
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.tables import check_table_name
from gbmedia.bots.values import kind_of, to_text

builtin = REGISTRY.builtin

SQL_STEPS = 5_000_000  # SQLite virtual-machine instructions one executeSQL may run
_READING = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}


@builtin("saveToStorageBatch", "table, rows", group="data")
async def save_batch(ctx: Context, table: Any, rows: Any) -> int:
    """Add many rows to a declared table (a list of objects, or of value lists in the fields' order): how many."""
    name = check_table_name(to_text(table))
    if not isinstance(rows, list):
        raise Fault(f"saveToStorageBatch takes a list of rows, not {kind_of(rows)}")
    ctx.budget.check_value(rows)
    store = ctx.need_tables()
    built = []
    for item in rows:  # every row is checked before any is stored
        values = tuple(item) if isinstance(item, list) else (item,)
        built.append(await _build_row(ctx, name, values))
    for row, fields in built:
        await store.insert(name, row, fields)
    return len(built)


@builtin("deleteFromStorage", "table, filter, filters...", group="data")
async def delete_from_storage(ctx: Context, table: Any, *filters: Any) -> int:
    """Remove the rows of a table matching every filter (at least one: a whole table is not wiped by mistake)."""
    name = check_table_name(to_text(table))
    tests = [parse_filter(to_text(f)) for f in filters]
    ids = [i for i, row in await _table_rows(ctx, name) if all(t.matches(row) for t in tests)]
    return await ctx.need_tables().remove(name, ids) if ids else 0


@builtin("getTableFromName", "table", group="data")
async def table_from_name(ctx: Context, table: Any) -> dict[str, Any]:
    """A declared table's fields: {name, fields: [{name, type, size?, required?, key?, unique?, auto?}]}."""
    name = check_table_name(to_text(table))
    return {"name": name, "fields": await ctx.need_tables().fields(name)}


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def run_sql(rows: list[dict[str, Any]], sql: str, max_rows: int) -> list[dict[str, Any]]:
    """SQL over ``rows`` as the table ``data`` (``?`` also names it), in a fresh in-memory database."""
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    db = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in columns) or '"_"'
        db.execute(f"CREATE TABLE data ({quoted})")
        if columns:
            marks = ", ".join("?" for _ in columns)
            db.executemany(f"INSERT INTO data VALUES ({marks})", [[_cell(r.get(c)) for c in columns] for r in rows])
        steps = [0]

        def progress() -> int:
            steps[0] += 1000
            return 1 if steps[0] > SQL_STEPS else 0

        db.set_progress_handler(progress, 1000)
        db.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _READING else sqlite3.SQLITE_DENY)
        text = sql.replace("?", "data") if "?" in sql and "'" not in sql else sql
        try:
            cursor = db.execute(text)
            names = [d[0] for d in cursor.description or ()]
            found = cursor.fetchmany(max_rows + 1)
        except sqlite3.DatabaseError as exc:
            if steps[0] > SQL_STEPS:
                raise Fault(f"the SQL ran past {SQL_STEPS} steps") from None
            raise Fault(f"SQL refused: {exc}") from None
        except sqlite3.Warning as exc:  # more than one statement
            raise Fault(f"SQL refused: {exc}") from None
        if len(found) > max_rows:
            raise OverLimit("list_items", max_rows)
        return [dict(zip(names, r, strict=True)) for r in found]
    finally:
        db.close()


@builtin("executeSQL", "data, sql", group="data")
async def execute_sql(ctx: Context, data: Any, sql: Any) -> list[dict[str, Any]]:
    """Run a reading SQL statement (SQLite's) over a list of objects, the table ``data``: the rows it selects.

    Never the server's database: the list goes into an in-memory database of its own,
    where nothing can be written; ``SELECT name FROM data WHERE age > 30`` (or ``FROM ?``). One object
    (what FIND gives when one row matches) is a list of one, nothing (FIND found none) an empty list.
    """
    if data is None:
        data = []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise Fault(f"executeSQL runs over a list of objects, not {kind_of(data)}")
    ctx.budget.check_value(data)
    text = to_text(sql).strip()
    if not text:
        raise Fault("executeSQL needs an SQL statement")
    return await asyncio.to_thread(run_sql, data, text, ctx.limits.max_list_items)
