"""Live benchmark: one WHIP publisher (720p VP8 ~1.5 Mbps) to as many WHEP viewers as one server holds.

The issue's scenario (a): one live publisher, N WebRTC viewers, one ``gbmedia serve``
process; the goal is >= 1,000 viewers per core, five times LiveKit's published 204 per
vCPU. The publisher is an aiortc encoder in this process that publishes over WHIP
(``POST /whip/{room}``) 1280x720 VP8 at 30 fps with the encoder pinned near the
bitrate (default 1.5 Mbps; the server's REMB cannot move it) and a fresh frame object
every time. Viewers play over WHEP (``POST /whep/{room}``) in worker processes
(``--per-process``, 50 each). By default they are **clear viewers**
(``--clear-viewers``, as the forwarding benchmark's clear subscribers): ICE and DTLS
complete normally, then each counts packets and frames (marker bits) from the clear RTP
header, 64 datagrams per wake-up, without decrypting
(:func:`gbmedia.sfu.aiortc_adapter.read_rtp_in_the_clear`), so one process holds many
and the load generator is not what saturates first; ``--no-clear-viewers`` has aiortc
decrypt every packet (:func:`gbmedia.sfu.aiortc_adapter.tap_receiver`). Joins go in
batches (``--join-concurrency`` in flight, each until its DTLS completed). Everything
else is the forwarding benchmark's (``bench.lib.fanout``: snapshots, loss from sequence
numbers, fps per viewer, server CPU from /proc, runqueue wait, UDP drops). After each
window the server's ``/metrics`` says how many down tracks its native (C) fan-out sends
for (``gbmedia_down_tracks_by_path``): the ``native`` column. ``--pin-server 1`` pins the
server to one CPU, so "per core" is literal.

N steps up through ``--viewers``; a step **holds** when every viewer joined, received
media, kept >= 29 distinct frames/s and loss stayed under 1%; it is **inconclusive**
when the publisher itself sent under 29 fps without loss (a busy machine starved its
encoder), and **fails** otherwise. The run stops after the first step that fails
(``--keep-going`` measures them all). It prints the largest N held, the server's CPU
at that N, and viewers per core: N divided by the cores the server process used, next
to the goal (1,000) and LiveKit's 204 per vCPU, plus the estimate from the marginal CPU
per viewer. It asserts nothing about time: it is a measurement. On a shared machine,
read the load it prints.

    python -m bench.live --viewers 100,300,600 --seconds 8 --pin-server 1
    python -m bench.live --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiortc

from bench.lib import fanout
from bench.lib.cli import add_server_options, cpu_list
from bench.lib.errors import BenchError
from bench.lib.fanout import KEPT_FPS, LOSS_LIMIT_PERCENT, add_marginals
from bench.lib.proc import pin_process
from bench.lib.report import col, fmt, machine_info, print_aligned, print_json, table
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import Server, create_tenant, parse_labeled, read_metrics_text
from bench.lib.subscriber import POLL_MS, Subscriber, serve_subscribers, socket_poller
from bench.lib.whep import WhepViewer, WhipPublisher
from bench.lib.workers import WorkerProcess, counting_worker, running
from gbmedia.tenancy.tokens import Grants, mint_token

ROOM = "bench-live"
# LiveKit's published livestreaming benchmark (docs.livekit.io, Self-hosting > Benchmarks): 1 publisher,
# 3,000 subscribers of 720p video at 92% CPU of a 16-vCPU c2-standard-16: 3000 / (16 x 0.92) = 204 per vCPU.
LIVEKIT_VIEWERS_PER_VCPU = 204
GOAL_VIEWERS_PER_CORE = 1000  # issue 20: five times LiveKit's figure, per core of one worker process


# --- viewers (WHEP, in worker processes) -----------------------------------------------


def make_viewers(session: aiohttp.ClientSession, command: dict[str, Any]) -> list[Subscriber]:
    """A worker's WHEP viewers from its ``join`` command (one token each; clear ones unless told not)."""
    clear, timeout = bool(command.get("clear", False)), command.get("connect_timeout")
    poller = socket_poller(command.get("poll_ms", 0)) if clear else None
    return [
        WhepViewer(session, command["url"], t, ROOM, clear=clear, connect_timeout=timeout, poller=poller)
        for t in command["tokens"]
    ]


