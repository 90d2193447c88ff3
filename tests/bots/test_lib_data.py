"""TABLE, SAVE, FIND, MERGE and DELETE against PostgreSQL, each instance seeing only its own rows."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from gbmedia.bots.lib_data import parse_filter
from gbmedia.bots.tables import PgTables
from tests.bots.helpers import said, talk_with

PEOPLE = """
TABLE people
  id integer key auto
  name * string(20)
  email string(100) unique
  born date
  score number
  active boolean
  code guid auto
END TABLE
"""


async def new_instance(pool: asyncpg.Pool, name: str) -> str:
    customer = await pool.fetchval(
        "INSERT INTO customers (name, subscription_tier, max_instances) VALUES ($1, 'free', 2) RETURNING id", name
    )
    instance = await pool.fetchval(
        "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, $2, 0, 'local') RETURNING id",
        customer,
        name,
    )
    return str(instance)


@pytest.fixture
async def tables(pool: asyncpg.Pool) -> PgTables:
    return PgTables(pool, await new_instance(pool, f"a-{uuid.uuid4().hex[:6]}"))


async def test_save_then_find_with_every_operator(tables: PgTables):
    source = (
        PEOPLE
        + """
SAVE "people", "Ana", "ana@x.com", "31/12/1990", 9.5, "sim"
SAVE "people", "Bruno", "bruno@x.com", "1985-01-02", 7, FALSE
SAVE "people", "Cássia", "", "", 8, TRUE
one = FIND "people", "name=ANA"
TALK one.id, one.name, one.born, one.score, one.active, LEN(one.code)
above = FIND "people", "score>7"
TALK UBOUND(above)
between = FIND "people", "score>=7", "score<9"
TALK TOLIST(between, "name")
x = FIND "people", "name=cassia"
TALK x.id, ISEMPTY(x.email), ISEMPTY(x.born)
named = FIND "people", "name in ana;bruno"
others = FIND "people", "name not in ana;bruno"
TALK UBOUND(named), others.name
nobody = FIND "people", "name=nobody"
not2 = FIND "people", "id<>2"
TALK ISEMPTY(nobody), UBOUND(not2)
"""
    )
    assert await said(source, tables=tables, locale="pt") == [
        "1 Ana 1990-12-31 9.5 true 36",
        "2",
        "Bruno, Cássia",
        "3 true true",
        "2 Cássia",
        "true 2",
    ]


async def test_find_returns_a_row_a_list_or_empty(tables: PgTables):
    source = (
        PEOPLE
        + """
SAVE "people", "Ana", "a@x.com"
SAVE "people", "Bia", "b@x.com"
a = FIND "people", "name=ana"
b = FIND "people", "id>0"
c = FIND "people", "id>5"
TALK ISARRAY(a), ISARRAY(b), ISEMPTY(c)
FOR EACH p IN a
  TALK p.email
NEXT
"""
    )
    assert await said(source, tables=tables) == ["false true true", "a@x.com"]


async def test_save_checks_required_sizes_types_and_unique_fields(tables: PgTables):
    await said(PEOPLE + 'SAVE "people", "Ana", "a@x.com"', tables=tables)
    for statement, message in [
        ('SAVE "people", "", "z@x.com"', "field name of table people is required"),
        ('SAVE "people", "A name that is far too long", ""', "field name of table people holds at most 20 characters"),
        ('SAVE "people", "Bo", "A@X.com"', "table people already has a row with email = A@X.com"),
        ('SAVE "people", "Bo", "", "not a date"', "'not a date' is not a date"),
        ('SAVE "people", "Bo", "", "", "many"', "'many' is not a number"),
        ('SAVE "people", 1, 2, 3, 4, 5, 6', "table people has 5 fields to fill, SAVE gave 6 values"),
        ('SAVE "nosuch", 1', "table nosuch is not declared (TABLE nosuch ... END TABLE)"),
        ('SAVE "bad name", 1', "'bad name' is not a table name"),
    ]:
        outcome, _ = await talk_with(statement, tables=tables)
        assert outcome.status == "failed" and message in outcome.error.message, (statement, outcome.error)


async def test_save_an_object_by_field_names(tables: PgTables):
    source = (
        PEOPLE
        + 'o = NEW OBJECT\no.NAME = "Ana"\no.score = "3"\nSAVE "people", o\n'
        + 'r = FIND "people", "name=ana"\nTALK r.score + 1'
    )
    assert await said(source, tables=tables) == ["4"]


async def test_merge_adds_updates_and_skips_by_key(tables: PgTables):
    source = (
        PEOPLE
        + """
