"""The parsers under a coverage-guided fuzzer (atheris), and every input it ever crashed replayed.

``seeds/<target>/`` hold valid inputs to start from (a browser's offer, real RTP and
RTCP, socket messages); ``corpus/<target>/`` the crashers found, each fixed since.
Both are replayed in this process on every run (plain regression tests), then one
fuzzing session runs over every target in a child process: a fixed seed and a fixed
number of inputs, so a run is bounded (seconds) and mutates the same way; the paths
it explores still vary a little between runs (aiortc's RTCP handling reads the clock).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import ORDER, TARGETS, target_of

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SEED = 1
RUNS = 20_000  # over all targets: 5 to 10 s on these machines, start-up included
MAX_LEN = 8192


def child_env() -> dict[str, str]:
    """The environment without coverage's hooks: measured, the session ran twice as long, and
    the replays above already cover the parsers in this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}


def inputs(kind: str) -> list[tuple[str, Path]]:
    return sorted((target, path) for target in TARGETS for path in (HERE / kind / target).glob("*") if path.is_file())


def test_every_target_has_seeds():
    assert {target for target, _ in inputs("seeds")} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), inputs("seeds") + inputs("corpus"), ids=lambda v: getattr(v, "name", v))
def test_replay(target: str, path: Path):
    """Each input is handled: a value, or the project's own error (the targets check which)."""
    TARGETS[target](path.read_bytes())


def test_a_fuzzing_session_finds_no_crash(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for target, path in inputs("seeds") + inputs("corpus"):  # each prefixed with the byte that picks its target
        (corpus / f"{target}-{path.name}").write_bytes(bytes([ORDER.index(target)]) + path.read_bytes())
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            "all",
            f"-seed={SEED}",
            f"-runs={RUNS}",
            f"-max_len={MAX_LEN}",
            "-max_total_time=60",  # a ceiling on a slow machine; the runs end it first
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    crashes = sorted(artifacts.glob("*"))
    found = []
    for crash in crashes:
        target, data = target_of(crash.read_bytes())
        found.append(f"{target}: {base64.b64encode(data).decode()} (add it to tests/fuzz/corpus/{target}/)")
    uncaught = done.stderr.find("Uncaught Python exception")  # atheris's report: the traceback follows
    report = done.stderr[uncaught : uncaught + 6000] if uncaught >= 0 else done.stderr[-6000:]
    assert not crashes and done.returncode == 0, "\n".join([*found, report])
    assert f"Done {RUNS} runs" in done.stderr, done.stderr[-2000:]
