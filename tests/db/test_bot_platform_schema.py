"""The older bot platform's tables (0002_bot_platform.sql) and docs/schema.md.

Database tests use the ``pool`` fixture: a fresh database of their own with every
migration applied, so they do not clean up after themselves.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "gbmedia" / "db" / "migrations"
SCHEMA_DOC = ROOT / "docs" / "schema.md"

# Every table of the older General Bots platform (docs/schema.md says where each went).
OLD_TABLES = {
    "GuaribasInstance",
    "GuaribasPackage",
    "GuaribasChannel",
    "GuaribasLog",
    "GuaribasApplications",
    "GuaribasSchedule",
    "GuaribasAdmin",
    "GuaribasUser",
    "GuaribasGroup",
    "GuaribasUserGroup",
    "GuaribasSubject",
    "GuaribasQuestion",
    "GuaribasAnswer",
    "GuaribasQuestionAlternate",
    "GuaribasConversation",
    "GuaribasConversationMessage",
    "BOnlineSubscription",
}

# Tables of 0002 whose rows belong to an instance (all of them carry instance_id).
BOT_PLATFORM_TABLES = [
    "packages",
    "channels",
    "instance_logs",
    "applications",
    "schedules",
    "instance_settings",
    "bot_users",
    "bot_groups",
    "bot_user_groups",
    "kb_subjects",
    "kb_questions",
    "kb_answers",
    "kb_question_alternates",
]

_CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)(\s+PARTITION\s+OF\b)?", re.IGNORECASE)


def created_tables() -> set[str]:
    """Every table a migration file creates, partitions excluded."""
    names = set()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        sql = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        for match in _CREATE_TABLE.finditer(sql):
            if not match[2]:
                names.add(match[1])
    return names


def old_table_mapping() -> dict[str, list[str]]:
    """Rows of the "Old platform table → gbmedia table" table: old name → new names."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    heading = text.index("Old platform table → gbmedia table")
    mapping: dict[str, list[str]] = {}
    for line in text[heading:].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\w+", cells[0]):
            mapping[cells[0]] = re.findall(r"`(\w+)`", cells[1])
    return mapping


# --- documentation -------------------------------------------------------------


def test_every_migration_table_is_documented() -> None:
    tables = created_tables()
    # Sanity: the parser sees both files and skips the message partitions.
    assert {"customers", "messages", "bot_users", "kb_question_alternates"} <= tables
    assert not any(name.startswith("messages_p") for name in tables)
    doc = SCHEMA_DOC.read_text(encoding="utf-8")
    missing = sorted(name for name in tables | {"schema_migrations"} if f"`{name}`" not in doc)
    assert not missing, f"tables not described in docs/schema.md: {missing}"


def test_mapping_covers_every_old_table() -> None:
    mapping = old_table_mapping()
    assert set(mapping) == OLD_TABLES
    created = created_tables()
    for old, new in mapping.items():
        assert new, f"{old} maps to no table"
        assert set(new) <= created, f"{old} maps to tables no migration creates: {new}"


# --- the database ----------------------------------------------------------------


async def new_instance(conn: asyncpg.Connection, name: str = "i") -> uuid.UUID:
    customer = await conn.fetchval(
        "INSERT INTO customers (name, subscription_tier, max_instances) VALUES ('c', 'free', 1) RETURNING id"
    )
    return await conn.fetchval(
        "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, $2, 0, 'local') RETURNING id",
        customer,
        name,
    )


