"""The forwarding benchmark's verdicts, summary and tables (``python -m bench.forwarding``).

Pure functions of its rows (one dict per server and N, from ``bench.lib.fanout.measure``):
which N met the issue's bar (30 fps at < 1% loss at every subscriber), whether the server
itself kept up, the CPU per forwarded packet fitted over all N, the ratio to Janus.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
from pathlib import Path
from typing import Any

from bench.lib.fanout import KEPT_FPS, LOSS_LIMIT_PERCENT
from bench.lib.profile import collapsed_stacks, split_frame
from bench.lib.report import Column, col, fmt, print_aligned, table

# Issue 20's targets: at most 6 us of server CPU per forwarded packet at N >= 128 (>= 150,000 packets/s per
# core), and a ratio to Janus of at most 0.2 in the same run.
TARGET_US_PER_PACKET = 6.0
TARGET_FROM_SUBSCRIBERS = 128
TARGET_RATIO_TO_JANUS = 0.2

# Reference figures, measured on these machines (docs/performance.md): aiortc's default
# path decodes and re-encodes per subscriber: 6.4 ms of server CPU per frame for
# 1 subscriber, 18.3 for 4, 33.2 for 8, i.e. about 4 ms per subscriber per frame.
REF_TRANSCODE_MS_PER_FRAME_PER_SUB = 4.0
REF_TRANSCODE_MS_PER_FRAME = {1: 6.4, 4: 18.3, 8: 33.2}
REF_JANUS_US_PER_PACKET = 28.0  # Janus 1.1.2 VideoRoom, same stream, marginal


# --- verdicts ---------------------------------------------------------------------------


def good(row: dict[str, Any]) -> bool:
    """The issue's bar for a row: every subscriber joined and kept 30 fps, loss under 1%."""
    return (
        "error" not in row
        and bool(row["kept_30_fps"])
        and row["subscribers_joined"] == row["subscribers"]
        and not row["subscribers_without_media"]
        and (row["loss_percent"] or 0.0) < LOSS_LIMIT_PERCENT
    )


def server_kept_up(row: dict[str, Any]) -> bool | None:
    """Judged at the server, not at the subscribers: it sent every subscriber (nearly) every packet the
    publisher sent, and its own sockets hold no backlog. None where it has no counter of its own."""
    sent, n = row.get("server_sent_packets_per_s"), row["subscribers"]
    if "error" in row or sent is None or not n:
        return None
    return (
        sent / n >= 0.98 * row["publisher_packets_per_s"]
        and row["server_udp_queued_kb_end"] < 256
        and row["subscribers_joined"] == n
        and row["publisher_state"] == "connected"
        and row["publisher_fps"] >= KEPT_FPS
    )


