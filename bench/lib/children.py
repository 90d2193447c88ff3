"""Looking after child processes: they die with the benchmark, and their logs explain a failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import BinaryIO


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def lower_priority(nice: int) -> None:
    """Nice this process, and its autogroup.

    With autogroup scheduling (Linux's default on desktops and these machines) a process in its
    own session competes as a whole group and plain nice is ignored against other groups such as
    the server's; the workers measure the server, so they must not starve it."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


class Child:
    """A child process the benchmark started, with its log file: stopped gently with a grace period, or
    killed at once when the run is cut short."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: BinaryIO | None = None

    def open_log(self) -> BinaryIO:
        """The log file, appended to (a process started again in a run keeps one log)."""
        self._log = self.log_path.open("ab")
        return self._log

    async def wait_or_kill(self, timeout: float, complaint: str | None = None) -> None:  # noqa: ASYNC109
        """Wait ``timeout`` s for the process to exit, then SIGKILL it (saying ``complaint`` on stderr)."""
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            if complaint:
                print(complaint, file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
