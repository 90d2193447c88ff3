"""``gbmedia serve --workers N``: the supervisor, its workers on one HTTP port, restarts and stop.

The process tests run the real command with real Redis (``GBMEDIA_TEST_REDIS_URL``)
and, for the main one, the embedded PostgreSQL the supervisor starts for its workers.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest

from gbmedia import workers
from gbmedia.cli import build_parser
from gbmedia.config import ConfigError, load_settings
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.workers import MIN_UDP_PORTS_PER_WORKER, plan_workers, restart_delay, split_port_range, worker_count
from tests.cluster import create_tenant_over_http
from tests.helpers import OPERATOR, OPERATOR_TOKEN, bearer
from tests.processes import alive
from tests.rtc import RtcClient
from tests.test_server import bare_env

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"^worker (\d+) \(node ([^,\s]+), pid (\d+)\) ready$")


@pytest.fixture(autouse=True)
def no_gbmedia_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GBMEDIA_") and not name.startswith("GBMEDIA_TEST_"):
            monkeypatch.delenv(name)


# --- the pure pieces ----------------------------------------------------------------


def test_a_range_splits_into_disjoint_contiguous_slices_covering_it():
    slices = split_port_range((50000, 60000), 3)
    assert slices == [(50000, 53333), (53334, 56667), (56668, 60000)]
    assert split_port_range((50000, 50031), 2) == [(50000, 50015), (50016, 50031)]
    assert split_port_range((50000, 50099), 1) == [(50000, 50099)]
    for count in range(1, 20):
        parts = split_port_range((40000, 40999), count)
        assert parts[0][0] == 40000 and parts[-1][1] == 40999
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(parts))
        sizes = {high - low + 1 for low, high in parts}
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= MIN_UDP_PORTS_PER_WORKER


def test_a_range_too_small_for_the_workers_is_refused_naming_the_variable():
    with pytest.raises(ConfigError, match=r"GBMEDIA_UDP_PORTS 50000-50030 has 31 ports; 2 workers need at least 32"):
        split_port_range((50000, 50030), 2)


def test_default_worker_count_is_one_per_core_in_a_cluster_and_one_alone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    monkeypatch.setattr(workers, "cgroup_cpu_quota", lambda root: None)
    assert workers.available_cores() == 3
    assert worker_count(load_settings()) == 1
    assert worker_count(load_settings(redis_url="redis://127.0.0.1:6379/7")) == 3
    assert worker_count(load_settings(redis_url="redis://127.0.0.1:6379/7", workers=2)) == 2
    assert worker_count(load_settings(workers=1)) == 1
    monkeypatch.setenv("GBMEDIA_WORKERS", "4")
    assert worker_count(load_settings(redis_url="redis://127.0.0.1:6379/7")) == 4


@pytest.mark.parametrize(
    ("files", "quota", "cores"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0, 2),
        ({"cpu.max": "150000 100000\n"}, 1.5, 2),  # a fraction of a core counts as one
        ({"cpu.max": "max 100000\n"}, None, 8),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 8),
        ({}, None, 8),
    ],
)
def test_a_containers_cpu_quota_caps_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], quota: float | None, cores: int
):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert workers.cgroup_cpu_quota(tmp_path) == quota
    assert workers.available_cores(tmp_path) == cores


def test_several_workers_without_redis_are_refused():
    with pytest.raises(ConfigError, match="2 workers need GBMEDIA_REDIS_URL"):
        worker_count(load_settings(workers=2))


def test_the_flag_sets_the_worker_count():
    assert build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert build_parser().parse_args(["serve"]).workers is None


def test_restart_backoff_doubles_up_to_a_limit():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == workers.MAX_RESTART_DELAY


def test_each_worker_gets_its_node_id_udp_slice_and_the_shared_secret_port_and_database(tmp_path: Path):
    settings = load_settings(
        data_dir=tmp_path,
        node_id="box",
        udp_ports="50000-50063",
        cluster_port=7900,
        host="127.0.0.1",
        redis_url="redis://127.0.0.1:6379/7",
    )
    plans = plan_workers(settings, 2, port=8123, cluster_secret="s" * 32, database_url="postgresql://db/x")
    env = [plan.environment({"PATH": "/bin"}) for plan in plans]
    assert [(e["GBMEDIA_NODE_ID"], e["GBMEDIA_UDP_PORTS"], e["GBMEDIA_CLUSTER_PORT"]) for e in env] == [
        ("box-w0", "50000-50031", "7900"),
        ("box-w1", "50032-50063", "7901"),
    ]
    for index, e in enumerate(env):
        assert e["GBMEDIA_WORKER_INDEX"] == str(index)
        assert (e["GBMEDIA_PORT"], e["GBMEDIA_HOST"], e["GBMEDIA_CLUSTER_SECRET"]) == ("8123", "127.0.0.1", "s" * 32)
        assert (e["GBMEDIA_DATABASE_URL"], e["GBMEDIA_DATA_DIR"]) == ("postgresql://db/x", str(tmp_path))
        assert e["PATH"] == "/bin"
        assert e["GBMEDIA_WORKERS"] == "2"


def test_a_worker_setting_that_would_not_load_is_refused_before_anything_starts(tmp_path: Path):
    settings = load_settings(data_dir=tmp_path, node_id="n" * 126, redis_url="redis://127.0.0.1:6379/7")
    with pytest.raises(ConfigError, match="GBMEDIA_NODE_ID"):
        plan_workers(settings, 2, port=0, cluster_secret="s" * 32, database_url=None)
    settings = load_settings(data_dir=tmp_path, cluster_port=65535, redis_url="redis://127.0.0.1:6379/7")
    with pytest.raises(ConfigError, match="GBMEDIA_CLUSTER_PORT"):
        plan_workers(settings, 2, port=0, cluster_secret="s" * 32, database_url=None)


def test_a_process_started_by_no_supervisor_is_no_worker(monkeypatch: pytest.MonkeyPatch):
    assert workers.worker_index() is None
    monkeypatch.setenv("GBMEDIA_WORKER_INDEX", "3")
    assert workers.worker_index() == 3
    monkeypatch.setenv("GBMEDIA_WORKER_INDEX", "x")
    with pytest.raises(ConfigError, match="GBMEDIA_WORKER_INDEX"):
        workers.worker_index()


# --- real processes -------------------------------------------------------------------


class Supervised:
    """``gbmedia serve`` in a child; stdout read line by line on a thread, stderr (the logs) in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.log_path = tmp_path / "serve.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gbmedia", "serve", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"no {pattern!r}: exited with {self.proc.wait()}\n{self.log_tail()}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} within {timeout} s; stdout so far {self.seen}\n{self.log_tail()}")

    def events(self, msg: str) -> list[dict]:
        entries = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        return [e for e in entries if e.get("msg") == msg]

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-40:])

    def close(self) -> None:
        """Kill what a failed test left: the supervisor, then every worker it announced."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for line in self.seen:
            if (match := READY.match(line)) and alive(pid := int(match[3])):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


def two_free_udp_ports() -> int:
    """A port that is free with the next one (for two workers' media sockets)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
            if base >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                try:
                    other.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
                return base
    raise RuntimeError("no two consecutive free UDP ports")


def node_ids_seen(port: int, want: set[str], tries: int = 400) -> set[str]:
    """``GET /healthz`` over fresh connections until every node in ``want`` answered (or tries run out)."""
    seen: set[str] = set()
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
                seen.add(json.loads(resp.read())["node_id"])
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # a worker that just died: its queued connections are reset
        if want <= seen:
            break
    return seen


def wait_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_two_workers_share_the_port_restart_when_killed_and_stop_on_sigterm(tmp_path: Path, redis_url: str):
    node = f"wk-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    env = bare_env(
        tmp_path,
        GBMEDIA_REDIS_URL=redis_url,
        GBMEDIA_DATA_DIR=str(data_dir),
        GBMEDIA_NODE_ID=node,
        GBMEDIA_UDP_PORT=str(base := two_free_udp_ports()),
        GBMEDIA_HOST="127.0.0.1",
    )
    server = Supervised(tmp_path, env, "--workers", "2", "--port", "0")
    try:
        ready = [server.wait_for(READY.pattern) for _ in range(2)]
        pids = {int(m[1]): int(m[3]) for m in ready}
        assert {m[2] for m in ready} == {f"{node}-w0", f"{node}-w1"}
        port = int(server.wait_for(r"^gbmedia listening on http://127\.0\.0\.1:(\d+)$")[1])
        server.wait_for(f"^operator token in {re.escape(str(data_dir))}/operator.token$")
        assert (data_dir / "cluster.secret").exists()
        # The supervisor's dashboard link logs in through whichever worker the connection reaches.
        code = server.wait_for(rf"^open the dashboard .*: http://127\.0\.0\.1:{port}/web/dashboard/#login=(\S+)$")[1]
        login = urllib.request.Request(
            f"http://127.0.0.1:{port}/dashboard/login",
            data=json.dumps({"code": code}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login, timeout=10) as resp:
            assert json.loads(resp.read())["token"] == (data_dir / "operator.token").read_text().strip()

        # One port, two nodes: fresh connections reach both.
        both = {f"{node}-w0", f"{node}-w1"}
        assert node_ids_seen(port, both) == both

        # One media port each, counting up from the configured one, as each node reported it at start.
        started = {e["node_id"]: e["udp_ports"] for e in server.events("node started")}
        assert started == {f"{node}-w0": f"{base}-{base}", f"{node}-w1": f"{base + 1}-{base + 1}"}
        assert all(e["embedded_db"] is False for e in server.events("node started"))  # the supervisor's database

        # A worker killed is started again, with the same index, node id and slice.
        os.kill(pids[0], signal.SIGKILL)
        again = server.wait_for(rf"^worker 0 \(node {node}-w0, pid (\d+)\) ready$")
        new_pid = int(again[1])
        assert new_pid != pids[0] and not alive(pids[0])
        pids[0] = new_pid
        assert node_ids_seen(port, both) == both
        exits = [e for e in server.events("worker exited") if e["pid"] != new_pid]
        assert [(e["worker"], e["signal"], e["expected"]) for e in exits] == [(0, "SIGKILL", False)]
        assert [e["worker"] for e in server.events("worker restarting")] == [0]
        restarted = [e for e in server.events("worker started") if e["restart"]]
        assert [(e["worker"], e["pid"], e["udp_ports"]) for e in restarted] == [(0, new_pid, f"{base}-{base}")]

        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=180)
        assert code == 0, server.log_tail()
        assert all(wait_gone(pid) for pid in pids.values())
        stopped = [e for e in server.events("worker exited") if e["expected"]]
        assert sorted((e["worker"], e["exit_code"]) for e in stopped) == [(0, 0), (1, 0)]
        # The embedded database the supervisor started is stopped with it.
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
    finally:
        server.close()


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path, database_url: str):
    env = bare_env(
        tmp_path,
        GBMEDIA_REDIS_URL="redis://127.0.0.1:1/7",  # nothing listens there: each worker fails its start
        GBMEDIA_DATABASE_URL=database_url,
        GBMEDIA_DATA_DIR=str(tmp_path / "data"),
        GBMEDIA_UDP_PORTS="51100-51163",
        GBMEDIA_HOST="127.0.0.1",
    )
    server = Supervised(tmp_path, env, "--workers", "2", "--port", "0")
    try:
        code = server.proc.wait(timeout=180)
        assert code == 1, server.log_tail()
        assert server.events("worker failed to start, stopping")
        started = [e["pid"] for e in server.events("worker started")]
        assert len(started) == 2 and all(wait_gone(pid) for pid in started)
        assert not server.events("worker restarting")
    finally:
        server.close()


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["--workers", "2"], {}),
        ([], {"GBMEDIA_WORKERS": "3"}),
        (["--workers", "2"], {"GBMEDIA_WORKERS": "1"}),  # the flag wins
    ],
)
def test_several_workers_without_redis_exit_2_naming_the_variable(tmp_path: Path, args: list[str], extra: dict):
    result = subprocess.run(
        [sys.executable, "-m", "gbmedia", "serve", *args],
        cwd=REPO,
        env=bare_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "GBMEDIA_REDIS_URL" in result.stderr
    assert not (tmp_path / ".local" / "share" / "gbmedia").exists()  # nothing was started


def test_a_udp_range_too_small_for_the_workers_exits_2(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "gbmedia", "serve", "--workers", "4"],
        cwd=REPO,
        env=bare_env(tmp_path, GBMEDIA_REDIS_URL="redis://127.0.0.1:1/7", GBMEDIA_UDP_PORTS="50000-50050"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "GBMEDIA_UDP_PORTS 50000-50050 has 51 ports; 4 workers need at least 64" in result.stderr


def test_a_worker_that_does_not_stop_in_time_is_killed(tmp_path: Path, redis_url: str, database_url: str):
    env = bare_env(
        tmp_path,
        GBMEDIA_REDIS_URL=redis_url,
        GBMEDIA_DATABASE_URL=database_url,
        GBMEDIA_DATA_DIR=str(tmp_path / "data"),
        GBMEDIA_NODE_ID=f"wk-{uuid.uuid4().hex[:8]}",
        GBMEDIA_UDP_PORTS="51200-51263",
        GBMEDIA_HOST="127.0.0.1",
        GBMEDIA_DRAIN_TIMEOUT="0",
        GBMEDIA_SHUTDOWN_TIMEOUT="0",
    )
    server = Supervised(tmp_path, env, "--workers", "2", "--port", "0")
    try:
        pids = {int(m[1]): int(m[3]) for m in (server.wait_for(READY.pattern) for _ in range(2))}
        server.wait_for("^gbmedia listening on ")
        os.kill(pids[1], signal.SIGSTOP)  # a stopped worker cannot act on SIGTERM
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=120) == 1, server.log_tail()
        assert [e["worker"] for e in server.events("worker killed: it did not stop in time")] == [1]
        exits = {e["worker"]: e for e in server.events("worker exited")}
        assert (exits[0]["exit_code"], exits[1]["exit_code"]) == (0, -9)
        assert all(wait_gone(pid) for pid in pids.values())
    finally:
        server.close()


def test_a_port_already_taken_is_refused_naming_the_variable(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gbmedia", "serve", "--workers", "2", "--port", str(port)],
            cwd=REPO,
            env=bare_env(tmp_path, GBMEDIA_REDIS_URL="redis://127.0.0.1:1/7", GBMEDIA_HOST="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"GBMEDIA_PORT {port} on 127.0.0.1: Address already in use" in result.stderr


def test_gbmedia_drain_stops_every_worker_and_then_the_supervisor(tmp_path: Path, redis_url: str, database_url: str):
    node = f"wk-{uuid.uuid4().hex[:8]}"
    env = bare_env(
        tmp_path,
        GBMEDIA_REDIS_URL=redis_url,
        GBMEDIA_DATABASE_URL=database_url,
        GBMEDIA_DATA_DIR=str(tmp_path / "data"),
        GBMEDIA_NODE_ID=node,
        GBMEDIA_UDP_PORTS="51300-51363",
        GBMEDIA_HOST="127.0.0.1",
    )
    server = Supervised(tmp_path, env, "--workers", "2", "--port", "0")
    try:
        pids = [int(server.wait_for(READY.pattern)[3]) for _ in range(2)]
        server.wait_for("^gbmedia listening on ")
        drain = subprocess.run(
            [sys.executable, "-m", "gbmedia", "drain", "--node", node, "--wait", "--timeout", "120"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert drain.returncode == 0, drain.stderr
        assert sorted(json.loads(drain.stdout)["drained"]) == [f"{node}-w0", f"{node}-w1"]
        # Drained workers leave for good: no restart, and the supervisor follows them out.
        assert server.proc.wait(timeout=120) == 0, server.log_tail()
        assert sorted(e["worker"] for e in server.events("worker drained, not restarted")) == [0, 1]
        assert not server.events("worker restarting")
        assert all(wait_gone(pid) for pid in pids)
    finally:
        server.close()


async def test_a_room_on_one_worker_is_served_through_the_shared_port_whichever_worker_answers(
    tmp_path: Path, redis_url: str, database_url: str
):
    """Why workers need the cluster: the kernel picks the worker, the registry names the room's owner."""
    node = f"wk-{uuid.uuid4().hex[:8]}"
    env = bare_env(
        tmp_path,
        GBMEDIA_REDIS_URL=redis_url,
        GBMEDIA_DATABASE_URL=database_url,
        GBMEDIA_DATA_DIR=str(tmp_path / "data"),
        GBMEDIA_NODE_ID=node,
        GBMEDIA_UDP_PORTS="51400-51463",
        GBMEDIA_HOST="127.0.0.1",
        GBMEDIA_PUBLIC_HOST="127.0.0.1",  # the cluster listeners' advertised address: where they listen
        GBMEDIA_OPERATOR_TOKEN=OPERATOR_TOKEN,
        GBMEDIA_API_RATE_LIMIT="100000",
        GBMEDIA_API_RATE_BURST="100000",
        GBMEDIA_JOIN_RATE_BURST="100000",
        GBMEDIA_AUTH_FAILURE_BURST="100000",
        GBMEDIA_NODE_MAX_CPU="1",  # the shared test machine's CPU: placement by cost only
        GBMEDIA_HLS_ENABLED="false",
    )
    server = Supervised(tmp_path, env, "--workers", "2", "--port", "0")
    clients: list[RtcClient] = []
    try:
        for _ in range(2):
            server.wait_for(READY.pattern)
        url = server.wait_for(r"^gbmedia listening on (\S+)$")[1]
        workers_ = {f"{node}-w0", f"{node}-w1"}
        # Fresh connections for every request, so the kernel picks a worker each time.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(url + "/api/v1/nodes", headers=OPERATOR) as resp:
                nodes = {n["node_id"]: n for n in (await resp.json())["nodes"]}
            assert workers_ <= set(nodes)
            internal = {nodes[w]["internal_url"] for w in workers_}
            assert len(internal) == 2 and "" not in internal  # each worker has its own cluster listener
            tenant = await create_tenant_over_http(http, url)
            async with http.post(
                url + "/api/v1/rooms", json={"name": "standup"}, headers=bearer(tenant.token())
            ) as resp:
                assert resp.status == 201, await resp.text()
                room = await resp.json()
            assert room["node_id"] in workers_
            for _ in range(30):  # some land on the owner, the others are relayed to it
                async with http.get(url + f"/api/v1/rooms/{room['id']}", headers=bearer(tenant.token())) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["node_id"] == room["node_id"]
            for identity in ("alice", "bob", "carol"):
                client = RtcClient(await http.ws_connect(url.replace("http", "ws", 1) + "/rtc?room=standup"))
                clients.append(client)
                token = mint_token(tenant.key, tenant.secret, identity, Grants.participant("standup"))
                joined = await client.join(token)
                assert joined["type"] == "joined", joined
            # Each joined whichever worker took its socket: all three are in the one room.
            async with http.get(
                url + f"/api/v1/rooms/{room['id']}/participants", headers=bearer(tenant.token())
            ) as resp:
                assert sorted(p["identity"] for p in (await resp.json())["participants"]) == ["alice", "bob", "carol"]
    finally:
        for client in clients:
            await client.close()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=180)
        server.close()
    assert code == 0, server.log_tail()
