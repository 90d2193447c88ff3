"""Cluster benchmark: what relaying costs a join, what Redis does per join, what an idle socket costs.

Two ``gbmedia serve`` processes form a cluster (one embedded PostgreSQL in a shared data
directory, Redis from ``--redis-url``). Rooms are created through node A, so placement
puts them on A. Then:

- **join latency**: ``--joins`` participants each open ``/rtc``, send ``join`` and wait for
  ``joined`` (then leave): half straight to A (the owner), half through B (which verifies
  the token, finds the owner in Redis and pipes the socket to A). p50/p99 of each path.
- **Redis operations per join**: Redis' own command counters (``INFO commandstats``)
  before and after each path's joins, divided by the joins.
- **idle sockets**: ``--sockets`` sockets opened on A, each authenticated (``auth``: chat
  presence, the normal state of an open page) and then idle; A's resident memory before
  and after gives the memory per socket, and A must still answer ``/healthz``.

It asserts nothing about time: it is a measurement. On a shared machine, read the load.

    python -m bench.cluster --joins 400 --sockets 4000
    python -m bench.cluster --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.lib.cli import add_server_options
from bench.lib.errors import BenchError
from bench.lib.report import machine_info, print_aligned, print_json
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import OPERATOR_TOKEN, Server, create_tenant
from gbmedia.tenancy.tokens import Grants, mint_token

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def redis_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_") and k != "cmdstat_info")


async def one_join(http: aiohttp.ClientSession, url: str, token: str) -> float:
    started = time.perf_counter()
    async with http.ws_connect(url.replace("http", "ws", 1) + "/rtc") as ws:
        await ws.send_json({"type": "join", "token": token, "id": 1})
        async for msg in ws:
            reply = msg.json()
            if reply.get("id") == 1:
                if reply["type"] != "joined":
                    raise BenchError(f"join through {url} failed: {reply}")
                break
        elapsed = time.perf_counter() - started
        await ws.send_json({"type": "leave", "id": 2})
    return elapsed


async def join_path(
    http: aiohttp.ClientSession, url: str, tokens: list[str], redis_client: aioredis.Redis, concurrency: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    before = await redis_calls(redis_client)

    async def limited(token: str) -> float:
        async with gate:
            return await one_join(http, url, token)

    times = await asyncio.gather(*(limited(t) for t in tokens))
    calls = await redis_calls(redis_client) - before
    return {
        "joins": len(times),
        "p50_ms": round(percentile(times, 0.5) * 1000, 1),
        "p99_ms": round(percentile(times, 0.99) * 1000, 1),
        "mean_ms": round(statistics.mean(times) * 1000, 1),
        "redis_calls_per_join": round(calls / len(times), 1),
    }


async def idle_sockets(http: aiohttp.ClientSession, server: Server, count: int, token: str) -> dict[str, Any]:
    assert server.proc is not None
    before = rss_bytes(server.proc.pid)
    sockets = []
    for _ in range(count):
        ws = await http.ws_connect(server.url.replace("http", "ws", 1) + "/rtc", heartbeat=None)
        await ws.send_json({"type": "auth", "token": token, "id": 1})
        sockets.append(ws)
    for ws in sockets:
        async for msg in ws:
            if msg.json().get("id") == 1:
                break
    await asyncio.sleep(2.0)  # settled: nothing in flight
    after = rss_bytes(server.proc.pid)
    async with http.get(server.url + "/healthz") as resp:
        healthy = resp.status == 200
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {
        "sockets": count,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_socket": round((after - before) / count / 1024, 1),
        "healthz_ok": healthy,
    }


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sockets * 2 + 1024)), hard))
    redis_client = aioredis.from_url(args.redis_url)
    await redis_client.flushdb()
    with workdir("gbmedia-bench-cluster-", args.keep) as tmp:
        shared = {
            "GBMEDIA_DATA_DIR": str(tmp / "data"),
            "GBMEDIA_REDIS_URL": args.redis_url,
            "GBMEDIA_NODE_MAX_CPU": "1",
            "GBMEDIA_WORKERS": "1",  # each server one node process (with Redis the default is one per core)
            "GBMEDIA_API_RATE_LIMIT": "100000",
            "GBMEDIA_API_RATE_BURST": "100000",
            "GBMEDIA_JOIN_RATE_BURST": "100000",
            "GBMEDIA_AUTH_FAILURE_BURST": "100000",
            **dict(args.server_env),
        }
        a = Server(
            tmp / "a",
            args.startup_timeout,
            base_env={**shared, "GBMEDIA_NODE_ID": "bench-a", "GBMEDIA_UDP_PORTS": "42000-42999"},
        )
        b = Server(
            tmp / "b",
            args.startup_timeout,
            base_env={**shared, "GBMEDIA_NODE_ID": "bench-b", "GBMEDIA_UDP_PORTS": "43000-43999"},
        )
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        try:
            await a.start()
            await b.start()
            # No connector limit: the idle sockets stay open (aiohttp's default caps a session at 100).
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                key, secret = await create_tenant(http, a.url)
                rooms = max(1, args.joins // 20)
                admin = mint_token(key, secret, "admin", Grants(instance_admin=True))
                for r in range(rooms):
                    async with http.post(
                        a.url + "/api/v1/rooms", json={"name": f"r{r}"}, headers={"Authorization": f"Bearer {admin}"}
                    ) as resp:
                        room = await resp.json()
                        if room.get("node_id") != "bench-a":
                            raise BenchError(f"room r{r} was placed on {room.get('node_id')}, not on node A")

                def tokens(path: str) -> list[str]:
                    return [
                        mint_token(key, secret, f"{path}-{i}", Grants.participant(f"r{i % rooms}"))
                        for i in range(args.joins)
                    ]

                await join_path(http, a.url, tokens("warm")[: min(20, args.joins)], redis_client, args.concurrency)
                direct = await join_path(http, a.url, tokens("direct"), redis_client, args.concurrency)
                relayed = await join_path(http, b.url, tokens("relayed"), redis_client, args.concurrency)
                chat_token = mint_token(key, secret, "idle", Grants.participant("r0"))
                idle = await idle_sockets(http, a, args.sockets, chat_token)
        finally:
            await b.stop()
            await a.stop()
            await redis_client.aclose()
    result = {
        "benchmark": "cluster",
        "machine": machine_info(),
        "join_direct": direct,
        "join_relayed": relayed,
        "relay_overhead_p50_ms": round(relayed["p50_ms"] - direct["p50_ms"], 1),
        "idle_sockets": idle,
    }
    print()
    print(
        f"gbmedia cluster: 2 node processes, Redis {args.redis_url}; {args.joins} joins per path "
        f"({args.concurrency} at once, {rooms} rooms on node A); {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f}."
    )
    print_aligned(
        [
            ("path", "joins", "p50 ms", "p99 ms", "mean ms", "Redis calls/join"),
            *[
                (
                    name,
                    str(r["joins"]),
                    str(r["p50_ms"]),
                    str(r["p99_ms"]),
                    str(r["mean_ms"]),
                    str(r["redis_calls_per_join"]),
                )
                for name, r in (("straight to the owner", direct), ("through another node", relayed))
            ],
        ]
    )
    print(
        f"Idle authenticated /rtc sockets on one process: {idle['sockets']}, RSS {idle['rss_before_mb']} -> "
        f"{idle['rss_after_mb']} MB: {idle['kb_per_socket']} KB per socket; /healthz "
        f"{'answered' if idle['healthz_ok'] else 'FAILED'}."
    )
    print_json(result, args.json)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--joins", type=int, default=400, help="joins per path (default 400)")
    parser.add_argument("--concurrency", type=int, default=10, help="joins in flight at once (default 10)")
    parser.add_argument("--sockets", type=int, default=4000, help="idle sockets opened on one node (default 4000)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a Redis database it may flush")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    parser.add_argument("--smoke", action="store_true", help="a few joins and sockets: checks that it runs")
    add_server_options(parser, startup_timeout=120.0, server_env_help="extra NAME=VALUE for both servers")
    args = parser.parse_args(argv)
    if args.smoke:
        args.joins, args.sockets, args.concurrency = 20, 50, 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = run_benchmark(args, "cluster", "servers", None, lambda: orchestrate(args))
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
