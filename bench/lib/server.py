"""The server under test as a child process: ``gbmedia serve`` in a fresh data directory; its tenant; its /metrics.

Benchmarks run the real server, started the way an operator starts it, so what they
measure includes everything a deployment pays for (its embedded PostgreSQL apart).
"""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.lib import REPO_ROOT
from bench.lib.children import Child, tail
from bench.lib.errors import BenchError
from bench.lib.proc import cpu_runs, cpu_seconds, embedded_postmaster_pid, gbmedia_pids, proc_stat, tree_cpu_seconds
from gbmedia.orphans import dying_with_parent

if TYPE_CHECKING:
    import aiohttp

OPERATOR_TOKEN = "bench-operator-token-0123456789abcdef"


class ChildServer(Child):
    """What a benchmark reads off a server child, whichever server it is (gbmedia, Janus): its pid,
    its CPU, whether it still runs; and how it is stopped (``stop_signal``, then SIGKILL)."""

    label = "server"  # names it in messages
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: Path, startup_timeout: float, log_path: Path) -> None:
        super().__init__(log_path)
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def postgres_pid(self) -> int | None:
        return None

    def pids(self) -> list[int]:
        """The processes that make the server (one, unless it runs workers)."""
        return [self.pid]

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def runs(self) -> int:
        """Times the server's threads were put on a CPU (:func:`bench.lib.proc.cpu_runs`)."""
        return sum(cpu_runs(pid) for pid in self.pids())

    def postgres_cpu(self) -> float:
        return 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def ensure_alive(self, when: str) -> None:
        """Raise, with the log's tail, if the server died (``when``: "during warm-up", ...)."""
        if not self.alive():
            raise BenchError(f"{self.label} died {when}; log:\n{tail(self.log_path)}")

    async def _terminate(self, timeout: float) -> None:
        """``stop_signal``, then SIGKILL after ``timeout`` s; the log closed."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            signame = signal.Signals(self.stop_signal).name
            await self.wait_or_kill(timeout, f"{self.label} ignored {signame} for {timeout:.0f} s; killing it")
        self.close_log()


class Server(ChildServer):
    """``python -m gbmedia serve`` in a temporary data directory.

    Its environment: the caller's without any ``GBMEDIA_*``, then the benchmarks' settings, then
    ``base_env`` (what a benchmark always sets), then ``extra_env`` (what its user asked for)."""

    label = "gbmedia serve"

    def __init__(
        self,
        workdir: Path,
        startup_timeout: float,
        extra_env: dict[str, str] | None = None,
        base_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(workdir, startup_timeout, workdir / "server.log")
        self.args = args  # e.g. ("--workers", "2")
        self.base_env = base_env or {}
        self.extra_env = extra_env or {}
        self.data_dir = workdir / "data"
        self._stdout_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GBMEDIA_")}
        env.update(
            GBMEDIA_DATA_DIR=str(self.data_dir),
            GBMEDIA_HOST="127.0.0.1",
            GBMEDIA_PORT="0",
            GBMEDIA_UDP_PORT="0",  # one media socket, on a port of its own (a benchmark may run servers side by side)
            GBMEDIA_OPERATOR_TOKEN=OPERATOR_TOKEN,
            GBMEDIA_LOG_LEVEL="warning",
            GBMEDIA_LOG_FORMAT="text",
            GBMEDIA_SHUTDOWN_TIMEOUT="5",
            # A benchmark's clients all join from this machine: the per-address limits would throttle them.
            GBMEDIA_JOIN_RATE_BURST="100000",
            GBMEDIA_AUTH_FAILURE_BURST="100000",
        )
        env.update(self.base_env)
        env.update(self.extra_env)
        log = self.open_log()
        self.proc = await asyncio.create_subprocess_exec(
            *dying_with_parent([sys.executable, "-m", "gbmedia", "serve", *self.args]),
            cwd=str(REPO_ROOT),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self.url:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"gbmedia serve printed no URL within {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                rc = await self.proc.wait()
                raise BenchError(
                    f"gbmedia serve exited with status {rc} before listening; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            text = line.decode(errors="replace").strip()
            if text.startswith("gbmedia listening on "):
                self.url = text.removeprefix("gbmedia listening on ").strip()
        self._stdout_task = asyncio.ensure_future(self._drain_stdout())

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def pids(self) -> list[int]:
        return gbmedia_pids(self.pid)  # with --workers: the supervisor and its workers

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def postgres_pid(self) -> int | None:
        return embedded_postmaster_pid(self.data_dir)

    def postgres_cpu(self) -> float:
        pid = self.postgres_pid()
        return tree_cpu_seconds(pid) if pid else 0.0

    async def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        postgres = self.postgres_pid()
        await self._terminate(timeout)
        if self._stdout_task is not None:
            self._stdout_task.cancel()
        if postgres and proc_stat(postgres) is not None and self.proc.returncode != 0:
            # A server that did not stop cleanly leaves its embedded PostgreSQL behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(postgres, signal.SIGTERM)
        return self.proc.returncode


async def create_tenant(
    session: aiohttp.ClientSession,
    url: str,
    *,
    customer: str = "bench",
    instance: str = "bench-main",
    tier: str = "pro",
) -> tuple[str, str]:
    """A customer and one instance of it, through the operator API: the instance's (key, secret)."""
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with session.post(f"{url}/api/v1/customers", json={"name": customer, "tier": tier}, headers=headers) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the customer: HTTP {resp.status}: {await resp.text()}")
        body = await resp.json()
    async with session.post(
        f"{url}/api/v1/customers/{body['id']}/instances", json={"name": instance}, headers=headers
    ) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the instance: HTTP {resp.status}: {await resp.text()}")
        body = await resp.json()
    return body["credentials"]["key"], body["credentials"]["secret"]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {metric name: value}; label sets of one name are summed (the counters the
    benchmarks read have none)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{")[0]
        with contextlib.suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values


def parse_labeled(text: str, name: str, label: str) -> dict[str, float]:
    """One metric's samples in Prometheus text by the value of one of its labels: ``parse_labeled(text,
    "gbmedia_down_tracks_by_path", "path")`` is ``{"native": 600.0, "python": 0.0}``. Samples without the
    label are left out; several with the same value are summed (``parse_metrics`` sums them all)."""
    values: dict[str, float] = {}
    pattern = re.compile(rf'(?:^|[{{,]){re.escape(label)}="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, value = line[len(name) :].rpartition(" ")
        found = pattern.search(labels.strip()[1:-1])
        if found is None:
            continue
        with contextlib.suppress(ValueError):
            values[found.group(1)] = values.get(found.group(1), 0.0) + float(value)
    return values


async def read_metrics_text(url: str, session: aiohttp.ClientSession | None = None) -> str:
    """The server's ``/metrics`` as Prometheus text."""
    import aiohttp

    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(url.rstrip("/") + "/metrics") as resp:
            return await resp.text()


async def read_metrics(url: str, session: aiohttp.ClientSession | None = None) -> dict[str, float]:
    """The server's ``/metrics`` (``parse_metrics``): its own counters, read beside the /proc figures."""
    return parse_metrics(await read_metrics_text(url, session))
