"""Argument types the benchmarks' command lines share."""

from __future__ import annotations

import argparse
import os


def env_pair(raw: str) -> tuple[str, str]:
    """``NAME=VALUE`` (``--server-env``) as (name, value)."""
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {raw!r}")
    return name, value


def cpu_list(raw: str) -> set[int]:
    """``1``, ``0,1`` or ``0-3``: CPU numbers this process may run on."""
    cpus: set[int] = set()
    try:
        for part in raw.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers like 1 or 0-1, got {raw!r}") from None
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise argparse.ArgumentTypeError(f"CPUs {raw!r}: this process may run on {sorted(available)} only")
    return cpus


def add_server_options(parser: argparse.ArgumentParser, *, startup_timeout: float, server_env_help: str) -> None:
    """``--startup-timeout`` and ``--server-env``: how every benchmark starts its ``gbmedia serve``."""
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=startup_timeout,
        help=f"seconds for the server to start (default {startup_timeout:g})",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        type=env_pair,
        metavar="NAME=VALUE",
        help=server_env_help,
    )
