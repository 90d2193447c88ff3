"""py-spy on the server during a window, and reading its raw (collapsed) stacks.

A figure says how much CPU; a profile of the same window says where it went, so the
benchmarks that print CPU per message or per packet can record one (``--profile DIR``).
"""


# ruff: noqa: ASYNC240 - a tiny file check before starting py-spy

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.lib import REPO_ROOT
from bench.lib.errors import BenchError


async def start_py_spy(pid: int, out: Path, seconds: float, options: list[str]) -> Any:
    """``py-spy record`` on ``pid`` for ``seconds``, raw collapsed stacks into ``out``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        *options,
        "--duration",
        str(math.ceil(seconds)),
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # let it attach before the window opens
    return proc


async def finish_profiler(proc: Any) -> None:
    """Wait for py-spy to write its file (it stops by itself after its duration); kill it after 30 s."""
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def collapsed_stacks(text: str) -> Iterator[tuple[list[str], int]]:
    """(frames, outermost first; samples) of each line of py-spy's raw format: ``frame;frame;... count``."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        yield [f.strip() for f in stack.split(";") if f.strip()], int(count)


def short_path(where: str) -> str:
    """A frame's file without the installation's prefix: ``gbmedia/bus.py:12``, ``aiohttp/web_ws.py:3``."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}/"
    for marker in ("site-packages/", version, f"{REPO_ROOT}/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return where


def split_frame(frame: str) -> tuple[str, str]:
    """``name (path/file.py:123)`` as (name, short file:line)."""
    name, _, where = frame.partition(" (")
    return name, short_path(where.rstrip(")"))
