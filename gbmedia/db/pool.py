"""The node's PostgreSQL connection: embedded or configured, migrated, pooled."""

from __future__ import annotations

import json
import logging

import asyncpg

from gbmedia.config import Settings
from gbmedia.db.embedded import EmbeddedPostgres
from gbmedia.db.migrate import Migration, migrate

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSONB columns come back as Python objects, not strings.
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


BATCH_SESSION_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "gin_pending_list_limit": "64",  # kB; see Database.batch_pool
}


class Database:
    """Owns the pool and, when no URL is configured, the embedded server behind it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.url: str | None = settings.database_url
        self._pool: asyncpg.Pool | None = None
        self._batch_pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    @property
    def batch_pool(self) -> asyncpg.Pool:
        """Connections for the statements a node runs over and over with arrays of any length.

        The chat group commit's statement is one: PostgreSQL would plan it anew for
        every call (its custom plan for each array length looks cheaper than the
        generic one), and planning that statement cost more than running a small
        batch of it. These sessions use the generic plan, made once per connection
        (``plan_cache_mode = force_generic_plan``), which the pooled connections of
        :attr:`pool` must not (they promise no session settings).

        They also merge the full-text index's pending list in small steps. A GIN
        index queues new entries in a pending list, and the insert that finds the
        list over ``gin_pending_list_limit`` (4 MB by default) merges it into the
        index inside its own statement: with group commit that statement carries a
        whole batch of sends, and the chat benchmark saw 0.2-0.6 s stalls at 2,000
        messages/s. At 64 kB the same merge work comes in small pieces. The limit is
        a session setting here rather than an index storage parameter, which would
        have to be set on every partition of ``messages_search``, present and future.
        """
        if self._batch_pool is None:
            raise RuntimeError("database is not open")
        return self._batch_pool

    async def open(self, *, run_migrations: bool = True) -> None:
        """Start the embedded server if needed, migrate, and open the pool."""
        if self.url is None:
            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            self.url = await self.embedded.start()
        if run_migrations:
            await self.migrate()
        # No statement and no new connection waits longer than the command timeout: a database
        # that is down or hung fails the request (503 database_unavailable) instead of holding it.
        # The pools reconnect by themselves once the database is back.
        timeout = self.settings.database_command_timeout_seconds
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.settings.database_pool_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=timeout,
            timeout=timeout,
        )
        self._batch_pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self.settings.chat_writers,  # the chat writer lanes use one each
            init=_init_connection,
            reset=_keep_session,
            server_settings=BATCH_SESSION_SETTINGS,
            command_timeout=timeout,
            timeout=timeout,
        )

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations on a dedicated connection (it holds a session lock)."""
        assert self.url is not None
        conn = await asyncpg.connect(self.url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._batch_pool is not None:
            batch_pool, self._batch_pool = self._batch_pool, None
            await batch_pool.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
            self.url = self.settings.database_url

    async def ping(self) -> None:
        """Raise if the database does not answer ``SELECT 1`` within two seconds."""
        async with self.pool.acquire(timeout=2.0) as conn:
            await conn.fetchval("SELECT 1", timeout=2.0)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is, without asyncpg's reset query.

    asyncpg still rolls back an open transaction on release; its default reset also
    runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one more round
    trip per release (the chat benchmark measured pool queries about twice as fast
    without it). Pooled connections here keep no session state: no SET, no LISTEN, no
    cursors outside transactions, and only transaction-scoped advisory locks (the
    migrations' session lock is taken on a dedicated connection, not a pooled one).
    """
