"""Built-ins over an instance's tables and in-memory lists: FIND, SAVE, MERGE, DELETE, getFilter.

Filters are the old platform's: ``"col=value"`` with ``=``, ``<>``, ``<``, ``>``, ``<=``,
``>=``, ``in`` and ``not in`` (values separated by ``;``), accent- and case-insensitive.
Rows are filtered here rather than in SQL so that a list in memory and a table answer
the same filter the same way; a table read is bounded by the run's list limit.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_dates import iso, parse_date
from gbmedia.bots.limits import OverLimit
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.tables import check_table_name
from gbmedia.bots.values import compare, fold, kind_of, to_number, to_text, truthy

builtin = REGISTRY.builtin

_FILTER = re.compile(
    r"^\s*([\w.]+)\s*(<>|<=|>=|!=|=|<|>|\s+not\s+in\s+|\s+in\s+)\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL
)
TYPES = {"string", "text", "integer", "number", "double", "date", "boolean", "guid"}


@dataclass(frozen=True, slots=True)
class Filter:
    field: str
    op: str  # = <> < > <= >= IN NOTIN
    value: str

    def matches(self, row: dict[str, Any]) -> bool:
        value = field_of(row, self.field)
        if self.op in ("IN", "NOTIN"):
            options = {fold(v) for v in re.split(r"[;,]", self.value)}
            found = fold(to_text(value)) in options
            return found if self.op == "IN" else not found
        return compare(self.op, value, self.value)

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "op": self.op, "value": self.value}


def parse_filter(text: str) -> Filter:
    match = _FILTER.match(text)
    if not match:
        raise Fault(f'{text!r} is not a filter like "name=value"')
    op = " ".join(match[2].split()).upper().replace("NOT IN", "NOTIN").replace("!=", "<>")
    return Filter(match[1], op, match[3].strip().strip("'\""))


def field_of(row: Any, name: str) -> Any:
    if not isinstance(row, dict):
        return None
    if name in row:
        return row[name]
    wanted = name.casefold()
    return next((v for k, v in row.items() if str(k).casefold() == wanted), None)


@builtin("getFilter", "filter", group="data")
def get_filter(ctx: Context, text: Any) -> dict[str, str]:
    """A filter's parts: "age>=18" gives {field: "age", op: ">=", value: "18"}."""
    return parse_filter(to_text(text)).to_json()


def _one_or_list(rows: list[Any]) -> Any:
    if not rows:
        return None
    return rows[0] if len(rows) == 1 else rows


async def _table_rows(ctx: Context, table: str) -> list[tuple[int, dict[str, Any]]]:
    store = ctx.need_tables()
    check_table_name(table)
    await store.fields(table)  # a table that was never declared is an error, not an empty answer
    rows = await store.rows(table, ctx.limits.max_list_items + 1)
    if len(rows) > ctx.limits.max_list_items:
        raise OverLimit("list_items", ctx.limits.max_list_items)
    return rows


@builtin("find", "table, filters...", group="data", bare=True)
async def find(ctx: Context, source: Any, *filters: Any) -> Any:
    """Rows of a table (or items of a list) matching every filter.

    The row when one matches, a list when several, empty when none (as the old platform).
    """
    tests = [parse_filter(to_text(f)) for f in filters]
    if isinstance(source, list):
        found = [row for row in source if all(t.matches(row) for t in tests)]
    else:
        found = [row for _, row in await _table_rows(ctx, to_text(source)) if all(t.matches(row) for t in tests)]
    return _one_or_list(found)


