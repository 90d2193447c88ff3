"""The embedded PostgreSQL a single node runs when no database URL is configured."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from gbmedia.config import Settings
from gbmedia.db.embedded import EmbeddedPostgres, ensure_database
from gbmedia.db.pool import Database


async def test_embedded_server_keeps_data_across_restarts(tmp_path: Path):
    embedded = EmbeddedPostgres(tmp_path)
    url = await embedded.start()
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
    finally:
        await embedded.stop()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()

    again = EmbeddedPostgres(tmp_path)
    url = await again.start()
    try:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()
    finally:
        await again.stop()
    await again.stop()  # stopping twice is harmless


async def test_ensure_database_is_idempotent(pg_admin_url: str):
    await ensure_database(pg_admin_url, "gbmedia_idempotent")
    await ensure_database(pg_admin_url, "gbmedia_idempotent")
    conn = await asyncpg.connect(pg_admin_url)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'gbmedia_idempotent'") == 1
        await conn.execute('DROP DATABASE "gbmedia_idempotent"')
    finally:
        await conn.close()


async def test_database_pool_decodes_jsonb_and_refuses_use_before_open(tmp_path: Path, database_url: str):
    db = Database(Settings(data_dir=tmp_path, database_url=database_url))
    with pytest.raises(RuntimeError, match="not open"):
        _ = db.pool
    await db.open()
    try:
        await db.ping()
        assert await db.pool.fetchval("SELECT '{\"a\": [1, 2]}'::jsonb") == {"a": [1, 2]}
        assert db.embedded is None  # a configured URL never starts the embedded server
    finally:
        await db.close()
    await db.close()


async def test_batch_sessions_use_generic_plans_and_a_small_gin_pending_list(tmp_path: Path, database_url: str):
    """The chat group commit's connections carry the two settings its latency depends on; the shared pool does not."""
    db = Database(Settings(data_dir=tmp_path, database_url=database_url))
    with pytest.raises(RuntimeError, match="not open"):
        _ = db.batch_pool
    await db.open()
    try:
        async with db.batch_pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval("SHOW gin_pending_list_limit") == "64kB"
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
            assert await conn.fetchval("SHOW gin_pending_list_limit") == "4MB"
    finally:
        await db.close()
