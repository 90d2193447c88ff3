"""A benchmark's process: its event loop, its temporary directory, and how it ends (^C, SIGTERM, an error)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from bench.lib.children import lower_priority
from bench.lib.errors import BenchError


def run_benchmark(
    args: argparse.Namespace,
    name: str,
    children: str,
    worker: Callable[[], Coroutine[Any, Any, None]] | None,
    orchestrate: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    *,
    use_uvloop: bool = True,
) -> dict[str, Any] | int:
    """Under uvloop where installed (unless ``use_uvloop`` is False): a worker process's loop (``worker``
    given: exit status 0), or the orchestrator's, whose result comes back (an exit status instead where it
    failed or was stopped)."""
    with contextlib.suppress(ImportError):
        import uvloop

        if use_uvloop:
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


def cancel_on_sigterm() -> None:
    """SIGTERM cancels the orchestrator's main task, so its clean-up runs as on ^C (no server left behind)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary directory for the server's data and every log; removed after a run that went well
    unless ``keep``, kept (and named on stderr) otherwise, so a failure can be read."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if keep or not ok:
            print(f"logs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