def add_server_count(row: dict[str, Any], a: tuple[float, int] | None, b: tuple[float, int] | None) -> None:
    """The server's own sent packets/s, and the per-packet CPU figures over them where it has them.

    What the subscribers read in the window is what the server sent only while they keep up; on a busy
    machine they fall behind (their unread backlog grows) and CPU / packets read overstates the server's
    cost. The server's counter does not depend on them."""
    row["read_packets_per_s"] = row["forwarded_packets_per_s"]
    row["server_sent_packets_per_s"] = None
    if a is None or b is None or b[0] <= a[0]:
        row["packets_counted_by"] = "subscribers"
        return
    sent_per_s = (b[1] - a[1]) / (b[0] - a[0])
    row["server_sent_packets"] = b[1] - a[1]
    row["server_count_span_s"] = b[0] - a[0]
    row["server_sent_packets_per_s"] = sent_per_s
    row["packets_counted_by"] = "server"
    row["forwarded_packets_per_s"] = sent_per_s
    cpu_per_s = row["server_cpu_s"] / row["window_s"]
    if sent_per_s > 0:
        row["server_us_per_packet"] = cpu_per_s / sent_per_s * 1e6
        row["server_cpu_s_per_1000_packets"] = cpu_per_s / sent_per_s * 1000


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """A py-spy raw (collapsed) profile of the server: the functions with the most self time, and self
    time by file. Without ``--native``, time in C (uvloop, the sendto syscall, SRTP in OpenSSL/libsrtp) is
    the Python frame that called it."""
    own: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for frames, n in collapsed_stacks(path.read_text(errors="replace")):
            frames = [f for f in frames if not f.startswith("thread ")]
            if not frames:
                continue
            total += n
            name, where = split_frame(frames[-1])
            file = where.rpartition(":")[0] or where
            own[f"{name} ({file})"] += n
            by_file[file] += n
    if not total:
        return [f"{path}: no samples"]
    lines = [f"{path}: {total} samples (py-spy, 100/s, idle excluded); top functions by self time:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  self time by file:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in by_file.most_common(10)]
    return lines


# --- output -------------------------------------------------------------------------


def stream_label(args: argparse.Namespace) -> str:
    """What the publisher sends, for a table's title: the live encoder's pinned bitrate (vga), or the
    replayed clip's size and real bitrate as ffprobe measured it (2160p), not ``--bitrate``."""
    info = args.clip_info
    if info is None:
        return f"640x480 VP8, {args.fps_label}, encoder fixed at {args.bitrate / 1e6:.2f} Mbps"
    return (
        f"{info.width}x{info.height} {info.codec.upper()}, {info.fps:g} fps, {info.bitrate / 1e6:.2f} Mbps "
        f"clip replayed without encoding"
    )


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, name: str = "gbmedia") -> None:
    """One server's two tables (figures, context) and their legend; for gbmedia, the transcoding reference."""
    process = "the gbmedia serve process" if name.startswith("gbmedia") else f"the {name} process"
    reading = ""
    if getattr(args, "clear_subscribers", False):
        poll = getattr(args, "poll_ms", 0)
        reading = f" (read every {poll:g} ms)" if poll > 0 else " (woken by each datagram)"
    host = getattr(args, "server_address", None)
    where = f" on another host (a network namespace; server on {host})" if host else " on this host (loopback)"
    print()
    print(
        f"{name} forwarding: 1 publisher ({stream_label(args)}) -> N subscribers{where}{reading} counting RTP "
        "without decoding; "
        f"{args.seconds:.0f} s window after {args.warmup:.0f} s warm-up; server CPU = utime+stime of "
        f"{process}, all threads; {os.cpu_count()} cores."
    )
    print_aligned(
        table(
            rows,
            [
                col("N", "subscribers"),
                col("fwd pkt/s", "forwarded_packets_per_s", ".0f"),
                ("read pkt/s", lambda r: fmt(r.get("read_packets_per_s", r["forwarded_packets_per_s"]), ".0f")),
                col("srv CPU%", "server_cpu_percent", ".1f"),
                col("CPU s/1k pkt", "server_cpu_s_per_1000_packets", ".4f"),
                col("us/pkt", "server_us_per_packet", ".1f"),
                col("us/pkt marg", "marginal_us_per_packet", ".1f"),
                col("ms/frame/sub", "server_ms_per_frame_per_subscriber", ".3f"),
                col("marg", "marginal_ms_per_frame_per_subscriber", ".3f"),
                col("fps min", "fps_min", ".1f"),
                col("fps med", "fps_median", ".1f"),
                col("loss %", "loss_percent", ".2f"),
                ("kept 30 fps", lambda r: fmt(r["kept_30_fps"], "") if r["subscribers"] else "-"),
            ],
        )
    )
    print()
    print(
        "Context per row (publisher as sent; CPU % of one core; machine busy = all cores, every process "
        "on the machine, not only this benchmark's):"
    )
    print_aligned(
        table(
            rows,
            [
                col("N", "subscribers"),
                col("joined", "subscribers_joined"),
                col("no media", "subscribers_without_media"),
                col("pub state", "publisher_state"),
                col("pub pkt/s", "publisher_packets_per_s", ".1f"),
                col("pub fps", "publisher_fps", ".1f"),
                col("pub kbps", "publisher_kbps", ".0f"),
                col("forced KF", "publisher_forced_keyframes"),
                col("KF rcvd", "keyframes_received"),
                col("dup rcvd", "duplicates_received"),
                ("drops srv/sub", lambda r: f"{r['server_udp_drops']}/{r['subscriber_udp_drops']}"),
                col("link drops", "link_drops"),
                (
                    "unread KB srv/sub",
                    lambda r: f"{r['server_udp_queued_kb_end']:.0f}/{r['subscriber_udp_queued_kb_end']:.0f}",
                ),
                ("ping ms med/max", lambda r: f"{fmt(r['ping_ms_median'], '.1f')}/{fmt(r['ping_ms_max'], '.0f')}"),
                col("join ping max", "join_ping_ms_max", ".0f"),
                col("own lag max", "publisher_loop_lag_ms_max", ".0f"),
                col("srv wait%", "server_runqueue_wait_percent", ".1f"),
                col("srv runs/s", "server_runs_per_s", ".0f"),
                col("muted srv%", "upkeep_cpu_percent", ".1f"),
                col("muted runs/s", "upkeep_runs_per_s", ".0f"),
                col("upkeep us/sub/s", "upkeep_us_per_subscriber_s", ".0f"),
                col("postgres%", "postgres_cpu_percent", ".1f"),
                col("publisher%", "publisher_process_cpu_percent", ".1f"),
                col("subscribers%", "subscriber_workers_cpu_percent", ".1f"),
                col("machine busy%", "machine_busy_percent", ".1f"),
            ],
        )
    )
    print()
    legend = [
        "fwd pkt/s: RTP packets/s the server sent to the subscribers, by its own counter (gbmedia /metrics, Janus "
        "admin handle_info; read pkt/s where it has none);",
        "read pkt/s: what the subscribers read in the window (less when they fall behind); us/pkt: server CPU "
        "per forwarded packet (one packet to one subscriber);",
        "marg: against the row above; ms/frame/sub: server CPU per published frame per subscriber; loss %: from "
        "each subscriber's sequence numbers;",
        f"kept 30 fps: every subscriber received >= {KEPT_FPS:.0f} distinct frames/s. Context: KF = keyframes; "
        "dup = retransmitted packets received twice;",
        "drops srv/sub: datagrams the kernel dropped on the server's / the subscribers' UDP sockets (receive "
        "buffer full: that side fell behind); link drops: datagrams the link to the subscribers' host dropped "
        "(its queue to that host's receive full; bench/lib/netns.py);",
        "unread KB srv/sub: receive memory held by datagrams waiting in those sockets at the window's end (that side "
        "is behind: low fps with a subscriber backlog is the subscribers' CPU, not the server);",
        "ping: reply time of a signaling ping to the server every 0.5 s in the window (its event-loop lag); join "
        "ping max: the worst while joining and warming up;",
        "own lag: the publisher process's own event-loop lag (so a slow ping is the server's); srv wait: time "
        "the server's threads were ready but waited for a CPU; srv runs/s: times per second its threads were put "
        "on a CPU (wake-ups, mostly: each costs CPU of its own);",
        "muted srv% (--upkeep): server CPU with the subscribers joined and the publisher muted on the server "
        "(nothing forwarded), muted runs/s its runs/s then; upkeep us/sub/s: that less the N=0 row's, per "
        "subscriber and second.",
    ]
    print("Legend: " + "\n        ".join(legend))
    if name != "gbmedia" or args.clip_info is not None:
        return  # the transcoding reference was measured on the 640x480 stream only
    marginal = [
        r["marginal_ms_per_frame_per_subscriber"] for r in rows if r["marginal_ms_per_frame_per_subscriber"] is not None
    ]
    average = [
        r["server_ms_per_frame_per_subscriber"] for r in rows if r["server_ms_per_frame_per_subscriber"] is not None
    ]
    ref = ", ".join(f"{v} ms at N={k}" for k, v in REF_TRANSCODE_MS_PER_FRAME.items())
    print(
        f"Reference: aiortc's default decode + re-encode costs about {REF_TRANSCODE_MS_PER_FRAME_PER_SUB:.0f} ms "
        f"of server CPU per frame per subscriber here ({ref}; docs/performance.md). "
        f"Janus 1.1.2 forwarding the same stream: about {REF_JANUS_US_PER_PACKET:.0f} us per packet (marginal)."
    )
    if average:
        ref_ms = REF_TRANSCODE_MS_PER_FRAME_PER_SUB
        print(
            f"gbmedia forwarding: {min(average):.3f}-{max(average):.3f} ms per frame per subscriber on average "
            f"(the publisher's incoming stream included), transcoding would be {ref_ms / max(average):.0f}-"
            f"{ref_ms / min(average):.0f}x that"
            + (
                f"; {min(marginal):.3f}-{max(marginal):.3f} ms per extra subscriber, transcoding "
                f"{ref_ms / max(marginal):.0f}-{ref_ms / min(marginal):.0f}x that."
                if marginal
                else "."
            )
        )


