"""A child started through ``dying_with_parent`` ends with its parent, and runs no Python before exec."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gbmedia.orphans import dying_with_parent
from tests.processes import gone

# A parent that starts `sleep` the way the node starts coturn, says its pid and waits to be killed.
PARENT = """
import subprocess, sys, time
from gbmedia.orphans import dying_with_parent
child = subprocess.Popen(dying_with_parent(["sleep", "120"]))
print(child.pid, flush=True)
time.sleep(120)
"""


def test_the_child_gets_sigterm_when_its_parent_is_killed_outright():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        command = Path(f"/proc/{child}/cmdline")
        deadline = time.monotonic() + 10
        while not command.read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            time.sleep(0.05)  # until the guard has exec'd `sleep` (same pid, new command line)
        assert command.read_bytes().split(b"\0")[:2] == [b"sleep", b"120"]
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_the_command_keeps_its_arguments_and_its_exit_status():
    shown = subprocess.run(
        dying_with_parent(["sh", "-c", 'echo "$$ $1 $2"; exit 3', "sh", "one argument", ""]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.stdout.split(" ", 1)[1] == "one argument \n"
    assert shown.returncode == 3


async def test_the_pid_seen_by_the_caller_is_the_commands_own():
    process = await asyncio.create_subprocess_exec(
        *dying_with_parent(["sh", "-c", "echo $$"]), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert int(out) == process.pid


def test_a_parent_gone_before_the_child_asked_ends_the_child_before_the_command(tmp_path: Path):
    marker = tmp_path / "ran"
    # The child's parent is this process; a different pid stands for one that died and left it
    # to be reparented before the kernel was asked for the signal.
    ended = subprocess.run(dying_with_parent(["touch", str(marker)], parent=os.getpid() + 1_000_000), timeout=30)
    assert ended.returncode == 0
    assert not marker.exists()
    subprocess.run(dying_with_parent(["touch", str(marker)]), timeout=30, check=True)
    assert marker.exists()


def test_without_setpriv_the_command_runs_as_it_is_and_a_warning_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no setpriv on it
    with caplog.at_level(logging.WARNING, logger="gbmedia.orphans"):
        assert dying_with_parent(["turnserver", "-c", "x.conf"]) == ["turnserver", "-c", "x.conf"]
    assert "turnserver will not be stopped if this process is killed" in caplog.text


def test_no_child_is_started_with_python_code_between_fork_and_exec():
    """A ``preexec_fn`` hung the suite (docs/testing.md): this module's way is the only one."""
    root = Path(__file__).parent.parent
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("gbmedia", "bench", "tests")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "preexec_fn=" in line and path != Path(__file__)
    ]
    assert found == []
