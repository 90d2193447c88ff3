"""Chat benchmark: N WebSocket clients in conversations of M members, a stepped send rate, a real ``gbmedia serve``.

The server runs as a child process with a fresh temporary data directory: by default
its embedded PostgreSQL (the single-node deployment; its whole process tree is this
benchmark's, so its CPU is measured apart), or with ``--postgres machine`` a fresh
database on the machine's PostgreSQL (``--machine-dsn``), created and dropped here.
The chat and API rate limits are set high so the limiter does not interfere.

Setup is REST: a tenant (operator token), then one conversation per M clients, created
by its first member's access token (``gbmedia.tenancy.tokens.mint_token``). The
clients live in ``--workers`` processes (uvloop when available); each worker holds
N/workers sockets, every conversation's members spread across the workers, so a
delivery usually crosses processes. Each socket sends ``auth`` with its own token.
The sockets are a minimal RFC 6455 client on an asyncio protocol by default
(``--client raw``: cheap, so the clients take less of a small machine from the
server), or aiohttp's (``--client aiohttp``).

For every rate R (msgs/s in total): the workers send open-loop (a 2 ms pacing tick,
never waiting for acks) for ``--warmup`` + ``--seconds``; each message goes from a
random client (so a random member of its conversation) as ``chat_send`` with a unique
idempotency key and its send time (CLOCK_MONOTONIC, shared by the processes of one
machine) in the content. Measured in the window after the warm-up:

* offered msgs/s: ``chat_send`` frames written by the clients;
* acked msgs/s: ``chat_ack`` replies that arrived (the server acks after the commit);
* deliveries/s: ``chat_message`` events that arrived at the *other* members (M-1 per
  message); the server also pushes the sender's own copy (for its other devices),
  reported apart as ``own/s``;
* ack latency (send -> ``chat_ack``) and delivery latency (send -> ``chat_message`` at
  another member) p50/p99/max, of messages sent in the window;
* server CPU (utime+stime of the ``gbmedia serve`` process, all threads) and PostgreSQL
  CPU (embedded: its postmaster's process tree; machine: the backends connected to the
  fresh database), each in % of one core; the client workers' CPU and the machine's.

After each step the benchmark waits until every message is acked and delivered (or
``--drain`` passes, and then stops stepping up). At the end: the count check (sent =
acked = stored, counting the database's ``messages``; every member received every seq
of its conversation exactly once). It asserts nothing about time: it is a measurement.

    python -m bench.chat --smoke
    python -m bench.chat --clients 100 --members 10 --rate 250,500,1000,2000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.chat_report import (
    REF_SYNAPSE,
    TARGET_MEMBERS,
    TARGET_MSGS_PER_S,
    TARGET_P99_MS,
    count_check,
    print_table,
    profile_summary,
)
from bench.lib.chatclient import Plan, create_conversations, serve_clients
from bench.lib.cli import add_server_options
from bench.lib.database import Database
from bench.lib.errors import BenchError
from bench.lib.probe import MachineProbe
from bench.lib.proc import ServerReading, descendants, embedded_postmaster_pid, read_server
from bench.lib.profile import finish_profiler, start_py_spy
from bench.lib.report import fmt, machine_info
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.server import Server, create_tenant, read_metrics
from bench.lib.signaling import ws_url
from bench.lib.stats import cpu_delta, percentile_ms
from bench.lib.workers import WorkerProcess

HIGH_LIMIT = "1000000"  # rate limits that never bite
SERVER_ENV = {
    "GBMEDIA_CHAT_RATE_LIMIT": HIGH_LIMIT,
    "GBMEDIA_CHAT_RATE_BURST": HIGH_LIMIT,
    "GBMEDIA_API_RATE_LIMIT": HIGH_LIMIT,
    "GBMEDIA_API_RATE_BURST": HIGH_LIMIT,
}
DEFAULT_MACHINE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# --- one rate step ------------------------------------------------------------------------


@dataclass
class Snapshot(ServerReading):
    """The server's, PostgreSQL's and the machine's CPU counters at one moment."""

    postgres: dict[int, float]


async def snapshot(server: Server, database: Database) -> Snapshot:
    """The server's and PostgreSQL's CPU counters and the machine's, now."""
    return Snapshot(**read_server(server.pid), postgres=await database.cpu())


WRITER_FIGURES = (
    "gbmedia_chat_send_batches_total",
    "gbmedia_chat_sends_batched_total",
    "gbmedia_chat_send_batch_seconds_total",
)


async def writer_figures(server: Server) -> dict[str, float]:
    """The server's group-commit counters from /metrics (how many statements, sends in them, time in them)."""
    metrics = await read_metrics(server.url)
    return {name: metrics[name] for name in WRITER_FIGURES if name in metrics}


