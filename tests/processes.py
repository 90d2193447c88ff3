"""Real ``gbmedia serve`` processes for tests: one node, or several forming a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 120.0  # a loaded 2-core machine, maybe with coverage in the child


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie counts: it has not been waited for)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts: it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def node_env(tmp_path: Path, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a node of the test's own: none of the caller's ``GBMEDIA_*`` settings (a
    Redis URL, a region) leak in; loopback, a port it picks, a known operator token, a fresh secret
    key, budgets a test's clients (all from one address) never run out of; ``settings`` on top, by
    setting name without the prefix (``chat_rate_limit="10"``). Two processes given the same
    environment share database and key: a restart after a crash."""
    from cryptography.fernet import Fernet

    from tests.helpers import OPERATOR_TOKEN

    env = {name: value for name, value in os.environ.items() if not name.startswith("GBMEDIA_")}
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "LANG": "C.UTF-8",
            "GBMEDIA_DATABASE_URL": database_url,
            "GBMEDIA_DATA_DIR": str(tmp_path / "data"),
            "GBMEDIA_HOST": "127.0.0.1",
            "GBMEDIA_PORT": "0",
            "GBMEDIA_UDP_PORT": "0",  # single-port mode, on a port of its own (nodes run side by side)
            "GBMEDIA_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "GBMEDIA_SECRET_KEY": Fernet.generate_key().decode(),
            "GBMEDIA_API_RATE_LIMIT": "100000",
            "GBMEDIA_API_RATE_BURST": "100000",
            "GBMEDIA_CHAT_RATE_LIMIT": "100000",
            "GBMEDIA_CHAT_RATE_BURST": "100000",
            "GBMEDIA_JOIN_RATE_BURST": "100000",
            "GBMEDIA_AUTH_FAILURE_BURST": "100000",
            "GBMEDIA_LOG_LEVEL": "warning",
            "GBMEDIA_SHUTDOWN_TIMEOUT": "1",
        }
    )
    env.update({"GBMEDIA_" + name.upper(): value for name, value in settings.items()})
    return env


class ServerProcess:
    """One ``gbmedia serve`` child; its stdout and stderr go to files (no pipe can fill up)."""

    def __init__(self, env: dict[str, str], logs: Path, name: str, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.name = name
        self.args = args
        self.stdout_path = logs / f"{name}.stdout"
        self.stderr_path = logs / f"{name}.stderr"
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gbmedia",
                "serve",
                *self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if "gbmedia listening on" in line:
                    self.url = line.split("listening on", 1)[1].strip()
                    return self.url
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no 'gbmedia listening on' from {self.name} within {START_TIMEOUT}s:\n{self.stderr_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, exactly like a crash or an OOM kill."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.terminate()

    async def exited(self, within: float = 60.0) -> int:
        assert self.proc is not None
        try:
            async with asyncio.timeout(within):
                return await self.proc.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name} did not exit within {within}s:\n{self.stderr_tail()}") from None

    async def stop(self) -> None:
        """SIGTERM and wait (so a coverage run of the child writes its data); SIGKILL if it hangs."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        with contextlib.suppress(AssertionError):
            await self.exited(30.0)
        await self.ensure_dead()

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await self.proc.wait()

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:] or "(stderr empty)"
        except FileNotFoundError:
            return "(no stderr)"

    def log_records(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines the process wrote so far."""
        records = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records
