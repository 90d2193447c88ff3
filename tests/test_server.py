"""A real ``gbmedia serve`` process: starts with nothing configured, stops cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gbmedia.config import load_settings
from gbmedia.server import public_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """No GBMEDIA_* at all: only what any process has."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    # Coverage measures the child when its settings travel along (pyproject: patch = subprocess).
    env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    env.update(extra)
    return env


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {needle!r} from the server; exit code {proc.poll()}")


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_with_no_environment_prints_url_answers_and_stops_cleanly(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gbmedia", "serve", "--port", str(port)],
        env=bare_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = wait_for_line(proc, "gbmedia listening on")
        url = line.split("listening on", 1)[1].strip()
        assert url.endswith(f":{port}")
        status, body = get_json(f"http://127.0.0.1:{port}/healthz")
        assert (status, body["status"]) == (200, "ok")
        status, body = get_json(f"http://127.0.0.1:{port}/readyz")
        assert (status, body["checks"]["database"]["ok"]) == (200, True)

        data_dir = tmp_path / ".local" / "share" / "gbmedia"
        token = (data_dir / "operator.token").read_text().strip()
        assert oct((data_dir / "operator.token").stat().st_mode & 0o777) == "0o600"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/plans", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        assert (data_dir / "postgres" / "postmaster.pid").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    # The embedded database was stopped with the node.
    assert not (tmp_path / ".local" / "share" / "gbmedia" / "postgres" / "postmaster.pid").exists()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = [record["msg"] for record in records]
    assert "shutting down" in events and "embedded postgresql stopped" in events
    (started,) = [record for record in records if record["msg"] == "node started"]
    assert (started["udp_single_port"], started["udp_ports"]) == (True, "7882-7882")  # one media port by default
    # So was its own coturn (Debian's, which scripts/test installs; CI must have it).
    if shutil.which("turnserver") or os.environ.get("CI"):
        assert "embedded coturn started" in events and "embedded coturn stopped" in events
        (pidfile,) = (tmp_path / ".local" / "share" / "gbmedia" / "turn").glob("*/turnserver.pid")
        with pytest.raises(ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), 0)


def test_an_invalid_setting_stops_start_up_naming_the_variable(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "gbmedia", "serve"],
        env=bare_env(tmp_path, GBMEDIA_UDP_PORTS="9000-8000"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GBMEDIA_UDP_PORTS" in result.stderr
    assert not (tmp_path / ".local" / "share" / "gbmedia").exists()  # nothing was started


@pytest.mark.parametrize(
    ("host", "public", "expected"),
    [
        ("0.0.0.0", None, "http://127.0.0.1:7880"),
        ("0.0.0.0", "10.1.2.3", "http://10.1.2.3:7880"),
        ("192.168.1.5", None, "http://192.168.1.5:7880"),
        ("::1", None, "http://[::1]:7880"),
    ],
)
def test_public_url(host: str, public: str | None, expected: str):
    assert public_url(load_settings(host=host, public_host=public), 7880) == expected
