"""Every benchmark's ``--smoke`` run: ``python -m bench.<name> --smoke`` exits 0 and prints the figures it exists for.

The benchmarks are measurements, not tests: nothing here asserts a time or a rate. What is
asserted is that each one still runs end to end (its server child, its worker processes,
its clients) and that the figures it prints are there and come from real traffic.

The runs are started together, a few at a time (:data:`LANES`), when the first of these tests
starts: each spends most of its 5-30 s waiting (a server starting, a warm-up, a window), so run
one after the other they took two and a half minutes of the suite. Each test then reads its own
run's output. Only the selected tests' runs start (``-k`` picks one, one runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.lib import netns
from tests.conftest import IN_CI, service_missing

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds; a smoke run takes 5-30 s on a quiet 2-core machine, longer beside the others
LANES = 3  # runs at once: together about one core, the rest for the suite's other work
JANUS = Path("/usr/bin/janus").exists()  # scripts/test installs Debian's janus
DIR = "{dir}"  # in a run's arguments: the module's temporary directory (JSON files the tests read)
# The order the runs start in (their lengths on a quiet machine, longest first): the suite waits for the last.
LONGEST_FIRST = ("workers", "hls", "forwarding", "live", "chat", "cluster", "bots", "recording", "basic")


def run_smoke(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<name> --smoke *args`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smoke")


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest, smoke_dir: Path) -> Iterator[dict[str, Future[Any]]]:
    """Every selected test's run (its ``smoke`` marker), started now, ``LANES`` at a time, longest first."""
    wanted: list[tuple[str, ...]] = []
    for item in request.session.items:
        marker = item.get_closest_marker("smoke")
        if marker is not None and item.module is request.module:
            wanted.append(tuple(str(a).replace(DIR, str(smoke_dir)) for a in marker.args))
    wanted.sort(key=lambda args: LONGEST_FIRST.index(args[0]) if args[0] in LONGEST_FIRST else len(LONGEST_FIRST))
    with ThreadPoolExecutor(LANES, thread_name_prefix="smoke") as pool:
        yield {args[0]: pool.submit(run_smoke, *args) for args in wanted}


