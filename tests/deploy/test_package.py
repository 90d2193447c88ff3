"""``pip install .`` builds the native extensions: the package's own build compiles gbmedia/sfu/_fanout.c
and gbmedia/sfu/_remb.c.

Built from a clean export of the tracked files (``git archive``), so a module built in place
(scripts/test does that) cannot stand in for the one pip builds; the wheel's module then
imports and protects in a fresh interpreter that sees only the wheel's files.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_pip_builds_the_native_fan_out_into_the_wheel(tmp_path: Path):
    source, wheels, unpacked = tmp_path / "src", tmp_path / "wheels", tmp_path / "unpacked"
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    assert not list(source.glob("gbmedia/sfu/*.so"))  # nothing prebuilt in what pip gets
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(wheels),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("gbmedia-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        for name in ("_fanout", "_remb"):
            assert any(n.startswith(f"gbmedia/sfu/{name}.") and n.endswith(".so") for n in zipped.namelist())
        zipped.extractall(unpacked)
    check = (
        "import gbmedia.sfu._fanout as f, gbmedia.sfu._remb as r; from gbmedia.sfu import fanout; "
        "assert f.__file__.startswith(sys.argv[1]) and r.__file__.startswith(sys.argv[1]), (f.__file__, r.__file__); "
        "assert r.Estimator().add(1000, 0, 1200, 7) is None; "
        "print(len(f.Session(bytes(30), 1).protect(bytes([128, 96]) + bytes(110))), fanout.LIBRARY)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); " + check, str(unpacked)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    length, library = done.stdout.split(maxsplit=1)
    assert int(length) == 112 + 10  # the packet and its 80-bit authentication tag
    assert library.startswith("libsrtp2 2.")
