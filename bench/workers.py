"""Live fan-out across worker processes: one live room's WebRTC viewers on ``--workers 1`` and ``--workers 2``.

The issue's scaling question: does a machine hold more viewers of one live room when
``gbmedia serve --workers N`` runs a node process per core? With several workers the
room's node (the origin) serves its share and the live room cascades to the other
worker (an edge fed by the origin over the machine's loopback), so one room uses every
core. Each step is :mod:`bench.live`'s (a WHIP publisher, N WHEP viewers in worker
processes counting RTP, 30 fps and < 1 % loss to hold), with a fresh server per step:
with W workers its cascade threshold (``GBMEDIA_CASCADE_VIEWERS``) is N/W, so each
worker gets an equal share. Server CPU is the supervisor's and all its workers'.

It prints the largest N held per worker count and the scaling efficiency
(held with W workers / (W x held with one)); the goal is >= 0.9. On a 2-core machine
the viewers' own processes share the cores with the server: read the load it prints.
It asserts nothing about time.

    python -m bench.workers --workers 1,2 --viewers 25,50,75,100,150 --seconds 10
    python -m bench.workers --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench import live
from bench.lib.cli import add_server_options
from bench.lib.errors import BenchError
from bench.lib.report import col, fmt, machine_info, print_aligned, print_json, table
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import Server, create_tenant
from bench.lib.subscriber import serve_subscribers
from bench.lib.whep import WhipPublisher
from bench.lib.workers import WorkerProcess
from gbmedia.tenancy.tokens import Grants, mint_token


async def one_step(args: argparse.Namespace, workers: int, n: int, tmp: Path) -> dict[str, Any]:
    """A fresh server with ``workers`` node processes, its publisher, then N viewers measured."""
    step_dir = tmp / f"w{workers}-n{n}"
    step_dir.mkdir()
    # The viewers all use one API key: lift its request budget (the benchmark measures media, not limits).
    env = {
        "GBMEDIA_WORKERS": str(workers),
        "GBMEDIA_API_RATE_LIMIT": "100000",
        "GBMEDIA_API_RATE_BURST": "100000",
        "GBMEDIA_JOIN_RATE_BURST": "100000",
        "GBMEDIA_AUTH_FAILURE_BURST": "100000",
        **dict(args.server_env),
    }
    if workers > 1:
        client = aioredis.from_url(args.redis_url)
        await client.flushdb()
        await client.aclose()
        env |= {
            "GBMEDIA_REDIS_URL": args.redis_url,
            "GBMEDIA_CASCADE_VIEWERS": str(max(1, math.ceil(n / workers))),
            "GBMEDIA_NODE_MAX_CPU": "1",  # placement by cost: the benchmark loads the CPU on purpose
        }
    server = Server(step_dir, args.startup_timeout, base_env=env, args=("--workers", str(workers)))
    publisher: WhipPublisher | None = None
    running: list[WorkerProcess] = []
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            key, secret = await create_tenant(
                session, server.url, customer="bench-workers", instance="bench-workers", tier="enterprise"
            )
            publisher = WhipPublisher(args.bitrate, args.width, args.height, live.ROOM)
            token = mint_token(key, secret, "publisher", Grants(room=live.ROOM, can_publish=True))
            await publisher.start(session, server.url, token, args.join_timeout)
            await asyncio.sleep(min(args.warmup, 3.0))
            row = await live.run_one(n, args, server, publisher, key, secret, step_dir, running)
            row["workers"] = workers
            return row
    finally:
        for worker in running:
            worker.kill_now()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        await server.stop()


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    rows: list[dict[str, Any]] = []
    load_at_start = os.getloadavg()
    with workdir("gbmedia-bench-workers-", args.keep) as tmp:
        for workers in args.worker_counts:
            for n in args.counts:
                print(
                    f"workers={workers} N={n}: a fresh server, warm-up, {args.seconds:.0f} s window ...",
                    file=sys.stderr,
                )
                try:
                    row = await one_step(args, workers, n, tmp)
                except BenchError as exc:
                    print(f"  failed: {exc}", file=sys.stderr)
                    rows.append({"workers": workers, "subscribers": n, "error": str(exc)})
                    break
                rows.append(row)
                print(
                    f"  {row['server_cpu_percent']:.1f}% CPU, fps min {fmt(row['fps_min'], '.1f')}, loss "
                    f"{fmt(row['loss_percent'], '.2f')}%: {row['verdict']}",
                    file=sys.stderr,
                )
                if row["verdict"] == "fails" and not args.keep_going:
                    break
    held = {
        w: max((r["subscribers"] for r in rows if r.get("workers") == w and r.get("holds")), default=0)
        for w in args.worker_counts
    }
    summary: dict[str, Any] = {"max_viewers_held": {str(w): h for w, h in held.items()}}
    base = held.get(1, 0)
    if base:
        summary["scaling_efficiency"] = {str(w): round(h / (w * base), 2) for w, h in held.items() if w > 1}
    return {
        "benchmark": "workers",
        "command": " ".join(["python -m bench.workers", *sys.argv[1:]]),
        "machine": machine_info(loadavg_at_start=[round(v, 2) for v in load_at_start]),
        "rows": rows,
        "summary": summary,
    }


def print_result(result: dict[str, Any], args: argparse.Namespace) -> None:
    measured = [r for r in result["rows"] if "error" not in r]
    print()
    print(
        f"gbmedia live fan-out across workers: 1 WHIP publisher ({args.width}x{args.height} VP8, 30 fps, "
        f"{args.bitrate / 1e6:.2f} Mbps) -> N WHEP viewers; {args.seconds:.0f} s window; a fresh server per step; "
        f"{os.cpu_count()} cores."
    )
    print_aligned(
        table(
            measured,
            [
                col("workers", "workers"),
                col("N", "subscribers"),
                col("srv CPU%", "server_cpu_percent", ".1f"),
                col("fps min", "fps_min", ".1f"),
                col("loss %", "loss_percent", ".2f"),
                col("viewers%", "subscriber_workers_cpu_percent", ".0f"),
                col("machine busy%", "machine_busy_percent", ".0f"),
                ("verdict", lambda r: r["verdict"]),
            ],
        )
    )
    summary = result["summary"]
    print(
        "Largest N held: "
        + ", ".join(f"{w} worker(s): {h}" for w, h in summary["max_viewers_held"].items())
        + "; scaling efficiency "
        + (
            ", ".join(f"{w} workers: {e}" for w, e in summary["scaling_efficiency"].items()) + " (goal >= 0.9)"
            if summary.get("scaling_efficiency")
            # said either way: a busy machine where one worker held no N is a result, not a missing line
            else "- (one worker held no N: nothing to scale from)"
        )
        + "."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--viewers", default="25,50,75,100,150", help="N values, ascending")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--bitrate", type=int, default=1_500_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--per-process", type=int, default=10)
    live.add_viewer_options(parser)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--join-timeout", type=float, default=90.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a Redis database it may flush")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="workers 1 and 2, N=2, 640x360, 3 s window")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_server_options(parser, startup_timeout=120.0, server_env_help="extra NAME=VALUE for the server")
    args = parser.parse_args(argv)
    if args.smoke:
        args.viewers, args.seconds, args.warmup, args.width, args.height = "2", 3.0, 2.0, 640, 360
        args.bitrate = 500_000
    args.counts = [int(v) for v in args.viewers.split(",")]
    args.worker_counts = [int(v) for v in args.workers.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_benchmark(
        args,
        "workers",
        "viewers",
        (lambda: serve_subscribers(live.make_viewers)) if args.worker else None,
        lambda: orchestrate(args),
    )
    if isinstance(result, int):
        return result
    print_result(result, args)
    print_json(result, args.json)
    return 0 if any("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