@pytest.fixture
def out(request: pytest.FixtureRequest, smoke_runs: dict[str, Future[Any]]) -> str:
    """This test's run's stdout (the run must have exited 0)."""
    name = request.node.get_closest_marker("smoke").args[0]
    done = smoke_runs[name].result()
    assert done.returncode == 0, (
        f"bench.{name} --smoke exited {done.returncode}:\n{done.stdout[-3000:]}\n" + (done.stderr[-5000:])
    )
    return str(done.stdout)


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON document a benchmark prints last (indented over many lines, or on one line)."""
    start = stdout.rfind("\n{\n")
    text = stdout[start + 1 :] if start >= 0 else stdout.strip().splitlines()[-1]
    return json.loads(text)


def measured(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    row = next(r for r in rows if r["subscribers"] == n)
    assert "error" not in row, row
    return row


@pytest.mark.smoke("forwarding", "--servers", "gbmedia,janus" if JANUS else "gbmedia", "--upkeep", "1")
def test_forwarding_smoke_forwards_to_one_subscriber_prints_cpu_per_packet_and_compares_with_janus(out: str) -> None:
    """One run for both servers where Janus is installed (CI installs it: a missing one fails there), gbmedia
    alone elsewhere: the gbmedia rows and tables are the same either way."""
    janus = JANUS
    if not janus and IN_CI:
        pytest.fail("required test service missing: Janus (Debian package janus), the forwarding benchmark's peer")
    assert "gbmedia forwarding: 1 publisher" in out
    assert ") (read every 5 ms) counting RTP" in out  # clear subscribers drained on a clock, not woken by the server
    for header in ("fwd pkt/s", "srv CPU%", "us/pkt", "fps min", "loss %", "Side by side", "Per server:"):
        assert header in out
    result = last_json(out)
    assert result["config"]["clear_subscribers"] is True and result["config"]["poll_ms"] == 5.0
    # The subscribers on a host of their own (bench/lib/netns.py) wherever one can be made: CI runs as root
    # with iproute2 and ethtool (scripts/test installs them), so there the run must have used one.
    if IN_CI or netns.missing() is None:
        assert result["config"]["subscriber_host"] == "netns"
        assert "subscribers on another host (a network namespace; server on 203.0.113." in out
    else:
        assert result["config"]["subscriber_host"] == "local" and "subscribers on this host (loopback)" in out
    row = measured([r for r in result["rows"] if r["server"] == "gbmedia"], 1)
    assert row["subscribers_joined"] == 1 and row["subscribers_without_media"] == 0
    assert row["packets_counted_by"] == "server"  # gbmedia's own counter on /metrics was read
    assert row["forwarded_packets_per_s"] > 0 and row["read_packets_per_s"] > 0
    assert row["server_us_per_packet"] > 0 and row["fps_min"] > 0
    assert row["loss_percent"] is not None
    assert row["link_drops"] == 0 and "link drops" in out  # one subscriber: nothing lost on the way to its host
    # --upkeep: a window with the track muted on the server (it forwards nothing then); per subscriber
    # only against an N=0 row, which the smoke run leaves out
    assert row["upkeep_cpu_percent"] > 0 and "upkeep_us_per_subscriber_s" not in row
    assert row["upkeep_runs_per_s"] > 0 and row["server_runs_per_s"] > 0  # a live node wakes up, muted or not
    assert "muted srv%" in out and "muted runs/s" in out
    assert isinstance(result["summary"]["servers"]["gbmedia"]["max_subscribers_30fps"], int)
    if janus:
        assert "janus forwarding: 1 publisher" in out and "Ratio gbmedia/Janus" in out
        row = measured([r for r in result["rows"] if r["server"] == "janus"], 1)
        assert row["forwarded_packets_per_s"] > 0
        assert "1" in result["summary"]["ratio_by_subscribers"]


@pytest.mark.smoke("live")
def test_live_smoke_plays_two_whep_viewers_and_gives_a_verdict(out: str) -> None:
    assert "gbmedia live: 1 WHIP publisher" in out
    for header in ("pub kbps", "fwd pkt/s", "srv CPU%", "verdict", "Largest N held by one server process"):
        assert header in out
    result = last_json(out)
    assert [r["subscribers"] for r in result["rows"]] == [0, 2]
    baseline, row = measured(result["rows"], 0), measured(result["rows"], 2)
    assert baseline["publisher_kbps"] > 0
    assert row["subscribers_joined"] == 2 and row["subscribers_without_media"] == 0
    assert row["forwarded_packets_per_s"] > 0 and row["fps_min"] > 0
    assert row["verdict"] in ("holds", "inconclusive", "fails")
    assert isinstance(result["summary"]["max_viewers_held"], int)
    # Clear viewers (the default): both counted their packets from the clear RTP headers, undecrypted,
    # and the server sent to them on its native fan-out (its /metrics, read after the window).
    assert result["config"]["clear_viewers"] is True and result["config"]["poll_ms"] == 5.0
    assert row["viewers_clear"] == 2
    assert row["down_tracks_native"] == 2 and row["down_tracks_python"] == 0
    assert "viewers/core" in out and "Goal: 1000 viewers per core" in out


@pytest.mark.smoke("chat", "--json", f"{DIR}/chat.json")
def test_chat_smoke_persists_and_delivers_every_message(out: str, smoke_dir: Path) -> None:
    for header in ("offered/s", "acked/s", "deliv/s", "deliv p99", "srv ms/msg", "Target (the issue)"):
        assert header in out
    assert "COUNT CHECK ok" in out
    result = json.loads((smoke_dir / "chat.json").read_text())
    (row,) = result["rows"]
    assert row["drained"] and not row["errors"]
    assert row["acked_per_s"] > 0 and row["deliveries_per_s"] > 0
    assert row["delivery_ms_p99"] is not None and row["ack_ms_p99"] is not None
    assert row["machine_probe"]["flushes"] > 0
    check = result["count_check"]
    assert check["ok"] and check["sent"] == check["acked"] == check["stored"] > 0


@pytest.mark.smoke("hls")
def test_hls_smoke_serves_ll_hls_parts_to_players(out: str) -> None:
    assert "LL-HLS: VP8 (transcoded)" in out
    for header in ("parts/s made", "req/s", "media p50 ms", "reload p50 ms", "CPU ms/req"):
        assert header in out
    result = last_json(out)
    (step,) = result["steps"]
    assert step["players"] == 5
    assert step["requests_per_s"] > 0 and step["bytes_per_s"] > 0 and step["parts_produced_per_s"] > 0
    assert step["media_p50_ms"] is not None and step["server_cpu_ms_per_request"] is not None


@pytest.mark.usefixtures("media_tools")
@pytest.mark.smoke("recording", "--json", f"{DIR}/recording.json")
def test_recording_smoke_records_both_tracks_with_both_pipelines(out: str, smoke_dir: Path) -> None:
    assert "gbmedia CPU s" in out and "aiortc CPU s" in out and "ms CPU per media s" in out
    result = json.loads((smoke_dir / "recording.json").read_text())
    assert [r["codec"] for r in result["results"]] == ["VP8", "opus"]
    for row in result["results"]:
        assert row["packets"] > 0 and row["kbps"] > 0
        for pipeline in ("gbmedia", "aiortc"):
            assert row[f"{pipeline}_cpu_s"] >= 0
            assert row[f"{pipeline}_file_duration_s"] > 2  # a 3 s stream, all of it written


@pytest.mark.smoke("quality")
def test_quality_smoke_prices_the_sinks_ticks_and_samples(out: str) -> None:
    assert "TrackMeter.on_rtp, per packet" in out and "SpeakerDetector.tick" in out
    result = last_json(out)
    assert set(result["per_packet_us"]) == {"track_meter", "level_meter", "loop"}
    assert set(result["tick_us"]) == {"2", "10", "50", "200"}
    assert all(value > 0 for value in result["tick_us"].values())
    assert result["sample_us"]["receiver"] > 0 and result["sample_us"]["sender"] > 0
    assert "RemoteBitrateEstimator.add (REMB), per vga packet" in out
    received = result["receive_us"]
    assert received["vga"]["packets_per_frame"] == 4 and received["4k"]["packets_per_frame"] == 68
    assert all(figures["parse"] > 0 and figures["remb_estimator"] > 0 for figures in received.values())


@pytest.mark.smoke("cluster", "--redis-url", "redis://127.0.0.1:6379/14")  # workers flushes 13, at once
def test_cluster_smoke_joins_both_ways_counts_redis_calls_and_holds_idle_sockets(out: str) -> None:
    assert "gbmedia cluster: 2 node processes" in out
    for header in ("straight to the owner", "through another node", "Redis calls/join", "KB per socket"):
        assert header in out
    result = last_json(out)
    for path in ("join_direct", "join_relayed"):
        row = result[path]
        assert row["joins"] == 20 and row["p50_ms"] > 0 and row["redis_calls_per_join"] > 0
    # Relaying looks the owner up in Redis: more calls than a join on the owner itself.
    assert result["join_relayed"]["redis_calls_per_join"] > result["join_direct"]["redis_calls_per_join"]
    idle = result["idle_sockets"]
    assert idle["sockets"] == 50 and idle["healthz_ok"] is True


@pytest.mark.smoke("workers")
def test_workers_smoke_runs_one_and_two_workers_and_prints_the_scaling_efficiency(out: str) -> None:
    assert "gbmedia live fan-out across workers" in out and "scaling efficiency" in out
    result = last_json(out)
    rows = {r["workers"]: r for r in result["rows"]}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert "error" not in row, row
        assert row["subscribers_joined"] == 2 and row["subscribers_without_media"] == 0
        assert row["server_cpu_percent"] > 0 and row["verdict"] in ("holds", "inconclusive", "fails")
    assert set(result["summary"]["max_viewers_held"]) == {"1", "2"}


@pytest.mark.smoke("basic")
def test_basic_smoke_runs_the_dialog_in_cpython_and_its_javascript_translation_in_node(
    request: pytest.FixtureRequest,
) -> None:
    if shutil.which("node") is None and shutil.which("nodejs") is None:  # scripts/test installs Debian's nodejs
        service_missing("Node (Debian package nodejs), the old platform's runtime in the BASIC benchmark")
    out = request.getfixturevalue("out")
    assert "GB BASIC CPU-bound loop" in out and "gbmedia interpreter" in out and "CPython (same program)" in out
    assert "Node (JS translation)" in out and "gbmedia compiled (wasm)" in out
    result = last_json(out)
    assert result["gbmedia_compiled"]["statements_per_s"] > 0  # its total matched the others' (else no figures)
    # The benchmark itself refuses to print figures when the three programs' totals differ.
    assert result["iterations"] == 3000 and result["result"] == sum(i * 2 if i % 3 == 0 else -1 for i in range(1, 3001))
    assert result["statements"] > 3 * 3000  # the interpreter's own count: test, branch, assignment, step per turn
    assert result["gbmedia_basic"]["statements_per_s"] > 0 and result["cpython"]["statements_per_s"] > 0
    assert result["node_translation"]["statements_per_s"] > 0 and result["node_translation"]["node"].startswith("v")


@pytest.mark.smoke("bots")
def test_bots_smoke_users_talk_to_a_dialog_over_rtc_chat_and_get_each_answer_once(out: str) -> None:
    assert "GB BASIC bot: 5 users at once" in out and "a number (answers the HEAR)" in out
    result = last_json(out)
    # Every reply was checked word for word by the benchmark (it exits 1 on a wrong, missing or doubled one).
    assert result["replies"] == 5 * (1 + 2) and result["extra_replies"] == 0
    assert result["start"]["replies"] == 5 and result["hear"]["replies"] == 10
    assert result["all"]["p50_ms"] > 0 and result["all"]["p99_ms"] >= result["all"]["p50_ms"]
    assert result["replies_per_s"] > 0 and result["server_cpu_percent"] > 0


@pytest.mark.smoke("fanout_floor")
def test_fanout_floor_smoke_splits_the_native_fan_outs_cpu_into_user_and_kernel(out: str) -> None:
    assert "The native fan-out alone" in out and "user us/dgram" in out and "sys us/dgram" in out
    result = last_json(out)
    (row,) = result["rows"]
    assert row["subscribers"] == 4 and row["incoming_packets"] > 50
    assert row["received"] == row["incoming_packets"] * 4  # every datagram reached its receiver
    assert row["us_per_datagram"] > 0 and result["protect_us_from_python"] > 0
    assert result["library"].startswith("libsrtp2 2.")
    # The receivers in a namespace of their own wherever one can be made (CI: scripts/test installs what it needs)
    if IN_CI or netns.missing() is None:
        assert result["config"]["receivers"] == "netns" and "N receivers in a network namespace of their own" in out
    else:
        assert result["config"]["receivers"] == "local" and "N receivers on 127.0.0.1" in out
