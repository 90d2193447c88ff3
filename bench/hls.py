"""LL-HLS benchmark: one live room publishing, K concurrent HTTP players, a real ``gbmedia serve``.

The server runs as a child process. A publisher process joins a ``live`` room over
``/rtc`` and sends VP8 (or H.264 with ``--h264``) 640x480 at 30 fps plus an Opus
tone; the node packages it once into LL-HLS. Player processes (``--per-process``
players each, aiohttp) behave like LL-HLS players: a blocking playlist reload for
the preload-hinted part (``_HLS_msn``/``_HLS_part``), then every part they have not
fetched yet; with ``--mode segments`` they poll the playlist once a second and fetch
whole segments instead, like players without LL support.

For each K the benchmark warms up, then measures over a window: requests/s and
bytes/s served, latency p50/p99 of media fetches and of blocking reloads (those
include the wait for the part, about a part duration), errors, the server process's
CPU (all threads, from /proc) and the machine's load. It prints a table and JSON and
asserts nothing about time.

    python -m bench.hls --players 10,50,100 --seconds 15
    python -m bench.hls --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.cli import add_server_options
from bench.lib.errors import BenchError
from bench.lib.hlsplayer import Stats, ll_player, segment_player
from bench.lib.proc import machine_busy
from bench.lib.publisher import AvPublisher
from bench.lib.report import col, fmt, print_aligned, table
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import Server, create_tenant, read_metrics
from bench.lib.stats import percentile
from bench.lib.workers import WorkerProcess, commands, reply, running
from gbmedia.tenancy.tokens import Grants, mint_token

ROOM = "bench-hls"


# --- the worker processes: the publisher's and the players' --------------------------------


async def serve_worker() -> None:
    """A worker process: ``publish`` (the room's one publisher) or ``players``; ``window`` sets the measured
    window, ``report`` answers what the players fetched in it, ``stop`` ends it all."""
    stats = Stats()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    session: aiohttp.ClientSession | None = None
    publisher: AvPublisher | None = None
    async for command in commands():
        cmd = command["cmd"]
        if cmd == "publish":
            publisher = AvPublisher(command["h264"])
            await publisher.start(command["url"], command["token"])
            reply({"ok": True})
        elif cmd == "players":
            connector = aiohttp.TCPConnector(limit=0)
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
            player = ll_player if command["mode"] == "parts" else segment_player
            tasks = [
                asyncio.ensure_future(player(session, command["base"], stats, stop)) for _ in range(command["count"])
            ]
            reply({"ok": True})
        elif cmd == "window":
            now = time.monotonic()
            stats.window = (now + command["after"], now + command["after"] + command["seconds"])
            reply({"ok": True})
        elif cmd == "report":
            reply(
                {
                    "requests": stats.requests,
                    "bytes": stats.bytes,
                    "errors": stats.errors,
                    "statuses": stats.statuses,
                    "media_ms": stats.media_ms,
                    "reload_ms": stats.reload_ms,
                }
            )
        elif cmd == "stop":
            stop.set()
            for task in tasks:
                task.cancel()
            if session is not None:
                await session.close()
            if publisher is not None:
                await publisher.close()
            reply({"ok": True})
            return


def worker(index: int, log_path: Path, nice: int) -> WorkerProcess:
    """The orchestrator's handle on one worker process (its reports carry every latency: long lines)."""
    return WorkerProcess(
        index, log_path, nice, module="bench.hls", what="hls worker", stop_command="stop", limit=1 << 26
    )


# --- the orchestrator ---------------------------------------------------------------------


async def wait_ready(session: aiohttp.ClientSession, base: str, within: float) -> None:
    """Until the live room's playlist has two segments: the packager runs and players have something to fetch."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with session.get(base + "/live.m3u8") as resp:
            text = await resp.text()
            if resp.status == 200 and text.count("#EXTINF") >= 2:
                return
        await asyncio.sleep(0.5)
    raise BenchError(f"the live room's playlist never had two segments within {within:.0f} s")


async def run_step(
    players: int, args: argparse.Namespace, server: Server, base: str, workdir: Path, step: int
) -> dict[str, Any]:
    """K players for a warm-up and a window: what the server served, how fast, at what CPU."""
    per = args.per_process
    workers = [
        worker(step * 1000 + i, workdir / f"players-{players}-{i}.log", args.nice)
        for i in range(math.ceil(players / per))
    ]
    async with running(workers):
        for i, player_worker in enumerate(workers):
            await player_worker.start()
            await player_worker.call(
                {"cmd": "players", "count": min(per, players - i * per), "base": base, "mode": args.mode}
            )
        await asyncio.gather(
            *(w.call({"cmd": "window", "after": args.warmup, "seconds": args.seconds}) for w in workers)
        )
        await asyncio.sleep(args.warmup)
        cpu0, busy0, load0 = server.cpu(), machine_busy(), os.getloadavg()[0]
        counters0 = await read_metrics(server.url)
        await asyncio.sleep(args.seconds)
        cpu1, busy1 = server.cpu(), machine_busy()
        counters1 = await read_metrics(server.url)
        await asyncio.sleep(0.5)
        reports = await asyncio.gather(*(w.call({"cmd": "report"}, 120) for w in workers))
    media = [v for r in reports for v in r["media_ms"]]
    reloads = [v for r in reports for v in r["reload_ms"]]
    requests = sum(r["requests"] for r in reports)
    return {
        "players": players,
        "mode": args.mode,
        "seconds": args.seconds,
        "requests_per_s": requests / args.seconds,
        "parts_produced_per_s": (counters1["gbmedia_hls_parts_total"] - counters0["gbmedia_hls_parts_total"])
        / args.seconds,
        "packets_lost": counters1["gbmedia_hls_packets_lost_total"] - counters0["gbmedia_hls_packets_lost_total"],
        "frames_dropped": counters1["gbmedia_hls_frames_dropped_total"] - counters0["gbmedia_hls_frames_dropped_total"],
        "bytes_per_s": sum(r["bytes"] for r in reports) / args.seconds,
        "errors": sum(r["errors"] for r in reports),
        "error_statuses": {k: sum(r["statuses"].get(k, 0) for r in reports) for r in reports for k in r["statuses"]},
        "media_p50_ms": percentile(media, 50),
        "media_p99_ms": percentile(media, 99),
        "reload_p50_ms": percentile(reloads, 50),
        "reload_p99_ms": percentile(reloads, 99),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / args.seconds,
        "server_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / requests if requests else None,
        "server_cpu_s": cpu1 - cpu0,
        "machine_busy_percent": 100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]),
        "load_average_1m": load0,
    }


def print_table(result: dict[str, Any]) -> None:
    """The table: one row per K; "above idle" is the CPU per request beyond the packaging's own."""
    print(
        f"\nLL-HLS: {result['source']} 640x480@30 + Opus, mode {result['mode']}, {result['cpus']} CPUs, "
        f"idle server CPU {fmt(result['idle_server_cpu_percent'], '.1f')}% (packaging alone)"
    )
    idle = result["idle_server_cpu_percent"]

    def above_idle(step: dict[str, Any]) -> str:
        """Server CPU ms per request beyond what packaging alone takes."""
        rate = step["requests_per_s"]
        return fmt((step["server_cpu_percent"] - idle) * 10 / rate if rate else None, ".3f")

    print_aligned(
        table(
            result["steps"],
            [
                col("players", "players"),
                col("parts/s made", "parts_produced_per_s", ".2f"),
                col("lost pkts", "packets_lost", ".0f"),
                col("dropped frames", "frames_dropped", ".0f"),
                col("req/s", "requests_per_s", ".0f"),
                ("MB/s", lambda s: fmt(s["bytes_per_s"] / 1e6, ".2f")),
                col("errors", "errors"),
                col("media p50 ms", "media_p50_ms", ".1f"),
                col("p99", "media_p99_ms", ".1f"),
                col("reload p50 ms", "reload_p50_ms", ".0f"),
                col("p99", "reload_p99_ms", ".0f"),
                col("server CPU %", "server_cpu_percent", ".0f"),
                col("CPU ms/req", "server_cpu_ms_per_request", ".3f"),
                ("above idle", above_idle),
                col("machine busy %", "machine_busy_percent", ".0f"),
                col("load 1m", "load_average_1m", ".2f"),
            ],
        )
    )


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """The server, the live room and its publisher; the server's CPU packaging alone; then every K."""
    cancel_on_sigterm()
    with workdir("gbmedia-bench-hls-") as tmp:
        server = Server(tmp, args.startup_timeout, dict(args.server_env))
        publisher = worker(0, tmp / "publisher.log", 0)
        try:
            await server.start()
            async with aiohttp.ClientSession() as session:
                key, secret = await create_tenant(session, server.url)
                admin = {
                    "Authorization": "Bearer " + mint_token(key, secret, "bench-admin", Grants(instance_admin=True))
                }
                async with session.post(
                    f"{server.url}/api/v1/rooms", json={"name": ROOM, "kind": "live"}, headers=admin
                ) as resp:
                    if resp.status != 201:
                        raise BenchError(f"creating the live room: HTTP {resp.status}: {await resp.text()}")
                    room_id = (await resp.json())["id"]
                await publisher.start()
                await publisher.call(
                    {
                        "cmd": "publish",
                        "url": server.url,
                        "h264": args.h264,
                        "token": mint_token(key, secret, "host", Grants.participant(ROOM)),
                    }
                )
                base = f"{server.url}/hls/{room_id}"
                await wait_ready(session, base, 60)
                cpu0 = server.cpu()
                await asyncio.sleep(args.idle_seconds)
                idle = 100 * (server.cpu() - cpu0) / args.idle_seconds
                steps = []
                for i, players in enumerate(args.players):
                    step = await run_step(players, args, server, base, tmp, i + 1)
                    steps.append(step)
                    print(
                        f"  {players} players: {step['requests_per_s']:.0f} req/s, "
                        f"server CPU {step['server_cpu_percent']:.0f}%",
                        file=sys.stderr,
                    )
        finally:
            await publisher.stop()
            await server.stop()
    result = {
        "source": "H.264 (remuxed)" if args.h264 else "VP8 (transcoded)",
        "mode": args.mode,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "idle_server_cpu_percent": idle,
        "steps": steps,
    }
    print_table(result)
    print(json.dumps(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--smoke`` shrinks the run to 5 players and a 3 s window."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--players",
        default="10,50,100",
        type=lambda v: [int(x) for x in v.split(",")],
        help="K values, comma-separated",
    )
    parser.add_argument("--per-process", type=int, default=50, help="players per worker process")
    parser.add_argument("--mode", choices=("parts", "segments"), default="parts")
    parser.add_argument("--h264", action="store_true", help="publish H.264 (remuxed) instead of VP8")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--nice", type=int, default=5, help="niceness of the player processes")
    add_server_options(parser, startup_timeout=60.0, server_env_help="extra environment for gbmedia serve (repeatable)")
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="the server's idle CPU is measured this long first (default 5)"
    )
    parser.add_argument("--smoke", action="store_true", help="a quick run: 5 players, a 3 s window")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.players, args.seconds, args.warmup, args.idle_seconds = [5], 3.0, 1.0, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run it (the orchestrator prints the table and the JSON itself); exit 0 unless it failed."""
    args = parse_args(argv)
    outcome = run_benchmark(args, "LL-HLS", "players", serve_worker if args.worker else None, lambda: orchestrate(args))
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
