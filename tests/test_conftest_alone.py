"""Which tests scripts/test runs alone, after the others (tests/conftest.py: runs_alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import runs_alone

ROOT = Path(__file__).resolve().parent.parent


def collected(*args: str) -> set[str]:
    """The files of the tests ``pytest --collect-only`` selects with ``args``."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return {line.partition("::")[0] for line in out.splitlines() if "::" in line}


def test_cluster_namespace_and_benchmark_tests_run_alone_and_the_others_share_the_machine():
    files = (
        "tests/test_cluster.py",  # Redis, through the cluster fixture
        "tests/test_bus.py",  # Redis as one parameter of its backend (the `redis` mark)
        "tests/web/test_room_paths.py",  # tests/netns.py's namespaces
        "tests/bench/test_lib.py",
        "tests/test_waits.py",
        "tests/sfu/test_direct_rtp.py",
    )
    alone = collected("-m", "alone", *files)
    assert alone == set(files[:4])
    together = collected("-m", "not alone", *files)
    assert together == {"tests/test_bus.py", "tests/test_waits.py", "tests/sfu/test_direct_rtp.py"}  # its memory runs


def test_this_test_shares_the_machine(request: pytest.FixtureRequest):
    assert not runs_alone(request.node) and request.node.get_closest_marker("alone") is None
