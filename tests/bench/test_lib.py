"""The benchmarks' library pieces that are plain logic: statistics, tables, /proc parsing, the verdicts.

A smoke run shows a benchmark still runs; these show that what it prints is computed
right, on inputs small enough to check by hand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bench import forwarding, workers
from bench.lib import chat_report, clip, forwarding_report, janus, proc, profile, report, runner
from bench.lib.chatclient import Plan
from bench.lib.cli import cpu_list, env_pair
from bench.lib.errors import BenchError
from bench.lib.fanout import Snapshot, add_marginals, measure
from bench.lib.hlsplayer import Stats
from bench.lib.media import AUDIO_SAMPLES, ReplayVideoTrack, audio_frame
from bench.lib.server import parse_labeled, parse_metrics
from bench.lib.signaling import ws_url
from bench.lib.stats import cpu_delta, percentile, percentile_ms
from bench.lib.subscriber import PacketCounter, Subscriber, join_all
from bench.lib.websocket import WS_GUID, RawWebSocket

# --- stats ---------------------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank_and_none_without_values() -> None:
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 50) == 2  # a measured value, never an interpolated 2.5


def test_percentile_ms_converts_microseconds() -> None:
    assert percentile_ms([1500, 2500, 40_000], 100) == 40.0
    assert percentile_ms([], 99) is None


def test_cpu_delta_counts_new_processes_from_zero_and_leaves_out_restarted_ones() -> None:
    assert cpu_delta({1: 1.0, 2: 5.0}, {1: 1.5, 2: 4.0, 3: 0.25}) == pytest.approx(0.75)


# --- report --------------------------------------------------------------------------------------------------


def test_fmt_marks_missing_values_and_verdicts() -> None:
    assert report.fmt(None, ".1f") == "-"
    assert report.fmt(True, "") == "yes"
    assert report.fmt(False, "") == "NO"
    assert report.fmt(3.14159, ".2f") == "3.14"
    assert report.fmt(12, "") == "12"


def test_table_aligns_right_and_underlines_the_header(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"n": 1, "rate": 12.345}, {"n": 100, "rate": None}]
    lines = report.table(rows, [report.col("N", "n"), report.col("rate/s", "rate", ".1f"), report.col("x", "gone")])
    assert lines == [("N", "rate/s", "x"), ("1", "12.3", "-"), ("100", "-", "-")]
    report.print_aligned(lines)
    assert capsys.readouterr().out.splitlines() == [
        "  N  rate/s  x",
        "---  ------  -",
        "  1    12.3  -",
        "100       -  -",
    ]


def test_print_json_prints_and_writes_the_same_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report.print_json({"a": 1, "b": [1.5]}, tmp_path / "out.json")
    printed = capsys.readouterr().out
    assert printed.startswith("\n{\n")
    assert (tmp_path / "out.json").read_text() == printed.lstrip("\n")


def test_machine_info_adds_what_the_caller_read() -> None:
    info = report.machine_info(loadavg=[1.0])
    assert info["cpus"] == os.cpu_count() and info["loadavg"] == [1.0] and info["python"]


# --- /proc ---------------------------------------------------------------------------------------------------


def test_parse_stat_finds_the_fields_after_a_command_name_with_spaces_and_parentheses() -> None:
    line = "4242 (tricky ) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 5 0 100 0 0"
    fields = proc.parse_stat(line)
    assert fields[0] == "S"
    assert int(fields[proc.PPID]) == 1
    assert (int(fields[proc.UTIME]), int(fields[proc.STIME])) == (250, 75)
    assert (int(fields[proc.CUTIME]), int(fields[proc.CSTIME])) == (3, 4)


def test_parse_machine_busy_leaves_out_idle_and_iowait() -> None:
    text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n"
    busy, total = proc.parse_machine_busy(text)
    assert total == 100 + 5 + 50 + 1000 + 20 + 3 + 2 + 1
    assert busy == total - 1000 - 20


def test_parse_udp_table_sums_drops_and_queued_bytes_of_the_given_sockets() -> None:
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer"
    )
    rows = [
        "  1: 0100007F:9C40 00000000:0000 07 00000000:00000400 00:00000000 00000000     0        0 111 2 0 5",
        "  2: 0100007F:9C41 00000000:0000 07 00000000:00000010 00:00000000 00000000     0        0 222 2 0 7",
        "  3: 0100007F:9C42 00000000:0000 07 00000000:00000001 00:00000000 00000000     0        0 333 2 0 9",
    ]
    assert proc.parse_udp_table("\n".join([header, *rows]), {"111", "222"}) == (12, 0x400 + 0x10)
    assert proc.parse_udp_table(header, {"111"}) == (0, 0)


def test_this_process_reads_its_own_cpu_and_an_unread_datagram() -> None:
    started = proc.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert proc.cpu_seconds(os.getpid()) >= started
    assert proc.oncpu_seconds(os.getpid()) > 0
    assert proc.proc_stat(2**22 + 12345) is None  # no such pid: 0 CPU, not an error
    assert proc.cpu_seconds(2**22 + 12345) == 0.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.sendto(b"x" * 500, rx.getsockname())
        time.sleep(0.05)
        drops, queued = proc.udp_sockets(os.getpid())
    assert drops == 0 and queued >= 500


def test_descendants_and_reading_the_machine() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in proc.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    busy, total = proc.machine_busy()
    assert 0 <= busy <= total
    reading = proc.read_server(os.getpid())
    assert set(reading) == {
        "t",
        "server_cpu",
        "server_sys",
        "server_wait",
        "server_runs",
        "orchestrator_cpu",
        "machine",
    }
    runs = proc.cpu_runs(os.getpid())
    for _ in range(5):
        time.sleep(0.01)  # each sleep ends in a wake-up: the thread is put on a CPU again
    assert proc.cpu_runs(os.getpid()) >= runs + 5


def test_embedded_postmaster_pid_reads_the_first_line(tmp_path: Path) -> None:
    assert proc.embedded_postmaster_pid(tmp_path) is None
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "postmaster.pid").write_text("4321\n/data\n")
    assert proc.embedded_postmaster_pid(tmp_path) == 4321


# --- py-spy profiles -----------------------------------------------------------------------------------------


def test_collapsed_stacks_and_frames() -> None:
    text = "main (a.py:1);work (b.py:2) 7\nbroken line\nmain (a.py:1) 3\n"
    assert list(profile.collapsed_stacks(text)) == [(["main (a.py:1)", "work (b.py:2)"], 7), (["main (a.py:1)"], 3)]
    where = "/x/lib/python3.11/site-packages/aiohttp/web_ws.py:88"
    assert profile.split_frame(f"receive ({where})") == ("receive", "aiohttp/web_ws.py:88")


def test_the_forwarding_profile_summary_counts_self_time_by_function_and_file(tmp_path: Path) -> None:
    path = tmp_path / "server-n1.txt"
    path.write_text("thread 1;run (x/bus.py:3);send (x/rtp.py:9) 3\nthread 1;run (x/bus.py:3) 1\n")
    lines = forwarding_report.profile_summary(path)
    assert lines[0].endswith("4 samples (py-spy, 100/s, idle excluded); top functions by self time:")
    assert "75.0%  send (x/rtp.py)" in [line.strip() for line in lines]
    assert forwarding_report.profile_summary(tmp_path / "missing.txt") == [f"{tmp_path / 'missing.txt'}: no samples"]


def test_the_chat_profile_summary_buckets_by_purpose_and_skips_idle_threads(tmp_path: Path) -> None:
    path = tmp_path / "server-r50.txt"
    path.write_text(
        "main (m.py:1);_execute (gbmedia/messaging/group_commit.py:10) 6\n"
        "main (m.py:1);take (gbmedia/ratelimit.py:5) 2\n"
        "main (m.py:1);other (o.py:2) 2\n"
        "_worker (concurrent/futures/thread.py:1);_queue_SimpleQueue_get (q.py:1) 50\n"
    )
    lines = chat_report.profile_summary(path)
    assert "10 samples" in lines[0]
    assert any(line.strip().startswith("60.0%  group commit: the batch statement") for line in lines)
    assert any(line.strip().startswith("20.0%  rate limiter") for line in lines)
    assert any(line.strip().startswith(f"20.0%  {chat_report.OTHER_BUCKET}") for line in lines)


# --- server, signaling, command line -------------------------------------------------------------------------


def test_parse_metrics_sums_label_sets_and_skips_comments() -> None:
    text = (
        "# HELP gbmedia_rtp_packets_forwarded_total RTP packets\n"
        "# TYPE gbmedia_rtp_packets_forwarded_total counter\n"
        "gbmedia_rtp_packets_forwarded_total 1.5e+03\n"
        'gbmedia_labelled_total{kind="a"} 2\n'
        'gbmedia_labelled_total{kind="b"} 3\n'
    )
    assert parse_metrics(text) == {"gbmedia_rtp_packets_forwarded_total": 1500.0, "gbmedia_labelled_total": 5.0}


def test_parse_labeled_splits_one_metric_by_one_label() -> None:
    text = (
        "# HELP gbmedia_down_tracks_by_path Down tracks sending, by fan-out path\n"
        'gbmedia_down_tracks_by_path{path="native"} 600\n'
        'gbmedia_down_tracks_by_path{room="r",path="python"} 2\n'
        'gbmedia_down_tracks_by_path{room="s",path="python"} 1\n'
        'gbmedia_down_tracks_by_path{room="t"} 7\n'  # without the label: left out
        'gbmedia_down_tracks_by_path_total{path="native"} 9\n'  # another metric whose name starts alike
        'gbmedia_other{path="native"} 5\n'
    )
    assert parse_labeled(text, "gbmedia_down_tracks_by_path", "path") == {"native": 600.0, "python": 3.0}
    assert parse_labeled(text, "gbmedia_absent", "path") == {}


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/rtc"
    assert ws_url("https://example.test") == "wss://example.test/rtc"


def test_env_pair_and_cpu_list() -> None:
    assert env_pair("GBMEDIA_X=a=b") == ("GBMEDIA_X", "a=b")
    with pytest.raises(Exception, match="NAME=VALUE"):
        env_pair("novalue")
    first = min(os.sched_getaffinity(0))
    assert cpu_list(str(first)) == {first}
    with pytest.raises(Exception, match="CPU numbers"):
        cpu_list("one")
    with pytest.raises(Exception, match="may run on"):
        cpu_list("4096")


def test_workdir_is_removed_after_a_good_run_and_kept_after_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with runner.workdir("gbmedia-bench-test-") as good:
        (good / "log").write_text("x")
    assert not good.exists()
    with pytest.raises(RuntimeError), runner.workdir("gbmedia-bench-test-") as failed:
        raise RuntimeError("boom")
    assert failed.exists() and f"logs kept in {failed}" in capsys.readouterr().err
    failed.rmdir()


# --- media, subscribers' counting ----------------------------------------------------------------------------


def test_audio_frame_is_20_ms_of_a_tone_timestamped_in_samples() -> None:
    frame = audio_frame(3)
    assert frame.samples == AUDIO_SAMPLES and frame.sample_rate == 48000 and frame.pts == 3 * AUDIO_SAMPLES
    assert abs(frame.to_ndarray()).max() > 7000


@dataclass
class FakePacket:
    sequence_number: int
    marker: int = 0
    payload: bytes = b"\x00" * 10


@dataclass
class FakeCodec:
    mimeType: str = "video/VP8"  # aiortc's name


def test_packet_counter_counts_frames_duplicates_and_loss_across_the_sequence_wrap() -> None:
    counter = PacketCounter()
    for seq, marker in ((65534, 0), (65535, 1), (65535, 1), (1, 1), (2, 0)):  # 0 lost, 65535 resent
        counter(FakePacket(seq, marker), FakeCodec())
    c = counter.counts
    assert (c.packets, c.unique, c.duplicates, c.frames) == (5, 4, 1, 2)
    assert c.ext_seq == 65534 + 4  # extended past the wrap: 5 sequence numbers from the first, one missing
    assert c.bytes == 50 and c.first_at is not None


# --- one publisher, N receivers: a window's figures ----------------------------------------------------------


class FakePublisher:
    def ping_ms(self, start: float, end: float) -> tuple[float | None, float | None]:
        return (1.0, 2.0)

    def lag_ms_max(self, start: float, end: float) -> float | None:
        return 0.5


def snapshot(t: float, cpu: float, subs: list[dict[str, Any]], packets: int, frames: int) -> Snapshot:
    return Snapshot(
        t=t,
        server_cpu=cpu,
        server_sys=cpu / 4,
        server_wait=0.0,
        server_runs=int(t * 100),
        orchestrator_cpu=0.0,
        machine=(t * 50, t * 100),
        server_udp_drops=0,
        server_udp_queued=0,
        link_drops=int(t * 3),
        postgres_cpu=0.0,
        publisher={
            "packets": packets,
            "bytes": packets * 1000,
            "frames": frames,
            "forced_keyframes": 0,
            "state": "connected",
        },
        workers=[{"t": t, "cpu": 0.0, "udp_drops": 0, "udp_queued": 0, "subs": subs}],
    )


def sub(packets: int, unique: int, frames: int, ext_seq: int) -> dict[str, Any]:
    return {
        "packets": packets,
        "unique": unique,
        "duplicates": packets - unique,
        "frames": frames,
        "keyframes": 0,
        "ext_seq": ext_seq,
    }


def test_measure_turns_two_snapshots_into_rates_loss_and_cpu_per_packet() -> None:
    a = snapshot(100.0, 10.0, [sub(0, 0, 0, 0), sub(0, 0, 0, 0)], 0, 0)
    b = snapshot(110.0, 11.0, [sub(1000, 1000, 300, 1000), sub(1000, 990, 290, 1000)], 1000, 300)
    row = measure(2, a, b, 2, 0, FakePublisher(), 90.0)  # type: ignore[arg-type]
    assert row["window_s"] == 10.0
    assert row["forwarded_packets_per_s"] == 200.0
    assert row["server_cpu_percent"] == pytest.approx(10.0)
    assert row["server_us_per_packet"] == pytest.approx(1e6 / 2000)
    assert row["loss_percent"] == pytest.approx(100 * 10 / 2000)
    assert (row["fps_min"], row["fps_max"]) == (29.0, 30.0)
    assert row["kept_30_fps"] is True  # 29 distinct frames/s is "kept 30 fps"
    assert row["duplicates_received"] == 10
    assert row["machine_busy_percent"] == pytest.approx(50.0)
    assert row["ping_ms_max"] == 2.0
    assert row["server_runs_per_s"] == pytest.approx(100.0)
    assert row["link_drops"] == 30  # dropped on the way to the subscribers' host in the window


def test_marginals_are_against_the_row_above() -> None:
    rows = [
        {"subscribers": 0, "server_cpu_s": 1.0, "window_s": 10.0, "forwarded_packets_per_s": 0.0, "publisher_fps": 30},
        {
            "subscribers": 10,
            "server_cpu_s": 3.0,
            "window_s": 10.0,
            "forwarded_packets_per_s": 1000.0,
            "publisher_fps": 30,
        },
    ]
    add_marginals(rows)
    assert rows[0]["marginal_us_per_packet"] is None
    assert rows[1]["marginal_us_per_packet"] == pytest.approx(200.0)  # 0.2 s/s more for 1000 packets/s more
    assert rows[1]["marginal_ms_per_frame_per_subscriber"] == pytest.approx(0.2 / (10 * 30) * 1000)


def test_upkeep_is_the_muted_windows_cpu_over_the_publisher_alone_per_subscriber_and_second():
    rows = [
        {"subscribers": 0, "server_cpu_percent": 2.0},
        {"subscribers": 100, "server_cpu_percent": 12.0, "upkeep_cpu_percent": 4.0},
        {"subscribers": 200, "server_cpu_percent": 22.0},  # no upkeep window (Janus, or --upkeep 0)
    ]
    forwarding.add_upkeep(rows)
    assert rows[1]["upkeep_us_per_subscriber_s"] == pytest.approx(200.0)  # 2 % of a core = 20 ms/s over 100
    assert "upkeep_us_per_subscriber_s" not in rows[0] and "upkeep_us_per_subscriber_s" not in rows[2]
    alone = [{"subscribers": 100, "server_cpu_percent": 12.0, "upkeep_cpu_percent": 4.0}]
    forwarding.add_upkeep(alone)  # no N=0 row to measure against
    assert "upkeep_us_per_subscriber_s" not in alone[0]


# --- the forwarding verdicts ---------------------------------------------------------------------------------


def row(
    server: str, n: int, cpu_percent: float, packets: float, *, fps_min: float = 30.0, **extra: Any
) -> dict[str, Any]:
    base = {
        "server": server,
        "subscribers": n,
        "subscribers_joined": n,
        "subscribers_without_media": 0,
        "kept_30_fps": fps_min >= 29 if n else None,
        "fps_min": fps_min if n else None,
        "loss_percent": 0.0,
        "server_cpu_percent": cpu_percent,
        "server_cpu_s": cpu_percent / 10,
        "window_s": 10.0,
        "forwarded_packets_per_s": packets,
        "server_us_per_packet": cpu_percent * 1e4 / packets if packets else None,
        "publisher_state": "connected",
        "publisher_fps": 30.0,
        "publisher_packets_per_s": 110.0,
        "server_sent_packets_per_s": packets,
        "server_udp_queued_kb_end": 0.0,
        "subscriber_udp_queued_kb_end": 0.0,
    }
    return {**base, **extra}


def test_forwarding_summary_finds_the_largest_n_held_fits_the_cost_and_compares_the_servers() -> None:
    rows = [
        row("gbmedia", 0, 2.0, 0.0),
        row("gbmedia", 8, 5.0, 880.0),
        row("gbmedia", 16, 8.0, 1760.0, fps_min=20.0),
        row("janus", 0, 1.0, 0.0),
        row("janus", 8, 6.0, 880.0),
        row("janus", 16, 11.0, 1760.0),
    ]
    for name in ("gbmedia", "janus"):
        add_marginals([r for r in rows if r["server"] == name])
    summary = forwarding_report.summarize(rows, ["gbmedia", "janus"])
    g, j = summary["servers"]["gbmedia"], summary["servers"]["janus"]
    assert g["max_subscribers_30fps"] == 8 and j["max_subscribers_30fps"] == 16
    assert g["first_failed"] == {"subscribers": 16, "why": "fps min 20.0"}
    assert g["max_subscribers_server_kept_up"] == 16  # the server sent it all: the subscribers fell behind
    assert g["packets_per_s_per_core"] == pytest.approx(880 / 0.05)
    assert j["fit_us_per_packet"] == pytest.approx(0.1 / 1760 * 1e6, rel=1e-6)  # 10 points of CPU per 1760 pkt/s
    assert summary["ratio_by_subscribers"][8]["average"] == pytest.approx(5 / 6)
    assert summary["ratio_at_largest_common_n"]["subscribers"] == 16
    assert forwarding_report.server_kept_up(row("gbmedia", 8, 5.0, 880.0, server_sent_packets_per_s=500.0)) is False
    assert forwarding_report.server_kept_up(row("gbmedia", 0, 2.0, 0.0)) is None


def test_why_not_names_every_reason() -> None:
    bad = row(
        "janus",
        8,
        5.0,
        880.0,
        fps_min=12.0,
        loss_percent=3.0,
        publisher_fps=20.0,
        subscriber_udp_queued_kb_end=300.0,
        subscribers_joined=7,
    )
    assert forwarding_report.why_not(bad) == (
        "the publisher sent only 20.0 fps, subscribers 300 KB behind, 7 joined, 0 without media, "
        "fps min 12.0, loss 3.00%"
    )
    assert forwarding_report.why_not({"error": "x" * 300}) == "x" * 200


def test_add_server_count_prefers_the_servers_own_count() -> None:
    measured = row("gbmedia", 8, 5.0, 800.0)
    forwarding_report.add_server_count(measured, (0.0, 0), (10.0, 8800))
    assert measured["read_packets_per_s"] == 800.0
    assert measured["forwarded_packets_per_s"] == 880.0 and measured["packets_counted_by"] == "server"
    assert measured["server_us_per_packet"] == pytest.approx(0.05 / 880 * 1e6)
    unread = row("gbmedia", 8, 5.0, 800.0)
    forwarding_report.add_server_count(unread, None, (10.0, 8800))
    assert unread["packets_counted_by"] == "subscribers" and unread["forwarded_packets_per_s"] == 800.0


# --- the 4K clip (bench.forwarding --video 2160p) --------------------------------------------------------------


def test_the_clip_key_names_every_parameter_that_changes_the_bytes() -> None:
    assert clip.UHD.key() == "vp8-3840x2160-30fps-10s-18000k-g60-noise12-v1"
    assert clip.ClipSpec(bitrate=16_000_000).key() != clip.UHD.key()
    assert clip.ClipSpec(keyframe_seconds=1.0).keyframe_interval == 30


def test_the_ffmpeg_command_encodes_vp8_realtime_at_the_pinned_rate(tmp_path: Path) -> None:
    command = clip.UHD.ffmpeg_command(tmp_path / "out.webm", "/usr/bin/ffmpeg")
    assert command[0] == "/usr/bin/ffmpeg" and command[-1] == str(tmp_path / "out.webm")
    options = dict(itertools.pairwise(command))  # each option's name -> the word after it
    assert options["-i"] == "testsrc2=size=3840x2160:rate=30:duration=10"
    assert options["-c:v"] == "libvpx" and options["-deadline"] == "realtime" and options["-cpu-used"] == "8"
    assert options["-b:v"] == options["-minrate"] == options["-maxrate"] == "18000000"
    assert options["-g"] == options["-keyint_min"] == "60" and options["-threads"] == "2"


def probe_json(codec: str = "vp8", size: int = 75_000, frames: int = 300) -> dict[str, Any]:
    packets = [{"size": str(size), "flags": "K__" if i % 60 == 0 else "___"} for i in range(frames)]
    stream = {"codec_name": codec, "width": 3840, "height": 2160, "avg_frame_rate": "30/1"}
    return {"streams": [stream], "packets": [*packets, {"size": "0", "flags": "K__"}]}


def test_parse_probe_measures_the_bitrate_from_the_packets_and_problems_checks_it() -> None:
    info = clip.parse_probe(Path("c.webm"), probe_json())
    assert (info.frames, info.keyframes, info.seconds) == (300, 5, 10.0)  # the empty packet is not a frame
    assert info.bitrate == pytest.approx(18e6)  # 75 kB a frame at 30 fps
    assert clip.problems(info, clip.UHD) == []
    assert info.as_json()["bitrate"] == 18_000_000
    thin = clip.parse_probe(Path("c.webm"), probe_json("vp9", size=40_000))
    assert clip.problems(thin, clip.UHD) == ["codec 'vp9', not vp8", "9.60 Mbps, not within 15-20 Mbps"]
    with pytest.raises(BenchError):
        clip.parse_probe(Path("c.webm"), {"streams": []})


def test_the_cache_dir_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert clip.default_cache_dir() == tmp_path / "gbmedia-bench"


def test_the_forwarding_video_option_defaults_to_vga_and_labels_the_stream() -> None:
    args = forwarding.parse_args(["--smoke"])
    assert args.video == "vga" and args.clip is None and args.clip_info is None
    assert forwarding_report.stream_label(args) == "640x480 VP8, 30 fps, encoder fixed at 1.00 Mbps"
    assert forwarding.video_config(args) == {
        "video": "vga",
        "bitrate": 1_000_000,
        "width": 640,
        "height": 480,
        "fps": 30,
        "codec": "VP8",
    }
    uhd = forwarding.parse_args(["--video", "2160p", "--subscribers", "16"])
    uhd.clip_info = clip.parse_probe(Path("c.webm"), probe_json(size=66_000))
    assert forwarding_report.stream_label(uhd) == ("3840x2160 VP8, 30 fps, 15.84 Mbps clip replayed without encoding")
    config = forwarding.video_config(uhd)
    assert (config["width"], config["height"], config["bitrate"]) == (3840, 2160, 15_840_000)
    assert config["clip"]["keyframes"] == 5
    with pytest.raises(SystemExit):
        forwarding.parse_args(["--video", "1080p"])


def test_the_replay_track_keeps_the_frame_rate_and_its_timestamps_grow_across_loops(tmp_path: Path) -> None:
    path = tmp_path / "tiny.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 80, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    async def replay() -> tuple[list[int], float]:
        track = ReplayVideoTrack(path)
        started = time.monotonic()
        stamps = [(await track.recv()).pts for _ in range(7)]  # two loops and a bit
        return stamps, time.monotonic() - started

    stamps, took = asyncio.run(replay())
    assert stamps == [i * 3000 for i in range(7)]  # 90 kHz ticks at 30 fps, never back to 0
    assert took >= 6 / 30 - 0.01  # paced: frame i at i / 30 s


# --- the chat report -----------------------------------------------------------------------------------------


def verify(**counts: Any) -> dict[str, Any]:
    base = {
        "clients": 2,
        "complete": 2,
        "missing": 0,
        "extra": 0,
        "duplicates": 0,
        "foreign": 0,
        "examples": [],
        "received": 6,
        "own_received": 3,
        "sent": 3,
        "acked": 3,
        "errors": 0,
        "duplicate_acks": 0,
        "pending": 0,
        "acked_by_conversation": {"c1": 3},
    }
    return {**base, **counts}


def test_count_check_agrees_when_everything_arrived_once() -> None:
    plan = Plan(conversations={"c1": ["a", "b"]}, clients=[])
    check = chat_report.count_check(3, {"c1": 3}, [verify()], plan)
    assert check["ok"], check["problems"]
    assert check["lines"][-1] == "COUNT CHECK ok"
    assert (check["delivered_to_others"], check["expected_to_others"]) == (3, 3)


def test_count_check_names_a_lost_message() -> None:
    plan = Plan(conversations={"c1": ["a", "b"]}, clients=[])
    check = chat_report.count_check(4, {"c1": 4}, [verify(missing=1, complete=1, examples=["b missing 1"])], plan)
    assert not check["ok"]
    assert check["lines"][-1].startswith("COUNT CHECK MISMATCH: sent 3, acked 3, stored 4")
    assert any("1 missing" in problem for problem in check["problems"])


def test_slot_cause_names_a_slow_flush_or_a_busy_neighbour() -> None:
    assert chat_report.slot_cause(None) == ""
    assert chat_report.slot_cause({"disk_ms": 0.0, "others_cores": 0.1}) == ""
    assert chat_report.slot_cause({"disk_ms": 42.4, "others_cores": 0.7}) == " (disk flush 42 ms, others 0.7 cores)"


# --- HLS players ---------------------------------------------------------------------------------------------


def test_hls_stats_keep_only_what_ended_in_the_window() -> None:
    stats = Stats()
    stats.record(0.0, 1.0, 100, 200, reload=False)  # before any window
    stats.window = (10.0, 20.0)
    stats.record(9.9, 10.1, 100, 200, reload=False)
    stats.record(10.0, 10.5, 50, 200, reload=True)
    stats.record(11.0, 11.1, 0, 404, reload=False)
    stats.record(19.0, 20.5, 100, 200, reload=False)  # ended after it
    assert (stats.requests, stats.bytes, stats.errors, stats.statuses) == (3, 150, 1, {"404": 1})
    assert stats.media_ms == [pytest.approx(200.0)] and stats.reload_ms == [pytest.approx(500.0)]


# --- Janus ---------------------------------------------------------------------------------------------------

JANUS_OFFER = "\r\n".join(
    [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=ssrc-group:FID 111 222",
        "a=ssrc:111 cname:janus",
        "a=ssrc:222 cname:janus",
        "",
    ]
)


def test_strip_rtx_leaves_the_media_codec_and_its_ssrc() -> None:
    sdp, removed = janus.strip_rtx(JANUS_OFFER)
    assert removed == 1
    assert sdp.split("\r\n") == [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=ssrc:111 cname:janus",
        "",
    ]
    assert janus.strip_rtx(sdp) == (sdp, 0)


def test_janus_config_loads_only_the_videoroom_and_http(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for sub_dir, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
        (lib / sub_dir).mkdir(parents=True)
        (lib / sub_dir / name).write_text("")
    folder = janus.write_config(
        tmp_path / "cfg", ip="192.0.2.7", http_port=8088, admin_port=7088, admin_secret="s3cret", lib_dir=lib
    )
    assert sorted(p.name for p in (folder / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (folder / "transports").iterdir()) == ["libjanus_http.so"]
    general = (folder / "janus.jcfg").read_text()
    assert 'ice_enforce_list = "192.0.2.7"' in general and 'admin_secret = "s3cret"' in general
    http = (folder / "janus.transport.http.jcfg").read_text()
    assert "port = 8088" in http and 'ip = "127.0.0.1"' in http and 'admin_ip = "127.0.0.1"' in http
    # subscribers on another host reach its API on the address they reach its media on; the admin API stays local
    address = "203.0.113.1"
    http = janus.write_config(
        tmp_path / "cfg3", ip=address, http_port=1, admin_port=2, admin_secret="x", lib_dir=lib, http_ip=address
    ).joinpath("janus.transport.http.jcfg")
    assert '    ip = "203.0.113.1"' in http.read_text() and 'admin_ip = "127.0.0.1"' in http.read_text()
    with pytest.raises(BenchError, match="is the Debian package janus installed"):
        janus.write_config(
            tmp_path / "cfg2", ip="192.0.2.7", http_port=1, admin_port=2, admin_secret="x", lib_dir=tmp_path / "nowhere"
        )


def test_jsep_never_trickles() -> None:
    assert janus.jsep("offer", "v=0") == {"type": "offer", "sdp": "v=0", "trickle": False}


# --- the raw WebSocket client --------------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        return head + bytes([size]) + payload
    return head + bytes([126]) + size.to_bytes(2, "big") + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    size = frame[1] & 0x7F
    offset = 2
    if size == 126:
        size, offset = int.from_bytes(frame[2:4], "big"), 4
    mask, body = frame[offset : offset + 4], frame[offset + 4 : offset + 4 + size]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


async def test_raw_websocket_checks_the_handshake_and_parses_split_and_fragmented_frames() -> None:
    texts: list[bytes] = []
    closed: list[bool] = []
    ws = RawWebSocket(texts.append, lambda: closed.append(True))
    transport = FakeTransport()
    ws.connection_made(transport)  # type: ignore[arg-type]
    accept = base64.b64encode(hashlib.sha1((ws._key + WS_GUID).encode()).digest()).decode()
    response = f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    big = b'{"x": "' + b"y" * 300 + b'"}'
    stream = (
        response.encode()
        + server_frame(0x1, b'{"a": 1}')
        + server_frame(0x1, b'{"b": ', fin=False)
        + server_frame(0x0, b"2}")
        + server_frame(0x9, b"ping!")
        + server_frame(0x1, big)
    )
    for i in range(0, len(stream), 7):  # as TCP may cut it
        ws.data_received(stream[i : i + 7])
    await asyncio.wait_for(ws.handshake, 1)
    assert texts == [b'{"a": 1}', b'{"b": 2}', big]
    assert unmask(bytes(transport.written)) == (0xA, b"ping!")  # the ping answered
    transport.written.clear()
    ws.send_text("é" * 100)
    assert unmask(bytes(transport.written)) == (0x1, ("é" * 100).encode())
    ws.connection_lost(None)
    assert closed == [True]
    with pytest.raises(ConnectionError):
        ws.send_text("late")


async def test_raw_websocket_refuses_a_wrong_accept_key() -> None:
    ws = RawWebSocket(lambda _: None, lambda: None)
    transport = FakeTransport()
    ws.connection_made(transport)  # type: ignore[arg-type]
    ws.data_received(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n")
    with pytest.raises(BenchError, match="handshake refused"):
        await ws.handshake
    assert transport.closed


# --- live: WHEP viewers ---------------------------------------------------------------------------


def test_live_join_commands_split_the_tokens_and_share_the_joins_in_flight() -> None:
    from bench.live import join_commands

    tokens = [f"t{i}" for i in range(120)]
    joins = join_commands("http://s", tokens, 50, True, 16, 30.0)
    assert [len(j["tokens"]) for j in joins] == [50, 50, 20]
    assert [t for j in joins for t in j["tokens"]] == tokens
    assert {j["concurrency"] for j in joins} == {5}  # 16 in flight over 3 workers
    assert all(j["cmd"] == "join" and j["clear"] and j["connect_timeout"] == 30.0 for j in joins)
    assert {j["poll_ms"] for j in joins} == {5.0}  # the viewers read on a clock by default
    assert {j["poll_ms"] for j in join_commands("http://s", tokens, 50, True, 16, 30.0, 0)} == {0}
    many = join_commands("http://s", tokens, 1, False, 16, 30.0)
    assert len(many) == 120 and {j["concurrency"] for j in many} == {1}  # never below one
    assert join_commands("http://s", [], 50, True, 16, 30.0) == []


async def test_join_all_keeps_at_most_the_concurrency_in_flight_and_returns_each_outcome() -> None:
    in_flight = peak = 0

    class Fake:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        async def join(self) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            if self.fail:
                raise BenchError("refused")

    fakes: list[Any] = [Fake(fail=i == 3) for i in range(10)]
    subscribers: list[Subscriber] = fakes
    results = await join_all(subscribers, 3)
    assert peak == 3
    assert [r is None for r in results] == [i != 3 for i in range(10)]
    assert isinstance(results[3], BenchError)
    peak = 0
    await join_all(subscribers, None)  # unbounded: all at once
    assert peak == 10


def test_live_summary_takes_viewers_per_core_from_the_steps_that_held() -> None:
    from bench.live import GOAL_VIEWERS_PER_CORE, LIVEKIT_VIEWERS_PER_VCPU, summary

    rows: list[dict[str, Any]] = [
        {"subscribers": 0, "server_cpu_percent": 20.0, "holds": None, "publisher_fps": 30.0},
        {"subscribers": 300, "server_cpu_percent": 50.0, "holds": True, "publisher_fps": 30.0},
        # the publisher dropped out: the server spent nothing, which says nothing per viewer
        {"subscribers": 600, "server_cpu_percent": 5.0, "holds": False, "publisher_fps": 0.0},
    ]
    result = summary(rows)
    assert result["max_viewers_held"] == 300 and result["server_cpu_percent_at_max"] == 50.0
    assert result["viewers_per_core_used"] == 600.0 and result["viewers_per_core_from_average"] == 600.0
    assert (result["livekit_viewers_per_vcpu"], result["goal_viewers_per_core"]) == (204, 1000)
    assert (LIVEKIT_VIEWERS_PER_VCPU, GOAL_VIEWERS_PER_CORE) == (204, 1000)


# --- bench.workers' summary line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "said"),
    [
        ({"1": 2, "2": 4}, "scaling efficiency 2 workers: 1.0 (goal >= 0.9)."),
        ({"1": 0, "2": 2}, "scaling efficiency - (one worker held no N: nothing to scale from)."),
    ],
)
def test_the_workers_summary_says_the_scaling_efficiency_or_why_there_is_none(
    held: dict[str, int], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a busy machine one worker may hold no N: the line still says what became of the efficiency."""
    args = workers.parse_args(["--smoke"])
    row = {"workers": 1, "subscribers": 2, "server_cpu_percent": 5.0, "fps_min": 30.0, "loss_percent": 0.0}
    summary: dict[str, Any] = {"max_viewers_held": held}
    if held["1"]:
        summary["scaling_efficiency"] = {"2": 1.0}
    workers.print_result({"rows": [{**row, "verdict": "holds"}], "summary": summary}, args)
    out = capsys.readouterr().out
    assert "gbmedia live fan-out across workers" in out and said in out