def fit_cpu(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least squares of server CPU (s/s) against forwarded packets/s over every row, N=0 included:
    (µs per packet, the slope; CPU % at no forwarding, the intercept). Steadier than row-to-row marginals."""
    points = [(r["forwarded_packets_per_s"], r["server_cpu_s"] / r["window_s"]) for r in rows]
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return slope * 1e6, intercept * 100


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None where either is missing (or ``b`` is 0)."""
    return a / b if a is not None and b else None


def summarize(rows: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    """Per server: the largest N up to which every N kept 30 fps at < 1% loss, packets/s per core there,
    the fitted cost per packet; then the ratios gbmedia/Janus, per N measured on both and overall."""
    per: dict[str, Any] = {}
    for name in servers:
        mine = sorted((r for r in rows if r.get("server") == name), key=lambda r: r["subscribers"])
        measured = [r for r in mine if "error" not in r]
        held = None
        for r in (r for r in mine if r["subscribers"] > 0):
            if not good(r):
                break
            held = r
        fit = fit_cpu(measured)
        kept = None
        for r in (r for r in mine if r["subscribers"] > 0):
            if not server_kept_up(r):
                break
            kept = r
        entry: dict[str, Any] = {
            "max_subscribers_30fps": held["subscribers"] if held else 0,
            "max_subscribers_server_kept_up": kept["subscribers"] if kept else 0,
            "any_good_subscribers": [r["subscribers"] for r in mine if r["subscribers"] > 0 and good(r)],
            "first_failed": next(
                (
                    {"subscribers": r["subscribers"], "why": why_not(r)}
                    for r in mine
                    if r["subscribers"] > 0 and not good(r)
                ),
                None,
            ),
            "fit_us_per_packet": fit[0] if fit else None,
            "fit_fixed_cpu_percent": fit[1] if fit else None,
        }
        if held is not None:
            cores = held["server_cpu_percent"] / 100
            entry.update(
                at_subscribers=held["subscribers"],
                packets_per_s=held["forwarded_packets_per_s"],
                cpu_percent=held["server_cpu_percent"],
                packets_per_s_per_core=held["forwarded_packets_per_s"] / cores if cores else None,
                us_per_packet=held["server_us_per_packet"],
                marginal_us_per_packet=held["marginal_us_per_packet"],
            )
        if kept is not None and kept["server_cpu_percent"]:
            per_s = kept["forwarded_packets_per_s"]
            entry.update(
                kept_up_packets_per_s=per_s, kept_up_packets_per_s_per_core=per_s / (kept["server_cpu_percent"] / 100)
            )
        if fit and fit[0] > 0:
            entry["marginal_packets_per_s_per_core"] = 1e6 / fit[0]
        per[name] = entry
    summary: dict[str, Any] = {"servers": per}
    if "janus" in per:
        ratios = {name: ratios_to_janus(rows, name, per) for name in servers if name != "janus"}
        summary["ratios_to_janus"] = ratios
        if "gbmedia" in ratios:  # the default (native) path: the headline figures
            summary.update(ratios["gbmedia"])
    return summary


def ratios_to_janus(rows: list[dict[str, Any]], name: str, per: dict[str, Any]) -> dict[str, Any]:
    """One gbmedia path's CPU per forwarded packet over Janus's, per N measured on both and over the fit."""
    by_n = {}
    g_rows = {r["subscribers"]: r for r in rows if r.get("server") == name and "error" not in r}
    j_rows = {r["subscribers"]: r for r in rows if r.get("server") == "janus" and "error" not in r}
    for n in sorted(set(g_rows) & set(j_rows)):
        if n == 0:
            continue
        g, j = g_rows[n], j_rows[n]
        by_n[n] = {
            "average": ratio(g["server_us_per_packet"], j["server_us_per_packet"]),
            "marginal": ratio(g["marginal_us_per_packet"], j["marginal_us_per_packet"]),
        }
    found: dict[str, Any] = {
        "ratio_by_subscribers": by_n,
        "ratio_fit": ratio(per[name]["fit_us_per_packet"], per["janus"]["fit_us_per_packet"]),
    }
    if by_n:
        top = max(by_n)
        found["ratio_at_largest_common_n"] = {"subscribers": top, **by_n[top]}
    return found


def why_not(row: dict[str, Any]) -> str:
    """Why a row missed the bar, in words."""
    if "error" in row:
        return row["error"][:200]
    reasons = []
    if row["publisher_state"] != "connected":
        reasons.append(f"the publisher's connection was {row['publisher_state']}")
    if row["publisher_fps"] < KEPT_FPS:
        reasons.append(f"the publisher sent only {row['publisher_fps']:.1f} fps")
    if row["subscriber_udp_queued_kb_end"] >= 256:
        reasons.append(f"subscribers {row['subscriber_udp_queued_kb_end']:.0f} KB behind")
    if row["subscribers_joined"] != row["subscribers"] or row["subscribers_without_media"]:
        reasons.append(f"{row['subscribers_joined']} joined, {row['subscribers_without_media']} without media")
    if not row["kept_30_fps"]:
        reasons.append(f"fps min {fmt(row['fps_min'], '.1f')}")
    if (row["loss_percent"] or 0.0) >= LOSS_LIMIT_PERCENT:
        reasons.append(f"loss {row['loss_percent']:.2f}%")
    return ", ".join(reasons)


def first_miss(entry: dict[str, Any]) -> str:
    """A server's first N that missed the bar, and why (``none``)."""
    miss = entry["first_failed"]
    return f"N={miss['subscribers']}: {miss['why']}" if miss else "none"


def print_comparison(result: dict[str, Any]) -> None:
    """Both servers side by side, per server, the ratios and the targets, the machine's load."""
    rows, summary = result["rows"], result["summary"]
    servers = result["config"]["servers"]
    print()
    print(
        "Side by side (same publisher, same subscriber code; one server after the other in this run; fwd pkt/s "
        "by the server's own counter, read pkt/s by the subscribers):"
    )
    columns: list[Column] = [
        col("server", "server"),
        col("N", "subscribers"),
        col("fwd pkt/s", "forwarded_packets_per_s", ".0f"),
        col("read pkt/s", "read_packets_per_s", ".0f"),
        col("srv CPU%", "server_cpu_percent", ".1f"),
        col("sys%", "server_sys_percent", ".1f"),
        col("CPU s/1k pkt", "server_cpu_s_per_1000_packets", ".4f"),
        (
            "marg s/1k",
            lambda r: fmt(
                r["marginal_us_per_packet"] / 1000 if r["marginal_us_per_packet"] is not None else None, ".4f"
            ),
        ),
        col("us/pkt", "server_us_per_packet", ".1f"),
        col("us/pkt marg", "marginal_us_per_packet", ".1f"),
        col("fps min", "fps_min", ".1f"),
        col("loss %", "loss_percent", ".2f"),
        col("unread KB sub", "subscriber_udp_queued_kb_end", ".0f"),
        ("30 fps <1%", lambda r: fmt(good(r), "") if r["subscribers"] else "-"),
        ("srv kept up", lambda r: fmt(server_kept_up(r), "")),
    ]
    lines = table([], columns)
    for name in servers:
        for r in (r for r in rows if r.get("server") == name):
            if "error" in r:
                lines.append((name, str(r["subscribers"]), *(["-"] * 11), "failed", "-"))
            else:
                lines.extend(table([r], columns)[1:])
    print_aligned(lines)
    print()
    print("Per server:")
    per_server = [{**summary["servers"][name], "server": name} for name in servers]
    print_aligned(
        table(
            per_server,
            [
                col("server", "server"),
                col("max N 30fps <1%", "max_subscribers_30fps"),
                col("pkt/s there", "packets_per_s", ".0f"),
                col("CPU% there", "cpu_percent", ".1f"),
                col("pkt/s per core", "packets_per_s_per_core", ".0f"),
                col("us/pkt there", "us_per_packet", ".1f"),
                col("max N srv kept up", "max_subscribers_server_kept_up"),
                col("pkt/s/core there", "kept_up_packets_per_s_per_core", ".0f"),
                col("fit us/pkt", "fit_us_per_packet", ".1f"),
                col("fit fixed CPU%", "fit_fixed_cpu_percent", ".1f"),
                col("marg pkt/s/core", "marginal_packets_per_s_per_core", ".0f"),
                ("first miss", first_miss),
            ],
        )
    )
    print(
        "max N 30fps <1%: every N up to it kept 30 fps at < 1% loss at every subscriber (the issue's bar); pkt/s "
        "per core: forwarded packets/s / (server CPU% / 100) there;"
    )
    print(
        "srv kept up: judged at the server instead: it sent each subscriber >= 98% of the publisher's packets "
        "with no backlog on its sockets, the publisher connected at >= 29 fps (on a busy machine the subscribers "
        "fall behind first);"
    )
    print(
        "fit: least squares of CPU against packets/s over all N (slope, intercept); marg pkt/s/core: 1e6 / fit us/pkt."
    )
    for name, found in summary.get("ratios_to_janus", {}).items():
        print()
        parts = [
            f"N={n}: average {fmt(v['average'], '.2f')}, marginal {fmt(v['marginal'], '.2f')}"
            for n, v in found["ratio_by_subscribers"].items()
        ]
        print(
            f"Ratio {name}/Janus of CPU per forwarded packet: "
            + ("; ".join(parts) or "no N measured on both")
            + f"; fit {fmt(found['ratio_fit'], '.2f')}."
        )
        top = found.get("ratio_at_largest_common_n")
        if top:
            for what, value in (
                ("average", top["average"]),
                ("marginal", top["marginal"]),
                ("fit over all N", found["ratio_fit"]),
            ):
                verdict = "-" if value is None else "met" if value <= TARGET_RATIO_TO_JANUS else "MISSED"
                print(
                    f"Target ratio <= {TARGET_RATIO_TO_JANUS}, {name} {what} (largest N on both: "
                    f"{top['subscribers']}): {fmt(value, '.2f')}: {verdict}."
                )
    for name in servers:
        if not name.startswith("gbmedia"):
            continue
        large = [
            r
            for r in rows
            if r.get("server") == name and "error" not in r and r["subscribers"] >= TARGET_FROM_SUBSCRIBERS
        ]
        for r in large:
            value = r.get("server_us_per_packet")
            verdict = "-" if value is None else "met" if value <= TARGET_US_PER_PACKET else "MISSED"
            print(
                f"Target <= {TARGET_US_PER_PACKET:g} us of CPU per forwarded packet at N >= {TARGET_FROM_SUBSCRIBERS} "
                f"({name}, N={r['subscribers']}, {'held' if good(r) else 'did NOT hold'} 30 fps < 1% loss): "
                f"{fmt(value, '.2f')} us, {fmt(1e6 / value if value else None, ',.0f')} packets/s per core: {verdict}."
            )
    pinned = result["config"].get("pin_server")
    print(
        f"Servers {'pinned to CPU ' + ','.join(map(str, pinned)) if pinned else 'not pinned'}; "
        f"{result['machine']['cpus']} cores on the machine."
    )
    load = result["machine"]
    print(
        f"Load average before {'/'.join(f'{v:.2f}' for v in load['loadavg_before'])}, after "
        f"{'/'.join(f'{v:.2f}' for v in load['loadavg_after'])} (1/5/15 min; the machine is shared)."
    )
