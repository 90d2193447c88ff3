"""Worker processes: both ends of their protocol, one JSON object a line.

A benchmark's clients run in processes of their own (``python -m bench.<name> --worker``)
so that they do not share the orchestrator's event loop and the server's CPU readings stay
apart from theirs. The orchestrator writes one command a line on a worker's stdin; the
worker answers each with one line on stdout.
"""

# ruff: noqa: ASYNC109 - explicit timeouts on the calls

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bench.lib import REPO_ROOT
from bench.lib.children import Child, tail
from bench.lib.errors import BenchError
from gbmedia.orphans import dying_with_parent


class WorkerProcess(Child):
    """The orchestrator's handle on one worker process: ``python -m <module> <args> --nice <nice>``, run in the
    repository, which reads one JSON command a line on stdin and answers each with one JSON line on stdout."""

    def __init__(
        self,
        index: int,
        log_path: Path,
        nice: int,
        *,
        module: str,
        what: str,
        stop_command: str,
        args: Sequence[str] = ("--worker",),
        limit: int = 1 << 16,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(log_path)
        self.index = index
        self.nice = nice
        self.argv = ["-m", module, *args, "--nice", str(nice)]
        self.what = what  # "subscriber worker", "client worker": names it in errors
        self.stop_command = stop_command
        self.limit = limit  # the longest reply line
        self.prefix = list(prefix)  # what it runs under, e.g. ip netns exec <name> (bench.lib.netns)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        log = self.open_log()
        self.proc = await asyncio.create_subprocess_exec(
            *dying_with_parent([*self.prefix, sys.executable, *self.argv]),
            cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            # a ^C in the terminal reaches only the orchestrator
            start_new_session=True,
            limit=self.limit,
        )

    async def call(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise BenchError(
                f"{self.what} {self.index} exited (rc {self.proc.returncode}); "
                f"its log: {self.log_path}\n{tail(self.log_path)}"
            )
        return json.loads(line)

    async def stop(self, timeout: float = 20.0) -> None:
        """Its stop command (``timeout`` s for the reply), 5 s to exit, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call({"cmd": self.stop_command}, timeout)
            await self.wait_or_kill(5)
        self.close_log()


def counting_worker(
    index: int,
    log_path: Path,
    nice: int,
    *,
    module: str,
    what: str,
    flag: str,
    clear: bool,
    prefix: Sequence[str] = (),
) -> WorkerProcess:
    """A worker of ``module`` whose receivers count RTP (``--<flag>``: from the clear header; ``--no-<flag>``:
    through aiortc), one of the forwarding and live benchmarks' subscriber or viewer processes; ``prefix``
    runs it elsewhere (another host's namespace)."""
    return WorkerProcess(
        index,
        log_path,
        nice,
        module=module,
        what=what,
        stop_command="leave",
        args=("--worker", f"--{flag}" if clear else f"--no-{flag}"),
        prefix=prefix,
    )


@contextlib.asynccontextmanager
async def running(
    workers: Sequence[WorkerProcess], live: list[WorkerProcess] | None = None
) -> AsyncIterator[Sequence[WorkerProcess]]:
    """The workers of one step, stopped when it ends however it ends.

    ``live`` is the orchestrator's list of every worker running: its own clean-up kills
    those still in it if the run is cut short (^C, SIGTERM) while a step stops them."""
    if live is not None:
        live.extend(workers)
    try:
        yield workers
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        if live is not None:
            for w in workers:
                live.remove(w)


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