async def populate(conn: asyncpg.Connection, instance: uuid.UUID) -> dict[str, uuid.UUID]:
    """One row in every table of 0002, linked the way the application links them."""
    ids: dict[str, uuid.UUID] = {}
    ids["package"] = await conn.fetchval(
        "INSERT INTO packages (instance_id, name, kind) VALUES ($1, 'faq.gbkb', 'gbkb') RETURNING id", instance
    )
    await conn.execute("INSERT INTO channels (instance_id, kind, name) VALUES ($1, 'whatsapp', 'wa')", instance)
    await conn.execute("INSERT INTO instance_logs (instance_id, message) VALUES ($1, 'started')", instance)
    await conn.execute("INSERT INTO applications (instance_id, name) VALUES ($1, 'crm')", instance)
    await conn.execute(
        "INSERT INTO schedules (instance_id, dialog_name, cron) VALUES ($1, 'report', '0 9 * * 1-5')", instance
    )
    await conn.execute("INSERT INTO instance_settings (instance_id, key, value) VALUES ($1, 'welcome', 'Hi')", instance)
    ids["user"] = await conn.fetchval(
        """INSERT INTO bot_users (instance_id, system_id, display_name, email, default_channel)
           VALUES ($1, '5511999990000', 'Ana', 'ana@example.com', 'whatsapp') RETURNING id""",
        instance,
    )
    ids["group"] = await conn.fetchval(
        "INSERT INTO bot_groups (instance_id, name) VALUES ($1, 'admins') RETURNING id", instance
    )
    await conn.execute(
        "INSERT INTO bot_user_groups (instance_id, group_id, user_id) VALUES ($1, $2, $3)",
        instance,
        ids["group"],
        ids["user"],
    )
    ids["subject"] = await conn.fetchval(
        """INSERT INTO kb_subjects (instance_id, package_id, title, responsible_user_id)
           VALUES ($1, $2, 'Billing', $3) RETURNING id""",
        instance,
        ids["package"],
        ids["user"],
    )
    ids["answer"] = await conn.fetchval(
        """INSERT INTO kb_answers (instance_id, package_id, content, format)
           VALUES ($1, $2, 'Pay by card.', 'markdown') RETURNING id""",
        instance,
        ids["package"],
    )
    ids["question"] = await conn.fetchval(
        """INSERT INTO kb_questions (instance_id, package_id, subject_id, answer_id, content, keywords)
           VALUES ($1, $2, $3, $4, 'How do I pay?', '{pay,card}') RETURNING id""",
        instance,
        ids["package"],
        ids["subject"],
        ids["answer"],
    )
    await conn.execute(
        "INSERT INTO kb_question_alternates (instance_id, question_id, content) VALUES ($1, $2, 'Payment?')",
        instance,
        ids["question"],
    )
    return ids


async def counts(conn: asyncpg.Connection, instance: uuid.UUID) -> dict[str, int]:
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE instance_id = $1", instance)
        for table in BOT_PLATFORM_TABLES
    }


