"""What the benchmarks in this folder share: /proc readings, child processes, the server, the tenant.

Imported by ``bench/forwarding.py`` and ``bench/chat.py`` (this folder has no ``__init__.py``: each
script puts its own folder on ``sys.path`` before ``from harness import ...``).
"""

# ruff: noqa: ASYNC109, ASYNC240 - a harness: explicit timeouts; tiny file checks before starting things

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_TOKEN = "bench-operator-token-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# --- /proc -----------------------------------------------------------------------------

def proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" (field 3) on


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of every thread of ``pid`` (plus its reaped children's if asked)."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _schedstat_seconds(pid: int, field: int) -> float:
    """One field of /proc/<pid>/task/*/schedstat summed over the threads: 0 on a CPU, 1 waiting for one (ns)."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[field])
    return total / 1e9


def runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of ``pid`` were ready to run but waited for a CPU."""
    return _schedstat_seconds(pid, 1)


def oncpu_seconds(pid: int) -> float:
    """Time the threads of ``pid`` ran, to the nanosecond (``cpu_seconds`` counts clock ticks)."""
    return _schedstat_seconds(pid, 0)


def descendants(pid: int) -> list[int]:
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None:
            by_parent.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """A process and its live descendants, plus the children it already reaped."""
    return cpu_seconds(pid, children=True) + sum(cpu_seconds(c) for c in descendants(pid))


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return float(total - values[3] - values[4]), float(total)


def embedded_postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the server's embedded PostgreSQL (``<data>/postgres/postmaster.pid``), if it runs one."""
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


# --- what the machine did meanwhile -----------------------------------------------------

class MachineProbe:
    """Disk flushes and other processes' CPU, read beside a benchmark to explain its slow moments.

    A latency tail on a small shared machine often comes from outside the server: a
    commit waits for the disk's flush, and the kernel's periodic writeback of dirty
    pages (every 30 s on these machines) can hold a flush up for tens of ms; or a
    neighbour process takes a core for a fraction of a second. Two daemon threads
    watch for both: one writes 8 kB to a file in ``directory`` (the filesystem the
    database writes) and flushes it (``fdatasync``) every ``fsync_every`` s, keeping the flushes
    over ``stall_ms``; the other reads the machine's busy time every 0.1 s and
    subtracts the benchmark's own processes (``own_pids()``, asked again every
    second; their time to the nanosecond, the machine's in clock ticks, so a reading
    is good to about 0.1 of a core): what is left is the neighbours'. Its own cost:
    well under 1 % of a core and one small flush per ``fsync_every``.
    """

    SAMPLE = 0.1  # seconds per CPU sample

    def __init__(self, directory: Path, own_pids: Callable[[], list[int]], *, fsync_every: float = 0.05,
                 stall_ms: float = 20.0) -> None:
        self.path = directory / "machine-probe.dat"
        self.own_pids = own_pids
        self.fsync_every = fsync_every
        self.stall_ms = stall_ms
        self.flushes: list[tuple[float, float]] = []  # (CLOCK_MONOTONIC at the flush's start, ms)
        self.others: list[tuple[float, float]] = []  # (CLOCK_MONOTONIC at the sample's start, cores)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._disk, daemon=True, name="probe-disk"),
                         threading.Thread(target=self._cpu, daemon=True, name="probe-cpu")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _disk(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        block = b"\0" * 8192
        try:
            while not self._stop.wait(self.fsync_every):
                started = time.monotonic()
                os.pwrite(fd, block, (len(self.flushes) % 64) * len(block))
                os.fdatasync(fd)
                self.flushes.append((started, (time.monotonic() - started) * 1000))
        finally:
            os.close(fd)

    def _cpu(self) -> None:
        pids: list[int] = []
        asked = 0.0
        last_t, last_busy, last_own = time.monotonic(), machine_busy()[0], 0.0
        while not self._stop.wait(self.SAMPLE):
            now = time.monotonic()
            if now - asked >= 1.0:
                pids, asked = self.own_pids(), now
                last_own = sum(oncpu_seconds(p) for p in pids)  # a new set: start its count afresh
                last_t, last_busy = now, machine_busy()[0]
                continue
            busy, own = machine_busy()[0], sum(oncpu_seconds(p) for p in pids)
            others = (busy - last_busy) / CLK_TCK - (own - last_own)
            self.others.append((last_t, max(0.0, others) / max(1e-6, now - last_t)))
            last_t, last_busy, last_own = now, busy, own

    def around(self, start: float, end: float) -> dict[str, float]:
        """The worst disk flush and the neighbours' peak (cores) between ``start`` and ``end``."""
        disk = max((ms for t, ms in self.flushes if start <= t <= end and ms > self.stall_ms), default=0.0)
        others = max((cores for t, cores in self.others if start <= t <= end), default=0.0)
        return {"disk_ms": disk, "others_cores": others}

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """The window's readings: the flushes' p50/p99, those over ``stall_ms`` (s into the window, ms), the
        neighbours' peak. A commit waits for such a flush, so its p50 is in every chat send's latency."""
        flushes = [ms for t, ms in self.flushes if start <= t <= end]
        stalls = [(round(t - start, 1), round(ms, 1)) for t, ms in self.flushes if start <= t <= end
                  and ms > self.stall_ms]
        peak = max((cores for t, cores in self.others if start <= t <= end), default=0.0)
        return {"flushes": len(flushes), "flush_ms_p50": round(percentile(flushes, 50) or 0.0, 2),
                "flush_ms_p99": round(percentile(flushes, 99) or 0.0, 2), "disk_stalls": stalls,
                "stall_ms": self.stall_ms, "others_peak_cores": round(peak, 2)}


def percentile(values: list[float] | list[int], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in %, 100 is the maximum), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


# --- child processes --------------------------------------------------------------------

def lower_priority(nice: int) -> None:
    """Nice this process, and its autogroup: with autogroup scheduling (Linux's default on desktops and
    these machines) a process in its own session competes as a whole group and plain nice is ignored
    against other groups such as the server's."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the orchestrator dies without cleaning up."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class WorkerProcess:
    """The orchestrator's handle on one worker process: a script run again with ``argv``, which reads one
    JSON command a line on stdin and answers each with one JSON line on stdout."""

    def __init__(self, index: int, log_path: Path, nice: int, *, argv: list[str], what: str,
                 stop_command: str, limit: int = 1 << 16) -> None:
        self.index = index
        self.nice = nice
        self.log_path = log_path
        self.argv = argv
        self.what = what  # "subscriber worker", "client worker": names it in errors
        self.stop_command = stop_command
        self.limit = limit  # the longest reply line
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            # a ^C in the terminal reaches only the orchestrator
            start_new_session=True, preexec_fn=_die_with_parent, limit=self.limit)

    async def call(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise BenchError(f"{self.what} {self.index} exited (rc {self.proc.returncode}); "
                             f"its log: {self.log_path}\n{tail(self.log_path)}")
        return json.loads(line)

    async def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call({"cmd": self.stop_command}, timeout)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


# --- the server -----------------------------------------------------------------------

class Server:
    """``python -m gbmedia serve`` in a temporary data directory.

    Its environment: the caller's without any ``GBMEDIA_*``, then this harness's settings, then
    ``base_env`` (what a benchmark always sets), then ``extra_env`` (what its user asked for)."""

    def __init__(self, workdir: Path, startup_timeout: float, extra_env: dict[str, str] | None = None,
                 base_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.base_env = base_env or {}
        self.extra_env = extra_env or {}
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.startup_timeout = startup_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._log: Any = None
        self._stdout_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GBMEDIA_")}
        env.update(GBMEDIA_DATA_DIR=str(self.data_dir), GBMEDIA_HOST="127.0.0.1", GBMEDIA_PORT="0",
                   GBMEDIA_OPERATOR_TOKEN=OPERATOR_TOKEN, GBMEDIA_LOG_LEVEL="warning",
                   GBMEDIA_LOG_FORMAT="text", GBMEDIA_SHUTDOWN_TIMEOUT="5")
        env.update(self.base_env)
        env.update(self.extra_env)
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gbmedia", "serve", cwd=str(ROOT), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=self._log, start_new_session=True,
            preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self.url:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"gbmedia serve printed no URL within {self.startup_timeout:.0f} s; "
                                 f"log {self.log_path}:\n{tail(self.log_path)}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                rc = await self.proc.wait()
                raise BenchError(f"gbmedia serve exited with status {rc} before listening; "
                                 f"log {self.log_path}:\n{tail(self.log_path)}")
            text = line.decode(errors="replace").strip()
            if text.startswith("gbmedia listening on "):
                self.url = text.removeprefix("gbmedia listening on ").strip()
        self._stdout_task = asyncio.ensure_future(self._drain_stdout())

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def postgres_pid(self) -> int | None:
        return embedded_postmaster_pid(self.data_dir)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def postgres_cpu(self) -> float:
        pid = self.postgres_pid()
        return tree_cpu_seconds(pid) if pid else 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        postgres = self.postgres_pid()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                print(f"gbmedia serve ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._stdout_task is not None:
            self._stdout_task.cancel()
        if self._log is not None:
            self._log.close()
            self._log = None
        if postgres and proc_stat(postgres) is not None and self.proc.returncode != 0:
            # A server that did not stop cleanly leaves its embedded PostgreSQL behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(postgres, signal.SIGTERM)
        return self.proc.returncode

    def kill_now(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # type: ignore[union-attr]


async def create_tenant(session: aiohttp.ClientSession, url: str, *, customer: str = "bench",
                        instance: str = "bench-main") -> tuple[str, str]:
    """A customer and one instance of it, through the operator API: the instance's (key, secret)."""
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with session.post(f"{url}/api/v1/customers", json={"name": customer, "tier": "pro"},
                            headers=headers) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the customer: HTTP {resp.status}: {await resp.text()}")
        body = await resp.json()
    async with session.post(f"{url}/api/v1/customers/{body['id']}/instances",
                            json={"name": instance}, headers=headers) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the instance: HTTP {resp.status}: {await resp.text()}")
        body = await resp.json()
    return body["credentials"]["key"], body["credentials"]["secret"]


# --- profiling ------------------------------------------------------------------------

async def start_py_spy(pid: int, out: Path, seconds: float, options: list[str]) -> Any:
    """``py-spy record`` on ``pid`` for ``seconds``, raw collapsed stacks into ``out``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--rate", "100", *options,
        "--duration", str(math.ceil(seconds)), "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(0.5)  # let it attach before the window opens
    return proc


async def finish_profiler(proc: Any) -> None:
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --- output and arguments ---------------------------------------------------------------

def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec)


def _env_pair(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {raw!r}")
    return name, value


# --- the entry point --------------------------------------------------------------------

def run_benchmark(args: argparse.Namespace, name: str, children: str,
                  worker: Callable[[], Coroutine[Any, Any, None]] | None,
                  orchestrate: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any] | int:
    """Under uvloop where installed: a worker process's loop (``worker`` given: exit status 0), or the
    orchestrator's, whose result comes back (an exit status instead where it failed or was stopped)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if worker is not None:
        if args.nice:
            lower_priority(args.nice)
        asyncio.run(worker())
        return 0
    try:
        return asyncio.run(orchestrate())
    except BenchError as exc:
        print(f"{name} benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted; the server and the {children} were stopped", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


def print_aligned(lines: list[tuple[str, ...]] | list[list[str]]) -> None:
    """Rows of cells, right-aligned in columns, the first (the header) underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# --- the worker side ------------------------------------------------------------------

async def commands(limit: int = 1 << 16) -> AsyncIterator[dict[str, Any]]:
    """A worker process's commands: one JSON object a line on stdin, until the orchestrator is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


def reply(obj: dict[str, Any]) -> None:
    """A worker process's answer to one command: one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