def wall_clock(monotonic: float) -> str:
    """A CLOCK_MONOTONIC time as UTC wall-clock text (HH:MM:SS.mmm), as the logs write it."""
    at = monotonic + time.time() - time.monotonic()
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


async def sleep_until(t: float) -> None:
    """Until CLOCK_MONOTONIC ``t`` (the workers' clock too: the window opens at the same moment for all)."""
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def run_step(
    index: int,
    rate: float,
    args: argparse.Namespace,
    server: Server,
    database: Database,
    workers: list[WorkerProcess],
    plan: Plan,
    probe: MachineProbe | None,
) -> dict[str, Any]:
    """One rate: the workers send open-loop through a warm-up and the window, then it drains; the row of figures."""
    start_at = time.monotonic() + 0.5
    window_start = start_at + args.warmup
    window_end = window_start + args.seconds
    per_worker = rate / len(workers)
    started = await asyncio.gather(
        *(
            w.call(
                {
                    "cmd": "run",
                    "rate": per_worker,
                    "start_at": start_at,
                    "window_start": window_start,
                    "window_end": window_end,
                    "step": index,
                }
            )
            for w in workers
        )
    )
    profiler = None
    if args.profile is not None:
        await sleep_until(window_start - 0.6)
        profiler = await start_profiler(args, server, rate)
    await sleep_until(window_start)
    first = await snapshot(server, database)
    writers_first = await writer_figures(server)
    workers_cpu_first = [s["cpu"] for s in started]  # refined below from the reports
    await sleep_until(window_end)
    last = await snapshot(server, database)
    writers_last = await writer_figures(server)
    if profiler is not None:
        await finish_profiler(profiler)
    server.ensure_alive("during the step")
    # Drain: every message acked (or refused) and delivered to every member.
    drained = False
    drain_started = time.monotonic()
    deadline = drain_started + args.drain
    members_of = {cid: len(group) for cid, group in plan.conversations.items()}
    while True:
        progress = await asyncio.gather(*(w.call({"cmd": "progress"}) for w in workers))
        sending = any(p["sending"] for p in progress)
        pending = sum(p["pending"] for p in progress)
        if not sending and pending == 0:
            acked_by: collections.Counter[str] = collections.Counter()
            for p in progress:
                acked_by.update(p["acked_by_conversation"])
            expected = sum(n * members_of.get(cid, 0) for cid, n in acked_by.items())
            received = sum(p["received"] for p in progress)
            if received >= expected:
                drained = True
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    drain_s = time.monotonic() - max(drain_started, window_end)
    reports = await asyncio.gather(*(w.call({"cmd": "report"}, 120) for w in workers))
    window = last.t - first.t
    ack_us = [v for r in reports for v in r["ack_us"]]
    delivery_us = [v for r in reports for v in r["delivery_us"]]
    own_us = [v for r in reports for v in r["own_us"]]
    slot_max_us: dict[int, int] = {}
    for r in reports:
        for slot, value in r["slot_max_us"].items():  # JSON made the keys strings
            slot_max_us[int(slot)] = max(slot_max_us.get(int(slot), 0), value)
    # Slots of 100 ms (by send time, from the window's start) whose slowest delivery missed the target.
    slow = [(slot, value) for slot, value in sorted(slot_max_us.items()) if value / 1000 >= TARGET_P99_MS]
    errors: collections.Counter[str] = collections.Counter()
    for r in reports:
        errors.update(r["errors"])
    busy = (last.machine[0] - first.machine[0]) / max(1.0, last.machine[1] - first.machine[1])
    # Worker CPU over the whole step (warm-up and drain included), scaled to the step's length.
    step_span = max(1e-9, reports[0]["t"] - started[0]["t"])
    workers_cpu = sum(r["cpu"] - c for r, c in zip(reports, workers_cpu_first, strict=True))
    sent_window = sum(r["sent_window"] for r in reports)
    acked_window = sum(r["acked_window"] for r in reports)
    row: dict[str, Any] = {
        "rate": rate,
        "window_s": round(window, 3),
        "drained": drained,
        "drain_s": round(drain_s, 2),
        "sent": sum(r["sent"] for r in reports),
        "acked": sum(r["acked"] for r in reports),
        "errors": dict(errors),
        "offered_per_s": sent_window / window,
        "acked_per_s": acked_window / window,
        "deliveries_per_s": sum(r["deliveries_window"] for r in reports) / window,
        "own_copies_per_s": sum(r["own_window"] for r in reports) / window,
        "ack_ms_p50": percentile_ms(ack_us, 50),
        "ack_ms_p99": percentile_ms(ack_us, 99),
        "ack_ms_max": percentile_ms(ack_us, 100),
        "delivery_ms_p50": percentile_ms(delivery_us, 50),
        "delivery_ms_p99": percentile_ms(delivery_us, 99),
        "delivery_ms_max": percentile_ms(delivery_us, 100),
        "own_copy_ms_p50": percentile_ms(own_us, 50),
        "own_copy_ms_p99": percentile_ms(own_us, 99),
        "latency_samples": {"ack": len(ack_us), "delivery": len(delivery_us), "own": len(own_us)},
        "server_cpu_percent": 100 * (last.server_cpu - first.server_cpu) / window,
        "server_sys_percent": 100 * (last.server_sys - first.server_sys) / window,
        "server_runqueue_wait_percent": 100 * (last.server_wait - first.server_wait) / window,
        "postgres_cpu_percent": 100 * cpu_delta(first.postgres, last.postgres) / window,
        "clients_cpu_percent": 100 * workers_cpu / step_span,
        "orchestrator_cpu_percent": 100 * (last.orchestrator_cpu - first.orchestrator_cpu) / window,
        "machine_busy_percent": 100 * busy,
        "client_lag_ms_max": 1000 * max(r["lag_max"] for r in reports),
        "machine_cpus": os.cpu_count() or 1,
        "sender_behind_ms_max": 1000 * max(r["send_behind_max"] for r in reports),
        "slow_slots": {f"{slot / 10:.1f}s": round(value / 1000, 1) for slot, value in slow},
        "slots": len(slot_max_us),
        # What the machine did around each slow slot (from 0.2 s before it to 0.3 s after its start).
        "slow_slot_machine": {
            f"{slot / 10:.1f}s": probe.around(window_start + slot / 10 - 0.2, window_start + slot / 10 + 0.3)
            for slot, _ in slow
        }
        if probe is not None
        else {},
        "machine_probe": probe.summary(window_start, window_end) if probe is not None else None,
        # The window's start on the wall clock (UTC), to find a slow slot in the server's and PostgreSQL's logs.
        "window_start_utc": wall_clock(window_start),
    }
    statements = writers_last.get(WRITER_FIGURES[0], 0) - writers_first.get(WRITER_FIGURES[0], 0)
    if statements > 0:  # group commit in the window: statements/s, sends per statement, ms per statement
        row["statements_per_s"] = statements / window
        row["sends_per_statement"] = (writers_last[WRITER_FIGURES[1]] - writers_first[WRITER_FIGURES[1]]) / statements
        row["statement_ms"] = 1000 * (writers_last[WRITER_FIGURES[2]] - writers_first[WRITER_FIGURES[2]]) / statements
    # CPU per persisted message (ms of one core): less sensitive to neighbours than the saturation point.
    persisted = max(1e-9, row["acked_per_s"])
    row["server_ms_per_msg"] = 10 * row["server_cpu_percent"] / persisted
    row["postgres_ms_per_msg"] = 10 * row["postgres_cpu_percent"] / persisted
    row["clients_ms_per_msg"] = 10 * row["clients_cpu_percent"] / persisted
    # CPU the machine spent on anything but this benchmark (other work on a shared machine), % of one core.
    row["others_cpu_percent"] = max(
        0.0,
        row["machine_busy_percent"] * row["machine_cpus"]
        - row["server_cpu_percent"]
        - row["postgres_cpu_percent"]
        - row["clients_cpu_percent"]
        - row["orchestrator_cpu_percent"],
    )
    row["meets_target"] = bool(
        drained
        and not errors
        and row["acked_per_s"] >= 0.98 * row["offered_per_s"]
        and row["delivery_ms_p99"] is not None
        and row["delivery_ms_p99"] < TARGET_P99_MS
        and row["ack_ms_p99"] is not None
        and row["ack_ms_p99"] < TARGET_P99_MS
    )
    return row


