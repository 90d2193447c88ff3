"""Bot benchmark: N users at once, each in a HEAR/TALK exchange with a GB BASIC dialog over ``/rtc`` chat.

A real ``gbmedia serve`` child (fresh data directory, embedded PostgreSQL, the chat and API
rate limits out of the way) gets one dialog, ``start``, uploaded over REST
(``PUT /api/v1/bots/dialogs/start``)::

    TALK "Hello! Send me a number."
    DO
      HEAR n AS INTEGER
      TALK "Twice ${n} is ${n * 2}."
    LOOP

Each of ``--users`` users opens a ``bot`` conversation with the bot over REST (the bot,
``gb``, is its member with the role ``bot``: one bot in N conversations), connects its own
``/rtc`` socket and authenticates. Then all of them at once: each says "hello" (the engine
starts the dialog, which talks and stops at its HEAR, saved in PostgreSQL) and waits for
the greeting, then sends ``--rounds`` numbers, each answered at the HEAR (the run is
restored, validates the number, talks, and is saved at the next HEAR), waiting for each
answer before the next: one message in flight per user (``--ramp S`` spreads the hellos
over S seconds instead; ``--think S`` waits S seconds after each reply, as a person
reads and types, so the offered rate is below what the bot can do and the latency is
the bot's, not a queue's). Every reply is checked word for
word, and a reply that came twice fails the run.

Printed: send-to-reply latency p50/p99/max, of the first message and of the HEAR
answers apart; replies per second over the whole exchange phase; the server's and
PostgreSQL's CPU over it. The users run in this process (a minimal RFC 6455 client,
``bench.lib.websocket``), so the client's CPU is this process's. Nothing about time is
asserted: it is a measurement.

    python -m bench.bots --smoke
    python -m bench.bots --users 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.chat import SERVER_ENV
from bench.lib.botusers import BOT, DIALOG, BotUser, Latencies
from bench.lib.cli import add_server_options
from bench.lib.errors import BenchError
from bench.lib.proc import cpu_seconds
from bench.lib.report import machine_info
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import Server, create_tenant
from bench.lib.signaling import ws_url
from bench.lib.stats import percentile_ms

SETUP_CONCURRENCY = 16  # REST calls and socket handshakes in flight while setting up


def bearer(key: str, secret: str, identity: str, *, admin: bool = False) -> dict[str, str]:
    """An Authorization header with a token of the instance (what ``gbmedia token`` mints)."""
    from gbmedia.tenancy.tokens import Grants, mint_token

    grants = Grants(instance_admin=True) if admin else Grants()
    return {"Authorization": f"Bearer {mint_token(key, secret, identity, grants, name=identity)}"}


async def set_up_users(session: aiohttp.ClientSession, url: str, key: str, secret: str, count: int) -> list[BotUser]:
    """The dialog uploaded, then per user a ``bot`` conversation with the bot, created by that user over REST."""
    async with session.put(
        f"{url}/api/v1/bots/dialogs/start", json={"source": DIALOG}, headers=bearer(key, secret, "admin", admin=True)
    ) as resp:
        if resp.status not in (200, 201):
            raise BenchError(f"uploading the dialog: HTTP {resp.status}: {await resp.text()}")
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def create(index: int) -> BotUser:
        identity = f"user{index:05d}"
        headers = bearer(key, secret, identity)
        async with (
            gate,
            session.post(
                f"{url}/api/v1/conversations", json={"kind": "bot", "members": [BOT]}, headers=headers
            ) as resp,
        ):
            if resp.status != 201:
                raise BenchError(f"creating {identity}'s conversation: HTTP {resp.status}: {await resp.text()}")
            body = await resp.json()
        return BotUser(identity, headers["Authorization"].removeprefix("Bearer "), body["id"])

    return list(await asyncio.gather(*(create(i) for i in range(count))))


async def connect_all(users: list[BotUser], url: str) -> None:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def connect(user: BotUser) -> None:
        async with gate:
            await user.connect(url)

    await asyncio.gather(*(connect(u) for u in users))


def latency_figures(values_us: list[int]) -> dict[str, Any]:
    return {
        "replies": len(values_us),
        "p50_ms": percentile_ms(values_us, 50),
        "p99_ms": percentile_ms(values_us, 99),
        "max_ms": percentile_ms(values_us, 100),
    }


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Server, dialog, users; every user's conversation at once; the figures."""
    cancel_on_sigterm()
    users: list[BotUser] = []
    with workdir("gbmedia-bench-bots-", args.keep) as tmp:
        server = Server(tmp, args.startup_timeout, dict(args.server_env), base_env=SERVER_ENV)
        try:
            print(f"starting gbmedia serve (data dir {server.data_dir}) ...", file=sys.stderr)
            await server.start()
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                key, secret = await create_tenant(session, server.url, customer="bench-bots", instance="bench-bots")
                users = await set_up_users(session, server.url, key, secret, args.users)
            print(f"  dialog uploaded; {len(users)} bot conversations created over REST", file=sys.stderr)
            await connect_all(users, ws_url(server.url))
            print(f"  {len(users)} users connected and authenticated on /rtc", file=sys.stderr)
            latencies = Latencies()
            first = (time.monotonic(), server.cpu(), server.postgres_cpu(), cpu_seconds(os.getpid()))
            await asyncio.gather(
                *(
                    u.converse(i, args.rounds, args.reply_timeout, latencies, args.ramp * i / len(users), args.think)
                    for i, u in enumerate(users)
                )
            )
            last = (time.monotonic(), server.cpu(), server.postgres_cpu(), cpu_seconds(os.getpid()))
            server.ensure_alive("during the exchanges")
            await asyncio.sleep(args.settle)  # a doubled reply would come now
            extra = sum(u.extra_replies for u in users)
            if extra:
                raise BenchError(f"the bot answered {extra} messages more than once")
        finally:
            await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
            rc = await server.stop()
            print(f"gbmedia serve stopped (exit status {rc})", file=sys.stderr)
    seconds = last[0] - first[0]
    replies = len(latencies.start_us) + len(latencies.hear_us)
    return {
        "benchmark": "bots",
        "config": {
            "users": args.users,
            "rounds": args.rounds,
            "ramp_s": args.ramp,
            "think_s": args.think,
            "cpus": os.cpu_count(),
        },
        "machine": machine_info(),
        "seconds": round(seconds, 3),
        "replies": replies,
        "replies_per_s": round(replies / seconds, 1),
        "all": latency_figures(latencies.start_us + latencies.hear_us),
        "start": latency_figures(latencies.start_us),
        "hear": latency_figures(latencies.hear_us),
        "extra_replies": extra,
        "server_cpu_percent": round(100 * (last[1] - first[1]) / seconds, 1),
        "postgres_cpu_percent": round(100 * (last[2] - first[2]) / seconds, 1),
        "clients_cpu_percent": round(100 * (last[3] - first[3]) / seconds, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    config = result["config"]
    print(
        f"GB BASIC bot: {config['users']:,} users at once, each 1 + {config['rounds']} HEAR/TALK exchanges "
        f"over /rtc chat, hellos over {config['ramp_s']:g} s, {config['think_s']:g} s between a reply and the "
        f"next number ({result['replies']:,} replies in "
        f"{result['seconds']:.1f} s)"
    )
    print(f"{'reply to':<34}{'replies':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, label in (
        ("all", "every message"),
        ("start", "hello (starts the dialog)"),
        ("hear", "a number (answers the HEAR)"),
    ):
        row = result[name]
        print(f"{label:<34}{row['replies']:>9,}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}{row['max_ms']:>10.1f}")
    print(
        f"throughput {result['replies_per_s']:,.1f} replies/s; CPU (% of one core): server "
        f"{result['server_cpu_percent']}, PostgreSQL {result['postgres_cpu_percent']}, users "
        f"{result['clients_cpu_percent']}; replies doubled: {result['extra_replies']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000, help="users at once, one conversation each (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="numbers each user sends after hello (default 3)")
    parser.add_argument(
        "--reply-timeout", type=float, default=300.0, help="seconds a user waits for one reply (default 300)"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="seconds over which the users say hello, evenly spread (default 0: all at once)",
    )
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds a user waits after a reply before its next number (default 0: at once)",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to watch for doubled replies at the end (default 1)"
    )
    add_server_options(parser, startup_timeout=90.0, server_env_help="extra environment for gbmedia serve (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (the server's log)")
    parser.add_argument("--smoke", action="store_true", help="quick check: 5 users, 2 rounds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.users, args.rounds = 5, 2
    if args.users < 1 or args.rounds < 1:
        parser.error("--users and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run it, print the table and the JSON; exit 1 when a reply was missing, wrong or doubled."""
    args = parse_args(argv)
    result = run_benchmark(args, "bots", "users", None, lambda: orchestrate(args))
    if isinstance(result, int):
        return result
    print_table(result)
    print(json.dumps(result, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