async def test_mapped_tables_exist(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        """SELECT table_name FROM information_schema.tables
           WHERE table_schema = current_schema() AND table_type IN ('BASE TABLE', 'PARTITIONED TABLE')"""
    )
    existing = {r["table_name"] for r in rows}
    wanted = {name for names in old_table_mapping().values() for name in names}
    wanted |= set(BOT_PLATFORM_TABLES) | {"schema_migrations"}
    assert not wanted - existing, f"missing tables: {sorted(wanted - existing)}"
    versions = [r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions[:2] == [1, 2]


async def test_every_bot_platform_table_belongs_to_an_instance(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        """SELECT table_name, is_nullable FROM information_schema.columns
           WHERE table_schema = current_schema() AND column_name = 'instance_id'
             AND table_name = ANY($1::text[])""",
        BOT_PLATFORM_TABLES,
    )
    assert {r["table_name"]: r["is_nullable"] for r in rows} == dict.fromkeys(BOT_PLATFORM_TABLES, "NO")


async def test_deleting_an_instance_deletes_its_bot_platform_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        doomed = await new_instance(conn, "doomed")
        kept = await new_instance(conn, "kept")
        await populate(conn, doomed)
        await populate(conn, kept)
        assert all(n >= 1 for n in (await counts(conn, doomed)).values())

        await conn.execute("DELETE FROM instances WHERE id = $1", doomed)

        assert await counts(conn, doomed) == dict.fromkeys(BOT_PLATFORM_TABLES, 0)
        assert all(n >= 1 for n in (await counts(conn, kept)).values())


async def test_deleting_a_customer_reaches_the_bot_platform_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        await populate(conn, instance)
        await conn.execute(
            "DELETE FROM customers WHERE id = (SELECT customer_id FROM instances WHERE id = $1)", instance
        )
        assert await counts(conn, instance) == dict.fromkeys(BOT_PLATFORM_TABLES, 0)


async def test_deleting_a_package_deletes_its_knowledge_base(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        ids = await populate(conn, instance)
        await conn.execute("DELETE FROM packages WHERE id = $1", ids["package"])
        left = await counts(conn, instance)
        assert left["kb_subjects"] == left["kb_questions"] == left["kb_answers"] == 0
        assert left["kb_question_alternates"] == 0
        assert left["bot_users"] == 1


async def test_user_and_group_deletion_ends_membership(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        ids = await populate(conn, instance)
        await conn.execute("DELETE FROM bot_users WHERE id = $1", ids["user"])
        assert await conn.fetchval("SELECT count(*) FROM bot_user_groups") == 0
        assert await conn.fetchval("SELECT count(*) FROM bot_groups") == 1
        # The subject it was responsible for stays, without a responsible user.
        row = await conn.fetchrow("SELECT instance_id, responsible_user_id FROM kb_subjects")
        assert row["instance_id"] == instance
        assert row["responsible_user_id"] is None


async def test_bot_user_defaults(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        row = await conn.fetchrow(
            "INSERT INTO bot_users (instance_id, system_id) VALUES ($1, 'u1') RETURNING *", instance
        )
        assert row["agent_mode"] == "bot"
        assert row["params"] == {}
        assert row["locale"] is None
        assert row["created_at"] is not None


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("INSERT INTO instance_settings (instance_id, key, value) VALUES ($1, 'welcome', 'again')", ()),
        ("INSERT INTO bot_users (instance_id, system_id) VALUES ($1, '5511999990000')", ()),
        ("INSERT INTO bot_groups (instance_id, name) VALUES ($1, 'admins')", ()),
        ("INSERT INTO packages (instance_id, name, kind) VALUES ($1, 'faq.gbkb', 'gbkb')", ()),
        ("INSERT INTO schedules (instance_id, dialog_name, cron) VALUES ($1, 'report', '* * * * *')", ()),
        ("INSERT INTO bot_user_groups (instance_id, group_id, user_id) VALUES ($1, $2, $3)", ("group", "user")),
        (
            "INSERT INTO kb_question_alternates (instance_id, question_id, content) VALUES ($1, $2, 'Payment?')",
            ("question",),
        ),
    ],
)
async def test_unique_constraints_reject_duplicates(pool: asyncpg.Pool, sql: str, args: tuple[str, ...]) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        ids = await populate(conn, instance)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(sql, instance, *(ids[a] for a in args))


async def test_same_keys_are_fine_in_another_instance(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await populate(conn, await new_instance(conn, "a"))
        await populate(conn, await new_instance(conn, "b"))
        assert await conn.fetchval("SELECT count(*) FROM bot_users WHERE system_id = '5511999990000'") == 2


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO bot_users (instance_id, system_id, agent_mode) VALUES ($1, 'u2', 'robot')",
        "INSERT INTO bot_users (instance_id, system_id, default_channel) VALUES ($1, 'u2', 'pigeon')",
        "INSERT INTO channels (instance_id, kind, name) VALUES ($1, 'fax', 'f')",
        "INSERT INTO packages (instance_id, name, kind) VALUES ($1, 'x.zip', 'zip')",
        "INSERT INTO instance_logs (instance_id, level, message) VALUES ($1, 'loud', 'm')",
        "INSERT INTO kb_answers (instance_id, content, format) VALUES ($1, 'a', 'pdf')",
        "INSERT INTO schedules (instance_id, dialog_name, cron) VALUES ($1, 'd', 'every day')",
        "INSERT INTO instance_settings (instance_id, key, value) VALUES ($1, '', 'v')",
    ],
)
async def test_check_constraints_reject_bad_values(pool: asyncpg.Pool, sql: str) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(sql, instance)


async def test_rows_cannot_point_into_another_instance(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        a = await new_instance(conn, "a")
        b = await new_instance(conn, "b")
        ids_a = await populate(conn, a)
        ids_b = await populate(conn, b)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO bot_user_groups (instance_id, group_id, user_id) VALUES ($1, $2, $3)",
                a,
                ids_a["group"],
                ids_b["user"],
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO kb_questions (instance_id, answer_id, content) VALUES ($1, $2, 'q')",
                a,
                ids_b["answer"],
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO kb_subjects (instance_id, parent_id, title) VALUES ($1, $2, 't')",
                a,
                ids_b["subject"],
            )


async def test_subject_tree(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        ids = await populate(conn, instance)
        root = ids["subject"]
        child = await conn.fetchval(
            "INSERT INTO kb_subjects (instance_id, parent_id, title) VALUES ($1, $2, 'Cards') RETURNING id",
            instance,
            root,
        )
        leaf = await conn.fetchval(
            "INSERT INTO kb_subjects (instance_id, parent_id, title) VALUES ($1, $2, 'Visa') RETURNING id",
            instance,
            child,
        )
        path = await conn.fetchval(
            """WITH RECURSIVE up AS (
                   SELECT id, parent_id, title, 0 AS depth FROM kb_subjects WHERE id = $1
                   UNION ALL
                   SELECT s.id, s.parent_id, s.title, up.depth + 1
                   FROM kb_subjects s JOIN up ON s.id = up.parent_id)
               SELECT string_agg(title, '/' ORDER BY depth DESC) FROM up""",
            leaf,
        )
        assert path == "Billing/Cards/Visa"

        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO kb_subjects (instance_id, parent_id, title) VALUES ($1, $2, 'orphan')",
                instance,
                uuid.uuid4(),
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE kb_subjects SET parent_id = id WHERE id = $1", leaf)

        # A question filed under the leaf keeps existing when its subject goes.
        await conn.execute("UPDATE kb_questions SET subject_id = $1 WHERE id = $2", leaf, ids["question"])
        await conn.execute("DELETE FROM kb_subjects WHERE id = $1", child)  # takes the subtree
        assert await conn.fetchval("SELECT array_agg(title) FROM kb_subjects") == ["Billing"]
        question = await conn.fetchrow(
            "SELECT instance_id, subject_id FROM kb_questions WHERE id = $1", ids["question"]
        )
        assert question["instance_id"] == instance
        assert question["subject_id"] is None


async def test_answer_chain_and_question_lifetime(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        ids = await populate(conn, instance)
        first = ids["answer"]
        second = await conn.fetchval(
            "INSERT INTO kb_answers (instance_id, content, prev_id) VALUES ($1, 'Step 2', $2) RETURNING id",
            instance,
            first,
        )
        await conn.execute("UPDATE kb_answers SET next_id = $1 WHERE id = $2", second, first)

        await conn.execute("DELETE FROM kb_answers WHERE id = $1", second)
        row = await conn.fetchrow("SELECT instance_id, next_id FROM kb_answers WHERE id = $1", first)
        assert row["instance_id"] == instance
        assert row["next_id"] is None

        # A question goes with its answer, and its alternates with it.
        await conn.execute("DELETE FROM kb_answers WHERE id = $1", first)
        assert await conn.fetchval("SELECT count(*) FROM kb_questions") == 0
        assert await conn.fetchval("SELECT count(*) FROM kb_question_alternates") == 0


async def test_question_requires_an_answer(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("INSERT INTO kb_questions (instance_id, content) VALUES ($1, 'q')", instance)


async def test_instance_logs_are_append_only_identity(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        instance = await new_instance(conn)
        first = await conn.fetchval(
            "INSERT INTO instance_logs (instance_id, message) VALUES ($1, 'a') RETURNING id", instance
        )
        second = await conn.fetchval(
            "INSERT INTO instance_logs (instance_id, message, details) VALUES ($1, 'b', '{\"k\": 1}') RETURNING id",
            instance,
        )
        assert second > first
        assert await conn.fetchval("SELECT details FROM instance_logs WHERE id = $1", second) == {"k": 1}
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await conn.execute("INSERT INTO instance_logs (id, instance_id, message) VALUES (1, $1, 'c')", instance)