async def start_profiler(args: argparse.Namespace, server: Server, rate: float) -> Any:
    """py-spy on the server for the window (``--profile DIR``), raw collapsed stacks per rate."""
    # --native needs the process paused for each sample; without it py-spy reads it while it runs
    return await start_py_spy(
        server.pid,
        args.profile / f"server-r{rate:g}.txt",
        args.seconds,
        ["--native"] if args.profile_native else ["--nonblocking"],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--smoke`` shrinks the run to 20 clients at one rate."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100, help="connected clients, one socket each (default 100)")
    parser.add_argument("--members", type=int, default=10, help="members per conversation (default 10)")
    parser.add_argument(
        "--rate",
        default="250,500,1000,2000",
        help="comma-separated total send rates in msgs/s, stepped (default 250,500,1000,2000)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per rate (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the rate before the window (default 2)")
    parser.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="seconds to wait after a step for every ack and delivery; a step that does not drain "
        "ends the run (default 30)",
    )
    parser.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the clients' WebSocket implementation: raw (default; a minimal RFC 6455 client on an "
        "asyncio protocol, cheap, so the clients take less of the machine from the server) or "
        "aiohttp's ClientSession.ws_connect",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness (and autogroup priority) of the client workers (default 0: the clients' "
        "latency readings stay honest; raise it to favour the server)",
    )
    parser.add_argument(
        "--postgres",
        choices=("embedded", "machine"),
        default="embedded",
        help="embedded (default): the server's own PostgreSQL in its temporary data directory; "
        "machine: a fresh database on --machine-dsn, dropped at the end",
    )
    parser.add_argument(
        "--machine-dsn",
        default=DEFAULT_MACHINE_DSN,
        help=f"an admin DSN of the machine's PostgreSQL (default {DEFAULT_MACHINE_DSN})",
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rates (default 1)")
    add_server_options(
        parser,
        startup_timeout=90.0,
        server_env_help="extra environment for gbmedia serve (repeatable), e.g. GBMEDIA_DATABASE_POOL_SIZE=20",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy during each window into this "
        "folder (raw collapsed stacks, server-r<rate>.txt) and print a summary",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: also sample native frames (uvloop, asyncpg's Cython protocol); "
        "pauses the server for each sample",
    )
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="do not run the machine probe (a small disk flush every 50 ms and a CPU reading every "
        "0.1 s beside the benchmark, which tell a slow slot's cause: a slow disk or a neighbour)",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server and worker logs)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="quick check: 20 clients, 2 workers, one rate of 50 msgs/s, 5 s window, 1 s warm-up",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.workers, args.rate, args.seconds, args.warmup = 20, 2, "50", 5.0, 1.0
    try:
        args.rates = [float(v) for v in args.rate.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--rate takes numbers separated by commas, not {args.rate!r}")
    if not args.rates or any(r <= 0 for r in args.rates):
        parser.error("--rate needs at least one rate > 0")
    if args.members < 2:
        parser.error("--members must be at least 2 (a delivery goes to another member)")
    if args.clients < args.members:
        parser.error("--clients must be at least --members")
    args.workers = max(1, min(args.workers, args.clients))
    return args


def worker(index: int, log_path: Path, nice: int) -> WorkerProcess:
    """The orchestrator's handle on one client worker process (its replies carry every latency: long lines)."""
    return WorkerProcess(
        index,
        log_path,
        nice,
        module="bench.chat",
        args=("--worker", str(index)),
        what="client worker",
        stop_command="close",
        limit=1 << 26,
    )


def own_pids(server: Server, database: Database, workers: list[WorkerProcess]) -> list[int]:
    """The benchmark's own processes: this one, the server and its children, PostgreSQL's, the client workers."""
    return [
        os.getpid(),
        server.pid,
        *descendants(server.pid),
        *database.pids(),
        *(w.proc.pid for w in workers if w.proc is not None),
    ]


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Set up the server, the conversations and the clients; every rate; the count check."""
    workers: list[WorkerProcess] = []
    probe: MachineProbe | None = None
    rows: list[dict[str, Any]] = []
    check: dict[str, Any] | None = None
    cancel_on_sigterm()
    with workdir("gbmedia-bench-chat-", args.keep) as tmp:
        database = Database(args.postgres, tmp / "data", args.machine_dsn)
        server = Server(
            tmp, args.startup_timeout, {**database.server_env(), **dict(args.server_env)}, base_env=SERVER_ENV
        )
        try:
            await database.create()
            print(f"starting gbmedia serve (data dir {server.data_dir}; {database.describe()}) ...", file=sys.stderr)
            t0 = time.monotonic()
            await server.start()
            await database.start_monitor()
            print(
                f"  listening on {server.url} after {time.monotonic() - t0:.1f} s, pid {server.pid}"
                + (
                    f", embedded PostgreSQL pid {embedded_postmaster_pid(server.data_dir)}"
                    if args.postgres == "embedded"
                    else ""
                ),
                file=sys.stderr,
            )
            async with aiohttp.ClientSession() as session:
                key, secret = await create_tenant(session, server.url, customer="bench-chat", instance="bench-chat")
                plan = await create_conversations(session, server.url, key, secret, args.clients, args.members)
            print(f"  {len(plan.conversations)} conversations of {args.members} created over REST", file=sys.stderr)
            workers = [worker(i, tmp / f"worker-{i}.log", args.nice) for i in range(args.workers)]
            await asyncio.gather(*(w.start() for w in workers))
            shares = [plan.clients[i :: len(workers)] for i in range(len(workers))]  # members spread across workers
            connect = {"cmd": "connect", "url": ws_url(server.url), "client": args.client}
            results = await asyncio.gather(
                *(w.call({**connect, "clients": s}, 120) for w, s in zip(workers, shares, strict=True))
            )
            connected = sum(r["connected"] for r in results)
            if connected != args.clients:
                raise BenchError(
                    f"only {connected} of {args.clients} clients connected: "
                    f"{[e for r in results for e in r['errors']][:3]}"
                )
            print(f"  {connected} clients connected and authenticated in {len(workers)} processes", file=sys.stderr)
            if args.probe:
                probe = MachineProbe(tmp, lambda: own_pids(server, database, workers))
                probe.start()
            await asyncio.sleep(args.pause)
            for index, rate in enumerate(args.rates):
                print(
                    f"rate {rate:g} msgs/s: {args.warmup:.0f} s warm-up, {args.seconds:.0f} s window ...",
                    file=sys.stderr,
                )
                row = await run_step(index, rate, args, server, database, workers, plan, probe)
                rows.append(row)
                print(
                    f"  offered {row['offered_per_s']:.0f}/s, acked {row['acked_per_s']:.0f}/s, deliveries "
                    f"{row['deliveries_per_s']:.0f}/s, ack p99 {fmt(row['ack_ms_p99'], '.1f')} ms, delivery p99 "
                    f"{fmt(row['delivery_ms_p99'], '.1f')} ms, server {row['server_cpu_percent']:.0f}% CPU, "
                    f"postgres {row['postgres_cpu_percent']:.0f}%, drained {row['drained']} "
                    f"({row['drain_s']:.1f} s)",
                    file=sys.stderr,
                )
                if not row["drained"]:
                    print(
                        f"  the server did not catch up within {args.drain:.0f} s; not stepping higher", file=sys.stderr
                    )
                    break
                await asyncio.sleep(args.pause)
            # Count check: the clients against the database.
            deadline = time.monotonic() + args.drain
            while time.monotonic() < deadline:  # a step that did not drain may still be finishing
                progress = await asyncio.gather(*(w.call({"cmd": "progress"}) for w in workers))
                if not any(p["pending"] or p["sending"] for p in progress):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.5)
            stored, last_seq = await database.counts()
            verify = await asyncio.gather(*(w.call({"cmd": "verify", "last_seq": last_seq}, 120) for w in workers))
            check = count_check(stored, last_seq, list(verify), plan)
        finally:
            if probe is not None:
                probe.stop()
            await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
            for w in workers:
                w.kill_now()
            await database.close()
            rc = await server.stop()
            print(f"gbmedia serve stopped (exit status {rc})", file=sys.stderr)
            with contextlib.suppress(Exception):
                await database.drop()
    loop_name = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    result: dict[str, Any] = {
        "benchmark": "chat",
        "config": {
            "clients": args.clients,
            "members": args.members,
            "conversations": len(plan.conversations),
            "rates": args.rates,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "workers": args.workers,
            "nice": args.nice,
            "client": args.client,
            "event_loop": loop_name,
            "cpus": os.cpu_count(),
            "database": database.describe(),
            "postgres": args.postgres,
        },
        "machine": machine_info(),
        "target": {"msgs_per_s": TARGET_MSGS_PER_S, "members": TARGET_MEMBERS, "p99_ms": TARGET_P99_MS},
        "reference": {"synapse": REF_SYNAPSE},
        "rows": rows,
        "count_check": check,
    }
    if args.profile is not None:
        summary: list[str] = ["", "Server profile (py-spy, the gbmedia serve process only):"]
        for row in rows:
            path = args.profile / f"server-r{row['rate']:g}.txt"
            if path.exists():
                summary += profile_summary(path)
        result["profile_summary"] = summary
    return result


def main(argv: list[str] | None = None) -> int:
    """Run it, print the table (and the JSON with ``--json``); exit 1 without rows or on a count mismatch."""
    args = parse_args(argv)
    result = run_benchmark(
        args,
        "chat",
        "clients",
        (lambda: serve_clients(args.worker)) if args.worker is not None else None,
        lambda: orchestrate(args),
    )
    if isinstance(result, int):
        return result
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"\nJSON written to {args.json}")
    check = result.get("count_check")
    return 0 if result["rows"] and check and check["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
