"""Migrations: from an empty database, once only, all or nothing, one node at a time."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gbmedia.db import migrate as migrate_module
from gbmedia.db.migrate import Migration, available_migrations, migrate


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrations_from_empty_create_the_seed_tables_with_their_columns(empty_database_url: str):
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in available_migrations()]
        assert {
            "customers",
            "instances",
            "rooms",
            "messages",
            "subscriptions",
            "usage_events",
            "api_keys",
            "audit_log",
            "plans",
            "conversations",
            "schema_migrations",
        } <= await tables(conn)
        seed_columns = {
            "customers": {"id", "name", "subscription_tier", "status", "max_instances", "metadata", "created_at"},
            "instances": {"id", "customer_id", "name", "status", "shard_id", "region", "config", "created_at"},
            "rooms": {"id", "customer_id", "instance_id", "name", "kind", "status", "config", "created_at"},
            "messages": {
                "id",
                "customer_id",
                "instance_id",
                "conversation_id",
                "sender_id",
                "kind",
                "content",
                "metadata",
                "created_at",
                "shard_key",
            },
        }
        for table, columns in seed_columns.items():
            rows = await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
            assert columns <= {r["column_name"] for r in rows}, table
        assert await migrate(conn) == []  # a second run applies nothing
    finally:
        await conn.close()


async def test_messages_are_hash_partitioned_by_shard_key(empty_database_url: str):
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn)
        strategy = await conn.fetchval(
            "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'messages'::regclass"
        )
        partitions = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass")
        assert (strategy, partitions) == ("h", 8)
        customer = await conn.fetchval(
            "INSERT INTO customers (name, subscription_tier, max_instances) VALUES ('c', 'free', 1) RETURNING id"
        )
        instance = await conn.fetchval(
            "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, 'i', 0, 'local') RETURNING id",
            customer,
        )
        conversation = await conn.fetchval(
            "INSERT INTO conversations (customer_id, instance_id, kind) VALUES ($1, $2, 'group') RETURNING id",
            customer,
            instance,
        )
        for shard_key in (1, 2, 3, 12345):
            await conn.execute(
                "INSERT INTO messages (shard_key, customer_id, instance_id, conversation_id, "
                "sender_id, content) VALUES ($1, $2, $3, $4, 'u', 'hi')",
                shard_key,
                customer,
                instance,
                conversation,
            )
        assert await conn.fetchval("SELECT count(*) FROM messages") == 4
        used = await conn.fetchval("SELECT count(DISTINCT tableoid) FROM messages")
        assert used >= 2  # rows spread over partitions
    finally:
        await conn.close()


async def test_concurrent_nodes_apply_each_migration_once(empty_database_url: str):
    conns = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        counts = sorted(len(r) for r in results)
        assert counts == [0, 0, len(available_migrations())]
        rows = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert rows == len(available_migrations())
    finally:
        for conn in conns:
            await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(empty_database_url: str, monkeypatch):
    real = available_migrations()
    broken = Migration(9999, "broken", "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: [*real, broken])
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn)
        assert "half_done" not in await tables(conn)
        versions = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        assert versions == {m.version for m in real}  # the good ones stay applied
        # The advisory lock was released: another session can migrate at once.
        other = await asyncpg.connect(empty_database_url)
        try:
            monkeypatch.setattr(migrate_module, "available_migrations", lambda: real)
            assert await asyncio.wait_for(migrate(other), 10) == []
        finally:
            await other.close()
    finally:
        await conn.close()


def test_migration_files_are_numbered_without_gaps():
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))
