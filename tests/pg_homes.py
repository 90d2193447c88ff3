"""The test sessions' embedded PostgreSQL homes, and the ones a killed session left behind.

A session ends its cluster in its teardown. One killed before that (SIGKILL, a CI job's time
limit, a developer's Ctrl-C twice) leaves the cluster running, and where its home is in
``/dev/shm`` its data stays in memory until the machine restarts. Each home therefore names the
pytest process that owns it, and each session's start stops and removes the homes whose owner is
gone. Homes of sessions still running (another checkout's, on the same machine) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

PREFIX = "gbmedia-test-pg-"
OWNER = "owner.pid"  # the pytest process's id, written when the home is made
UNOWNED_GRACE = 3600.0  # seconds: a home without an owner file younger than this may be being made now
STOP_WAIT = 10.0  # seconds for an abandoned postmaster to exit after SIGQUIT (immediate shutdown)


def make_home(parent: Path | None) -> Path:
    """A new home under ``parent`` (None: the default temporary directory), owned by this process."""
    home = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (home / OWNER).write_text(f"{os.getpid()}\n")
    return home


def remove_abandoned(parent: Path) -> list[Path]:
    """Stop and remove the homes under ``parent`` whose owning process is gone; the ones removed."""
    removed = []
    for home in parent.glob(PREFIX + "*"):
        owner = _pid_in(home / OWNER)
        if owner is None:
            with contextlib.suppress(OSError):
                if time.time() - home.stat().st_mtime < UNOWNED_GRACE:
                    continue
        elif _alive(owner):
            continue
        _stop_postmaster(home / "data")
        shutil.rmtree(home, ignore_errors=True)
        removed.append(home)
    return removed


def _stop_postmaster(data: Path) -> None:
    """SIGQUIT the cluster's postmaster if it still runs (checked by its command line: a recycled pid
    belongs to someone else), and wait for it to go."""
    pid = _pid_in(data / "postmaster.pid")
    if pid is None or not _is_postmaster_of(pid, data):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + STOP_WAIT
    while _is_postmaster_of(pid, data) and time.monotonic() < deadline:
        time.sleep(0.05)


def _is_postmaster_of(pid: int, data: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and cmdline[0].endswith(b"postgres") and os.fsencode(data) in cmdline


def _pid_in(path: Path) -> int | None:
    """The process id on the first line of ``path`` (a postmaster.pid or an owner file), if any."""
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