def worker(index: int, log_path: Path, nice: int, clear: bool) -> WorkerProcess:
    """The orchestrator's handle on one viewer worker process (``clear``: it runs on asyncio's own loop)."""
    return counting_worker(
        index, log_path, nice, module="bench.live", what="viewer worker", flag="clear-viewers", clear=clear
    )


def join_commands(
    url: str,
    tokens: list[str],
    per: int,
    clear: bool,
    concurrency: int,
    connect_timeout: float,
    poll_ms: float = POLL_MS,
) -> list[dict[str, Any]]:
    """Each viewer worker's ``join`` command: ``per`` tokens each (the last takes the rest).

    ``concurrency`` bounds the joins in flight across all workers (each gets its share, at least one):
    a join lasts until ICE and DTLS completed (``connect_timeout``), so the server never has more than
    that many handshakes queued: a step measures the audience it then holds, not a stampede of hundreds of
    handshakes at the same instant (which a real audience, arriving over minutes, does not make)."""
    per = max(1, per)
    chunks = [tokens[i : i + per] for i in range(0, len(tokens), per)]
    share = max(1, concurrency // max(1, len(chunks)))
    return [
        {
            "cmd": "join",
            "url": url,
            "tokens": chunk,
            "clear": clear,
            "poll_ms": poll_ms,
            "concurrency": share,
            "connect_timeout": connect_timeout,
        }
        for chunk in chunks
    ]


async def down_tracks_by_path(server: Server) -> dict[str, int]:
    """The server's down tracks by fan-out path from its /metrics (``native``: the C fan-out sends for
    them); empty where it could not be read: the row then says so instead of failing the step."""
    try:
        text = await read_metrics_text(server.url)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return {}
    return {path: int(v) for path, v in parse_labeled(text, "gbmedia_down_tracks_by_path", "path").items()}


# --- one step ---------------------------------------------------------------------------


def holds(row: dict[str, Any]) -> bool:
    """The step's bar: every viewer joined and received media at >= 29 frames/s, loss under 1%."""
    return (
        bool(row.get("kept_30_fps"))
        and row.get("loss_percent") is not None
        and row["loss_percent"] < LOSS_LIMIT_PERCENT
        and row["subscribers_joined"] == row["subscribers"]
        and row["subscribers_without_media"] == 0
    )


def verdict(row: dict[str, Any]) -> str:
    """``holds``, ``fails``, or ``inconclusive`` when the publisher itself sent under 30 fps (a busy
    machine starves its encoder): then the viewers could not get 30 fps whatever the server did."""
    if holds(row):
        return "holds"
    if row["publisher_fps"] < KEPT_FPS and (row.get("loss_percent") or 0) < LOSS_LIMIT_PERCENT:
        return "inconclusive"
    return "fails"


async def run_one(
    n: int,
    args: argparse.Namespace,
    server: Server,
    publisher: WhipPublisher,
    key: str,
    secret: str,
    workdir: Path,
    live: list[WorkerProcess],
) -> dict[str, Any]:
    """N viewers play, receive, warm up; one window is measured; they leave."""
    grants = Grants(room=ROOM, can_subscribe=True)
    tokens = [mint_token(key, secret, f"viewer-{n}-{i}", grants) for i in range(n)]
    joins = join_commands(
        server.url,
        tokens,
        args.per_process,
        args.clear_viewers,
        args.join_concurrency,
        args.connect_timeout,
        args.poll_ms,
    )
    workers = [worker(i, workdir / f"worker-n{n}-{i}.log", args.nice, args.clear_viewers) for i in range(len(joins))]
    async with running(workers, live):
        joining_since = time.monotonic()
        joined = await fanout.join(n, workers, joins, args.join_timeout, "viewer")
        if n:
            print(f"  N={n}: {joined} viewers joined in {time.monotonic() - joining_since:.1f} s", file=sys.stderr)
        _, waiting = await fanout.wait_for_media(n, server, publisher, workers, args.join_timeout, "viewer")
        await asyncio.sleep(args.warmup)
        server.ensure_alive("during warm-up")
        load_before = os.getloadavg()
        first = await fanout.snapshot(server, publisher, workers)
        await asyncio.sleep(args.seconds)
        last = await fanout.snapshot(server, publisher, workers)
        paths = await down_tracks_by_path(server)  # after the window: its reading costs the server a little
        server.ensure_alive("while measuring")
        row = fanout.measure(n, first, last, joined, len(waiting), publisher, joining_since)
        row["viewers"] = n
        row["down_tracks_native"] = paths.get("native")
        row["down_tracks_python"] = paths.get("python")
        row["viewers_clear"] = sum(bool(s.get("clear")) for s in last.subs)
        row["loadavg_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        row["holds"] = holds(row) if n else None
        row["verdict"] = verdict(row) if n else None
        return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest N held and viewers per core: at that N, from the average and from the marginal cost."""
    measured = [r for r in rows if "error" not in r and r["subscribers"] > 0]
    held = [r for r in measured if r["holds"]]
    best = max(held, key=lambda r: r["subscribers"]) if held else None
    result: dict[str, Any] = {"max_viewers_held": best["subscribers"] if best else 0}
    if best is not None:
        cores = best["server_cpu_percent"] / 100
        result["server_cpu_percent_at_max"] = round(best["server_cpu_percent"], 1)
        result["viewers_per_core_used"] = round(best["subscribers"] / cores, 1) if cores > 0 else None
    marginals = [
        r["marginal_ms_per_frame_per_subscriber"] for r in measured if r.get("marginal_ms_per_frame_per_subscriber")
    ]
    # Only steps that held: a step whose publisher dropped out costs the server nothing per viewer.
    per_viewer = [r["server_cpu_percent"] / r["subscribers"] for r in held if r["subscribers"]]
    if marginals:
        # One core is 1000 ms of CPU per second; a viewer costs (ms per frame) x fps of it.
        fps = measured[-1]["publisher_fps"] or 30.0
        result["viewers_per_core_from_marginal"] = round(1000 / (max(statistics.median(marginals), 1e-6) * fps), 1)
    if per_viewer:
        result["viewers_per_core_from_average"] = round(100 / min(per_viewer), 1)
    result["livekit_viewers_per_vcpu"] = LIVEKIT_VIEWERS_PER_VCPU
    result["goal_viewers_per_core"] = GOAL_VIEWERS_PER_CORE
    return result


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The table, its legend, and the largest N held with viewers per core."""
    print()
    print(
        f"gbmedia live: 1 WHIP publisher ({args.width}x{args.height} VP8, 30 fps, encoder fixed at "
        f"{args.bitrate / 1e6:.2f} Mbps) -> N WHEP viewers counting RTP without decoding; {args.seconds:.0f} s "
        f"window after {args.warmup:.0f} s warm-up; server CPU = utime+stime of the gbmedia process; "
        f"{os.cpu_count()} cores."
    )
    print_aligned(
        table(
            rows,
            [
                col("N", "subscribers"),
                col("pub kbps", "publisher_kbps", ".0f"),
                col("pub fps", "publisher_fps", ".1f"),
                col("fwd pkt/s", "forwarded_packets_per_s", ".0f"),
                col("srv CPU%", "server_cpu_percent", ".1f"),
                (
                    "viewers/core",
                    lambda r: (
                        fmt(r["subscribers"] / (r["server_cpu_percent"] / 100), ".0f")
                        if r["subscribers"] and r["server_cpu_percent"] > 0
                        else "-"
                    ),
                ),
                ("native", lambda r: fmt(r.get("down_tracks_native"), "d")),
                col("us/pkt", "server_us_per_packet", ".1f"),
                col("fps min", "fps_min", ".1f"),
                col("loss %", "loss_percent", ".2f"),
                ("drops srv/sub", lambda r: f"{r['server_udp_drops']}/{r['subscriber_udp_drops']}"),
                col("ping ms max", "ping_ms_max", ".0f"),
                col("srv wait%", "server_runqueue_wait_percent", ".1f"),
                col("viewers%", "subscriber_workers_cpu_percent", ".0f"),
                col("machine busy%", "machine_busy_percent", ".0f"),
                ("load 1m", lambda r: "/".join(str(v) for v in r["loadavg_1m"])),
                ("verdict", lambda r: r["verdict"] if r["subscribers"] else "-"),
            ],
        )
    )
    print()
    print(
        "holds: every viewer joined and received >= 29 distinct frames/s with < 1% loss; inconclusive: the "
        "publisher itself sent under 29 fps (its encoder starved), without loss; fails: otherwise.\n"
        "srv wait: time the server's threads were ready but waited for a CPU (a busy machine); machine busy: "
        "all cores, all processes; viewers%: the viewer workers' CPU."
    )
    print(
        f"Largest N held by one server process: {result['max_viewers_held']}"
        + (
            f" at {result['server_cpu_percent_at_max']}% of a core: {result['viewers_per_core_used']} viewers per "
            "core used"
            if result.get("viewers_per_core_used")
            else ""
        )
        + (
            f"; from the marginal cost, {result['viewers_per_core_from_marginal']} viewers per core"
            if result.get("viewers_per_core_from_marginal")
            else ""
        )
        + f". Goal: {GOAL_VIEWERS_PER_CORE} viewers per core; LiveKit publishes {LIVEKIT_VIEWERS_PER_VCPU} per vCPU "
        "for this scenario (3,000 viewers at 92% of 16 vCPUs)."
    )


# --- main ---------------------------------------------------------------------------------


def add_viewer_options(parser: argparse.ArgumentParser) -> None:
    """How the WHEP viewers join and count: ``--join-concurrency``, ``--connect-timeout`` and
    ``--clear-viewers``. ``bench.workers`` runs this benchmark's steps (``run_one``) and shares them."""
    parser.add_argument(
        "--join-concurrency",
        type=int,
        default=16,
        help="joins in flight, all worker processes together (default 16): each lasts until ICE and DTLS "
        "completed, so the server works through the handshakes in batches instead of a stampede",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds for one viewer's ICE and DTLS to complete (default 30); a viewer that did not has not joined",
    )
    parser.add_argument(
        "--clear-viewers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="viewers count packets from their clear RTP headers, many per read, without decrypting (default "
        "on: a few microseconds a packet, so this machine can offer hundreds of viewers; keyframes go "
        "uncounted, being inside the encrypted payload); --no-clear-viewers: aiortc decrypts every packet",
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_MS,
        help=f"clear viewers read their sockets every this many ms instead of being woken by each datagram "
        f"(default {POLL_MS:g}: on one machine a viewer woken by the server's send costs the server's CPU; "
        "bench/lib/subscriber.py, SocketPoller); 0: woken by each as before",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--smoke`` shrinks the run to N=2 at 640x360 and a 4 s window."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--viewers",
        default="10,25,50,100,150,200,300",
        help="comma-separated N values, ascending (default 10,25,50,100,150,200,300)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per N (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up per N before measuring (default 5)")
    parser.add_argument("--bitrate", type=int, default=1_500_000, help="publisher encoder bitrate (default 1.5e6)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument(
        "--per-process",
        type=int,
        help="viewers per worker process (default 50 clear viewers, 10 that decrypt)",
    )
    add_viewer_options(parser)
    parser.add_argument(
        "--pin-server",
        type=cpu_list,
        metavar="CPUS",
        help="pin the server (every thread) to these CPUs, e.g. 1: viewers per core then means one core; "
        "the publisher and the viewers stay free (default: not pinned)",
    )
    parser.add_argument("--nice", type=int, default=10, help="niceness of the viewer workers (default 10)")
    parser.add_argument("--keep-going", action="store_true", help="measure every N even after one does not hold")
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=180.0,
        help="seconds for a step's viewers to join (default 180: joins go in batches), then again for media",
    )
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between steps (default 2)")
    add_server_options(parser, startup_timeout=90.0, server_env_help="extra environment for gbmedia serve (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--smoke", action="store_true", help="quick check: N=2, 640x360, 3 s window, 1.5 s warm-up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.per_process is None:
        args.per_process = 50 if args.clear_viewers else 10
    if args.smoke:
        args.viewers, args.seconds, args.warmup, args.width, args.height = "2", 3.0, 1.5, 640, 360
        args.pause = 0.0
    try:
        args.counts = sorted({int(v) for v in args.viewers.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--viewers takes integers separated by commas, not {args.viewers!r}")
    if not args.counts or args.counts[0] < 0:
        parser.error("--viewers needs N >= 0")
    if 0 not in args.counts:
        args.counts = [0, *args.counts]  # the publisher alone: the baseline for marginal figures
    return args


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """One server, one WHIP publisher, every N in turn until one fails."""
    live: list[WorkerProcess] = []
    publisher: WhipPublisher | None = None
    rows: list[dict[str, Any]] = []
    cancel_on_sigterm()
    load_at_start = os.getloadavg()
    with workdir("gbmedia-bench-live-", args.keep) as tmp:
        server = Server(tmp, args.startup_timeout, dict(args.server_env))
        try:
            print(f"starting gbmedia serve (data dir {server.data_dir}) ...", file=sys.stderr)
            await server.start()
            print(f"  listening on {server.url}, pid {server.pid}", file=sys.stderr)
            if args.pin_server:
                threads = pin_process(server.pid, args.pin_server)
                cpus = ",".join(map(str, sorted(args.pin_server)))
                print(f"  pinned its {threads} threads to CPU {cpus}", file=sys.stderr)
            async with aiohttp.ClientSession() as session:
                # enterprise: 1000 participants per room
                key, secret = await create_tenant(
                    session, server.url, customer="bench-live", instance="bench-live", tier="enterprise"
                )
                publisher = WhipPublisher(args.bitrate, args.width, args.height, ROOM)
                token = mint_token(key, secret, "publisher", Grants(room=ROOM, can_publish=True))
                await publisher.start(session, server.url, token, args.join_timeout)
                print(f"  WHIP publisher connected ({publisher.location})", file=sys.stderr)
                await asyncio.sleep(min(args.warmup, 3.0))
                for n in args.counts:
                    if publisher.pc.connectionState != "connected":
                        state = f"publisher {publisher.pc.connectionState} (state changes: {publisher.state_log()})"
                        rows.append({"subscribers": n, "error": state})
                        break
                    print(
                        f"N={n}: joining, {args.warmup:.0f} s warm-up, {args.seconds:.0f} s window ...", file=sys.stderr
                    )
                    try:
                        row = await run_one(n, args, server, publisher, key, secret, tmp, live)
                    except BenchError as exc:
                        if not server.alive():
                            raise
                        print(f"  N={n} failed: {exc}", file=sys.stderr)
                        rows.append({"subscribers": n, "error": str(exc)})
                        if not args.keep_going:
                            break
                        continue
                    rows.append(row)
                    print(
                        f"  N={n}: server {row['server_cpu_percent']:.1f}% CPU, publisher "
                        f"{row['publisher_fps']:.1f} fps, viewers fps min {fmt(row['fps_min'], '.1f')}, "
                        f"loss {fmt(row['loss_percent'], '.2f')}%: {row['verdict']}, down tracks native "
                        f"{row['down_tracks_native']} python {row['down_tracks_python']}, machine "
                        f"{row['machine_busy_percent']:.0f}% busy, load {row['loadavg_1m']}",
                        file=sys.stderr,
                    )
                    if n and row["verdict"] == "fails" and not args.keep_going:
                        break
                    await asyncio.sleep(args.pause)
                await publisher.close()
                publisher = None
        finally:
            for w in live:
                w.kill_now()
            if publisher is not None:
                with contextlib.suppress(Exception):
                    await publisher.close()
            rc = await server.stop()
            print(f"gbmedia serve stopped (exit status {rc})", file=sys.stderr)
    add_marginals([r for r in rows if "error" not in r])
    return {
        "benchmark": "live",
        "command": " ".join(["python -m bench.live", *sys.argv[1:]]),
        "config": {
            "viewers": args.counts,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "bitrate": args.bitrate,
            "width": args.width,
            "height": args.height,
            "fps": 30,
            "codec": "VP8",
            "per_process": args.per_process,
            "join_concurrency": args.join_concurrency,
            "connect_timeout": args.connect_timeout,
            "clear_viewers": args.clear_viewers,
            "poll_ms": args.poll_ms if args.clear_viewers else None,
            "pin_server": sorted(args.pin_server) if args.pin_server else None,
            "max_loss_percent": LOSS_LIMIT_PERCENT,
        },
        "machine": machine_info(aiortc=aiortc.__version__, loadavg_at_start=[round(v, 2) for v in load_at_start]),
        "rows": rows,
        "summary": summary(rows),
    }


def main(argv: list[str] | None = None) -> int:
    """Run it, print the table and the JSON; exit 1 when no N was measured."""
    args = parse_args(argv)
    result = run_benchmark(
        args,
        "live",
        "viewers",
        (lambda: serve_subscribers(make_viewers)) if args.worker else None,
        lambda: orchestrate(args),
        # Clear viewers drain their sockets themselves, which uvloop's UDP transports do not allow.
        use_uvloop=not (args.worker and args.clear_viewers),
    )
    if isinstance(result, int):
        return result
    measured = [r for r in result["rows"] if "error" not in r]
    if measured:
        print_table(measured, args, result["summary"])
    for r in result["rows"]:
        if "error" in r:
            print(f"N={r['subscribers']}: not measured: {r['error']}")
    print_json(result, args.json)
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