def coerce(field: dict[str, Any], value: Any, table: str, language: str) -> Any:
    """A value as the field's declared type stores it."""
    name, kind = field["name"], field["type"]
    if value is None or value == "":
        if field.get("auto"):
            return str(uuid.uuid4()) if kind == "guid" else None  # an integer is numbered when the row is saved
        if field.get("required") or field.get("key"):
            raise Fault(f"field {name} of table {table} is required")
        return None
    try:
        if kind in ("string", "text"):
            text = to_text(value)
            if field.get("size") and len(text) > field["size"]:
                raise Fault(f"field {name} of table {table} holds at most {field['size']} characters")
            return text
        if kind == "integer":
            number = to_number(value, f"a whole number (field {name} of table {table})")
            if number != int(number):
                raise Fault(f"field {name} of table {table} takes a whole number, not {value}")
            return int(number)
        if kind in ("number", "double"):
            return to_number(value, f"a number (field {name} of table {table})")
        if kind == "date":
            return iso(parse_date(value, language))
        if kind == "boolean":
            return truthy(value)
        if kind == "guid":
            return str(uuid.UUID(to_text(value)))
    except ValueError:
        raise Fault(f"field {name} of table {table} takes a {kind}, not {to_text(value)!r}") from None
    return value  # another table's key (a foreign key): kept as given


async def _build_row(ctx: Context, table: str, values: tuple[Any, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fields = await ctx.need_tables().fields(table)
    if len(values) == 1 and isinstance(values[0], dict):
        given = {f["name"]: field_of(values[0], f["name"]) for f in fields}
    else:
        settable = [f for f in fields if not f.get("auto")]
        if len(values) > len(settable):
            raise Fault(f"table {table} has {len(settable)} fields to fill, SAVE gave {len(values)} values")
        given = {f["name"]: v for f, v in zip(settable, values, strict=False)}
    row = {f["name"]: coerce(f, given.get(f["name"]), table, ctx.language) for f in fields}
    return row, fields


@builtin("save", "table, values...", group="data", statement_only=True)
async def save(ctx: Context, table: Any, *values: Any) -> dict[str, Any]:
    """Add a row to a declared table: values in the order of its fields (auto fields skipped), or one object."""
    name = check_table_name(to_text(table))
    row, fields = await _build_row(ctx, name, values)
    ctx.budget.check_value(to_text(row))
    return await ctx.need_tables().insert(name, row, fields)


@builtin("merge", "table, data, key", group="data", bare=True)
async def merge(ctx: Context, table: Any, data: Any, key: Any) -> dict[str, int]:
    """Upsert a list of objects into a table by a key field: {adds, updates, skipped}."""
    name = check_table_name(to_text(table))
    items = data if isinstance(data, list) else [data]
    key_name = to_text(key)
    store = ctx.need_tables()
    report = {"adds": 0, "updates": 0, "skipped": 0}
    if key_name not in {f["name"] for f in await store.fields(name)}:
        raise Fault(f"table {name} has no field {key_name}")
    for item in items:
        if not isinstance(item, dict):
            raise Fault(f"MERGE takes objects, not {kind_of(item)}")
        row, fields = await _build_row(ctx, name, (item,))
        existing = next(
            ((i, r) for i, r in await _table_rows(ctx, name) if compare("=", r.get(key_name), row[key_name])), None
        )
        if existing is None:
            await store.insert(name, row, fields)
            report["adds"] += 1
            continue
        row_id, old = existing
        merged = {**old, **{k: v for k, v in row.items() if field_of(item, k) is not None}}
        if merged == old:
            report["skipped"] += 1
            continue
        await store.replace(name, row_id, merged, fields)
        report["updates"] += 1
    return report


@builtin("delete", "target, filters...", group="data", bare=True)
async def delete(ctx: Context, target: Any, *filters: Any) -> int:
    """DELETE table, "col=v": remove matching rows (their count); DELETE "file": remove a file (1 or 0)."""
    if not filters:
        return 1 if await ctx.need_files().delete(to_text(target)) else 0
    name = check_table_name(to_text(target))
    tests = [parse_filter(to_text(f)) for f in filters]
    ids = [i for i, row in await _table_rows(ctx, name) if all(t.matches(row) for t in tests)]
    return await ctx.need_tables().remove(name, ids) if ids else 0


async def declare_table(ctx: Context, name: str, fields: list[dict[str, Any]]) -> None:
    """What a TABLE statement does: record the table's fields for this instance."""
    for f in fields:
        if f["type"] not in TYPES:
            check_table_name(f["type"])  # another table's name: a foreign key
    await ctx.need_tables().declare(check_table_name(name), fields)