SAVE "people", "Ana", "a@x.com", "", 1
rows = PARSEJSON("[{""email"": ""a@x.com"", ""name"": ""Ana"", ""score"": 2}, " + _
                 "{""email"": ""b@x.com"", ""name"": ""Bia""}]")
r = MERGE "people" WITH rows BY "email"
TALK r.adds, r.updates, r.skipped
MERGE "people" WITH rows BY "email"
a = FIND "people", "email=a@x.com"
all = FIND "people", "id>0"
TALK a.score, a.id, UBOUND(all)
"""
    )
    assert await said(source, tables=tables) == ["1 1 0", "2 1 2"]
    outcome, _ = await talk_with('x = MERGE "people" WITH [1] BY "email"', tables=tables)
    assert "MERGE takes objects, not number" in outcome.error.message
    outcome, _ = await talk_with('x = MERGE "people" WITH NEW OBJECT BY "nope"', tables=tables)
    assert "table people has no field nope" in outcome.error.message


async def test_delete_rows_by_filter(tables: PgTables):
    source = PEOPLE + 'SAVE "people", "Ana"\nSAVE "people", "Bia"\nSAVE "people", "Caio"\n'
    source += 'n = DELETE "people", "name in ana;caio"\nleft = FIND "people", "id>0"\n'
    source += 'TALK n, left.name\nDELETE "people", "name=zz"'
    assert await said(source, tables=tables) == ["2 Bia"]


async def test_an_instance_never_sees_another_instances_rows(pool: asyncpg.Pool, tables: PgTables):
    await said(PEOPLE + 'SAVE "people", "Ana", "ana@a.com"', tables=tables)
    other = PgTables(pool, await new_instance(pool, f"b-{uuid.uuid4().hex[:6]}"))
    outcome, _ = await talk_with('x = FIND "people", "name=ana"', tables=other)
    assert "table people is not declared" in outcome.error.message
    await said(PEOPLE + 'SAVE "people", "Ana", "ana@a.com"\nTALK "saved"', tables=other)  # unique per instance only
    assert await said('n = DELETE "people", "name=ana"\nTALK n', tables=other) == ["1"]
    assert await said('x = FIND "people", "name=ana"\nTALK x.email', tables=tables) == ["ana@a.com"]


async def test_find_over_a_list_in_memory_and_the_filter_parser():
    source = 'l = PARSEJSON("[{""a"": 1}, {""a"": 5}, {""a"": 9}]")\nTALK FIND(l, "a>=5")\n'
    source += 'f = GETFILTER("age >= 18")\nTALK f.op'
    assert await said(source) == ['[{"a": 5}, {"a": 9}]', ">="]
    assert parse_filter("city not in Rio;SP").op == "NOTIN"
    outcome, _ = await talk_with('x = GETFILTER("nonsense")')
    assert "is not a filter" in outcome.error.message


async def test_tables_are_not_available_without_a_store():
    outcome, _ = await talk_with('x = FIND "people", "a=1"')
    assert "tables are not available to this run" in outcome.error.message


async def test_a_table_read_is_bounded_by_the_list_limit(tables: PgTables):
    from gbmedia.bots.limits import Limits

    source = PEOPLE + 'FOR i = 1 TO 12\n SAVE "people", "p${i}"\nNEXT\nx = FIND "people", "id>0"'
    outcome, _ = await talk_with(source, tables=tables, limits=Limits(max_list_items=10))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_LIST_ITEMS"


async def test_runs_saving_at_once_get_distinct_numbers_and_unique_values_stay_unique(tables: PgTables):
    import asyncio

    await said(PEOPLE, tables=tables)
    results = await asyncio.gather(
        *(talk_with(f'SAVE "people", "P{i}", "same@x.com"', tables=tables) for i in range(8))
    )
    assert sum(1 for outcome, _ in results if outcome.status == "done") == 1  # one took the e-mail, seven were refused
    results = await asyncio.gather(*(talk_with(f'SAVE "people", "Q{i}"', tables=tables) for i in range(8)))
    assert all(outcome.status == "done" for outcome, _ in results)
    ids = [row["id"] for _, row in await tables.rows("people", 100)]
    assert sorted(ids) == list(range(1, 10))
