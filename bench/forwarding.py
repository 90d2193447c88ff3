"""Forwarding benchmark: one VP8 publisher, N subscribers, a real ``gbmedia serve`` (and Janus to compare).

The server runs as a child process (its own temporary data directory and embedded
PostgreSQL). One aiortc publisher in this process sends 640x480 VP8 at 30 fps with
the encoder pinned near 1 Mbps (the server's REMB cannot move it) and a fresh frame
object every time (aiortc encodes in a thread pool while the track makes the next
frame). Subscribers run in worker processes (``--per-process`` each),
join over ``/rtc`` with their own tokens, answer the server's offers and count RTP
packets and frames (marker bits) through :func:`gbmedia.sfu.aiortc_adapter.tap_receiver`:
they never decode. ``--servers gbmedia,gbmedia-python,janus`` runs the same load against
gbmedia's Python fan-out path and Janus 1.1.2 too (``bench.lib.janus``). The subscribers run
on a host of their own where one can be made (``--subscriber-host``, ``bench.lib.netns``: a
network namespace whose receive runs off the server's CPUs), so the server is not charged their
kernel's receive path as it is on loopback.

``--video 2160p`` publishes a 3840x2160 30 fps VP8 stream at 15-20 Mbps instead (issue 20's 4K
row): aiortc cannot encode that live, so ffmpeg encodes a 10 s clip once before the run (cached
in ``--cache-dir``, checked with ffprobe) and the publisher replays its packets at the clip's frame
rate without encoding (``bench.lib.clip``, ``bench.lib.media.ReplayVideoTrack``).

For every N the benchmark warms up, then measures over a window: the server
process's CPU time (utime + stime of all its threads, from /proc; the embedded
PostgreSQL is a separate process and is reported apart), the packets the publisher
sent, the server's own count of packets sent, and the packets and frames every
subscriber received. It prints tables and JSON. It asserts nothing about time: it
is a measurement.

    python -m bench.forwarding --subscribers 1,4,16,32 --seconds 15
    python -m bench.forwarding --servers gbmedia --video 2160p --subscribers 16 --seconds 8
    python -m bench.forwarding --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiortc

from bench.lib import clip, fanout, netns
from bench.lib.cli import add_server_options, cpu_list
from bench.lib.errors import BenchError
from bench.lib.fanout import add_marginals
from bench.lib.forwarding_report import (
    REF_JANUS_US_PER_PACKET,
    REF_TRANSCODE_MS_PER_FRAME,
    REF_TRANSCODE_MS_PER_FRAME_PER_SUB,
    add_server_count,
    good,
    print_comparison,
    print_table,
    profile_summary,
    summarize,
)
from bench.lib.janus import JANUS_BINARY
from bench.lib.netns import SubscriberHost
from bench.lib.proc import pin_process
from bench.lib.profile import finish_profiler, start_py_spy
from bench.lib.publisher import Publisher
from bench.lib.report import fmt, machine_info, print_json
from bench.lib.runner import cancel_on_sigterm, run_benchmark, workdir
from bench.lib.subscriber import POLL_MS, JanusSubscriber, Subscriber, serve_subscribers, socket_poller
from bench.lib.targets import TARGETS, Target
from bench.lib.workers import WorkerProcess, counting_worker, running

UPKEEP_SETTLE = 2.0  # seconds after muting before the upkeep window: the last packets are sent and read

# --- the subscriber workers ------------------------------------------------------------


def make_subscribers(session: aiohttp.ClientSession, command: dict[str, Any]) -> list[Subscriber]:
    """A worker's subscribers from its ``join`` command: Janus VideoRoom ones or gbmedia ``/rtc`` ones."""
    clear = command["clear"]
    poller = socket_poller(command.get("poll_ms", 0)) if clear else None
    if command.get("server") == "janus":
        return [
            JanusSubscriber(session, command["url"], command["room"], command["feed"], name, clear=clear, poller=poller)
            for name in command["names"]
        ]
    return [Subscriber(session, command["url"], t, clear=clear, poller=poller) for t in command["tokens"]]


def worker(index: int, log_path: Path, nice: int, clear: bool, host: SubscriberHost | None) -> WorkerProcess:
    """The orchestrator's handle on one subscriber worker process (inside the subscribers' host, if any)."""
    return counting_worker(
        index,
        log_path,
        nice,
        module="bench.forwarding",
        what="subscriber worker",
        flag="clear-subscribers",
        clear=clear,
        prefix=host.command() if host is not None else (),
    )


# --- one measurement ----------------------------------------------------------------


async def run_one(
    n: int,
    args: argparse.Namespace,
    target: Target,
    publisher: Publisher,
    workdir: Path,
    live: list[WorkerProcess],
    session: aiohttp.ClientSession,
) -> dict[str, Any]:
    """N subscribers join, receive, warm up; one window is measured; they leave."""
    server = target.server
    joins = [
        {**join, "clear": args.clear_subscribers, "poll_ms": args.poll_ms}
        for join in target.join_commands(n, max(1, args.per_process))
    ]
    logs = [workdir / f"{target.name}-worker-n{n}-{i}.log" for i in range(len(joins))]
    workers = [worker(i, log, args.nice, args.clear_subscribers, args.subscribers_in) for i, log in enumerate(logs)]
    async with running(workers, live):
        joining_since = time.monotonic()
        joined = await fanout.join(n, workers, joins, args.join_timeout, "subscriber")
        snap, waiting = await fanout.wait_for_media(n, server, publisher, workers, args.join_timeout, "subscriber")
        await asyncio.sleep(args.warmup)
        server.ensure_alive("during warm-up")
        profiler = await start_profiler(args, target, n)
        # The server's own count of packets sent, read just outside the CPU window (the reading costs the
        # server a little CPU: Janus answers an admin request per subscriber).
        sent_a = await server_count(target, session, snap.subs)
        first = await fanout.snapshot(server, publisher, workers, args.subscribers_in)
        await asyncio.sleep(args.seconds)
        last = await fanout.snapshot(server, publisher, workers, args.subscribers_in)
        sent_b = await server_count(target, session, last.subs)
        if profiler is not None:
            await finish_profiler(profiler)
        server.ensure_alive("while measuring")
        row = fanout.measure(n, first, last, joined, len(waiting), publisher, joining_since)
        add_server_count(row, sent_a, sent_b)
        row["server"] = target.name
        if args.upkeep and n and publisher.can_mute:
            row["upkeep_cpu_percent"], row["upkeep_runs_per_s"] = await measure_upkeep(server, publisher, args.upkeep)
        row["rtx_payload_types_removed"] = sum(sb.get("rtx_removed", 0) for sb in last.subs)
        return row


async def measure_upkeep(server: Any, publisher: Publisher, seconds: float) -> tuple[float, float]:
    """The server's CPU (% of a core) with the subscribers still joined and nothing forwarded: the publisher's
    track muted on the server (it still receives it). Against the N=0 row that is what each subscriber
    costs per second besides forwarding: sender reports, consent checks, its RTCP, quality sampling.
    Also how often per second its threads were put on a CPU (each wake-up costs CPU of its own)."""
    await publisher.mute(True)
    try:
        await asyncio.sleep(UPKEEP_SETTLE)
        cpu, runs, started = server.cpu(), server.runs(), time.monotonic()
        await asyncio.sleep(seconds)
        window = time.monotonic() - started
        return (server.cpu() - cpu) / window * 100, (server.runs() - runs) / window
    finally:
        await publisher.mute(False)


def add_upkeep(rows: list[dict[str, Any]]) -> None:
    """Per row with an upkeep window: µs of server CPU per subscriber and second, against the N=0 row."""
    base = next((r for r in rows if r["subscribers"] == 0), None)
    for row in rows:
        upkeep = row.get("upkeep_cpu_percent")
        if upkeep is not None and base is not None and row["subscribers"]:
            row["upkeep_us_per_subscriber_s"] = (upkeep - base["server_cpu_percent"]) * 1e4 / row["subscribers"]


async def server_count(
    target: Target, session: aiohttp.ClientSession, subs: list[dict[str, Any]]
) -> tuple[float, int] | None:
    """(when, packets) of the server's own sent-packet counter; None where it could not be read."""
    started = time.monotonic()
    try:
        count = await asyncio.wait_for(target.sent_packets(session, subs), 30)
    except (BenchError, aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        print(f"  {target.name}: its sent-packet count could not be read: {exc!r}", file=sys.stderr)
        return None
    return (started + time.monotonic()) / 2, count


async def start_profiler(args: argparse.Namespace, target: Target, n: int) -> Any:
    """py-spy on gbmedia for the window (``--profile DIR``), collapsed stacks per N (Janus is C: not profiled)."""
    if args.profile is None or target.name != "gbmedia":
        return None
    return await start_py_spy(
        target.server.pid, args.profile / f"server-n{n}.txt", args.seconds, ["--nonblocking", "--threads"]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--smoke`` shrinks the run to N=1 and a 5 s window, without the N=0 baseline."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        default="gbmedia",
        help="comma-separated servers to measure one after the other: gbmedia (its native fan-out), "
        "gbmedia-python (its Python path), janus (default gbmedia; gbmedia,gbmedia-python,janus for the "
        "comparison)",
    )
    parser.add_argument("--subscribers", default="1,4,16,32", help="comma-separated N values (default 1,4,16,32)")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="after the last N, go on by --step while the server holds 30 fps at < 1%% loss",
    )
    parser.add_argument("--step", type=int, default=32, help="N step for --extend (default 32)")
    parser.add_argument("--max-subscribers", type=int, default=256, help="the largest N --extend tries (default 256)")
    parser.add_argument(
        "--janus-ip",
        help="the IPv4 address Janus gathers ICE candidates on (default: the "
        "machine's own, the source address of its default route; not loopback: aioice skips it)",
    )
    parser.add_argument(
        "--pin-server",
        type=cpu_list,
        metavar="CPUS",
        help="pin the server (every thread; both servers alike) to these CPUs, e.g. 1 or 0-1; "
        "the publisher and the subscribers stay free (default: not pinned)",
    )
    parser.add_argument("--janus-binary", default=JANUS_BINARY, help="default /usr/bin/janus")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per N (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up per N before measuring (default 5)")
    parser.add_argument(
        "--bitrate", type=int, default=1_000_000, help="publisher encoder bitrate (default 1e6; vga only)"
    )
    parser.add_argument(
        "--video",
        choices=list(clip.VIDEOS),
        default="vga",
        help="what the publisher sends: vga, 640x480 VP8 encoded live at --bitrate (default); 2160p, a "
        "3840x2160 30 fps VP8 clip at about 18 Mbps, encoded once with ffmpeg and replayed at its real rate",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=clip.default_cache_dir(),
        help="where the 2160p clip is kept between runs, named by its parameters (default ~/.cache/gbmedia-bench)",
    )
    parser.add_argument("--per-process", type=int, default=8, help="subscribers per worker process (default 8)")
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_MS,
        help=f"clear subscribers read their sockets every this many ms instead of being woken by each datagram "
        f"(default {POLL_MS:g}: on one machine a subscriber woken by the server's send costs the server's CPU, "
        "which a server sending to other machines does not pay; bench/lib/subscriber.py, SocketPoller); "
        "0: woken by each as before",
    )
    netns.add_host_option(
        parser,
        "--subscriber-host",
        "the subscribers",
        "on one machine the kernel otherwise charges each subscriber's receive path to the server's send, "
        "which a server sending to other machines does not pay; the server listens on the pair's address",
    )
    parser.add_argument(
        "--clear-subscribers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subscribers count packets from their clear RTP headers, many per read, without decrypting "
        "(default on: a few microseconds a packet, so the machine can offer hundreds of them; the KF rcvd "
        "column then stays 0, keyframes being inside the encrypted payload); --no-clear-subscribers: "
        "aiortc decrypts and parses every packet as before",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="niceness of the subscriber workers (default 10): on a small machine the subscribers "
        "must not starve the server they measure; 0 to run them at the server's priority",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure N=0 (publisher only) first, for marginal figures at the first N "
        "(default on, off with --smoke)",
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        help="seconds for subscribers to join and receive a first frame (default 60)",
    )
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between rows (default 2)")
    parser.add_argument(
        "--upkeep",
        type=float,
        default=0.0,
        help="after each window, this many seconds more with the publisher muted on the server (gbmedia only): "
        "the CPU the joined subscribers cost without forwarding, per subscriber and second (default 0: off)",
    )
    add_server_options(
        parser,
        startup_timeout=90.0,
        server_env_help="extra environment for gbmedia serve (repeatable), e.g. GBMEDIA_UDP_PORTS=40000-40999",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy during each window into this "
        "folder (collapsed stacks, server-nN.txt); adds a little CPU load to the machine",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--smoke", action="store_true", help="quick check: N=1, 3 s window, 1.5 s warm-up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.subscribers, args.seconds, args.warmup, args.pause = "1", 3.0, 1.5, 0.0
        args.baseline = False if args.baseline is None else args.baseline
    if args.baseline is None:
        args.baseline = True
    try:
        args.counts = [int(v) for v in args.subscribers.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--subscribers takes integers separated by commas, not {args.subscribers!r}")
    if not args.counts or any(n < 0 for n in args.counts):
        parser.error("--subscribers needs at least one N >= 0")
    args.counts = sorted(set(args.counts))  # marginals are against the row above
    args.servers = [v.strip() for v in args.servers.split(",") if v.strip()]
    unknown = [v for v in args.servers if v not in TARGETS]
    if not args.servers or unknown or len(set(args.servers)) != len(args.servers):
        parser.error(f"--servers takes {', '.join(TARGETS)}, each once, not {','.join(args.servers)!r}")
    if args.step < 1:
        parser.error("--step must be >= 1")
    if args.baseline and 0 not in args.counts:
        args.counts = [0, *args.counts]
    args.fps_label = "30 fps"
    args.clip = args.clip_info = None  # set by prepare_video (2160p)
    args.subscribers_in = args.server_address = None  # set in orchestrate (--subscriber-host)
    return args


def subscribers_where(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[SubscriberHost | None]:
    """The subscribers' host for ``--subscriber-host``: a namespace, or None for this host (loopback)."""
    return netns.host_for(args.subscriber_host, "subscribers", args.pin_server or ())


def prepare_video(args: argparse.Namespace) -> None:
    """For a clip video (2160p): the clip from the cache, encoded first where missing, its probe printed;
    ``args.clip`` then names the file the publishers replay. Nothing to do for vga (encoded live)."""
    spec = clip.VIDEOS[args.video]
    if spec is None:
        return
    print(f"[clip] {spec.key()} in {args.cache_dir} ...", file=sys.stderr)
    t0 = time.monotonic()
    info, encoded = clip.ensure_clip(spec, args.cache_dir)
    how = f"encoded in {time.monotonic() - t0:.1f} s" if encoded else "cached"
    print(f"  {how}: {clip.describe(info)}", file=sys.stderr)
    args.clip, args.clip_info = info.path, info


async def measure_server(
    target: Target, args: argparse.Namespace, workdir: Path, session: aiohttp.ClientSession, live: list[WorkerProcess]
) -> list[dict[str, Any]]:
    """Every N against one server, with its own publisher; the server is started and stopped here."""
    rows: list[dict[str, Any]] = []
    publisher: Publisher | None = None
    server = target.server
    try:
        print(f"[{target.name}] starting ...", file=sys.stderr)
        t0 = time.monotonic()
        described = await target.start(session)
        print(f"  {described}, up after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        if args.pin_server:
            threads = pin_process(server.pid, args.pin_server)
            print(
                f"  pinned its {threads} threads to CPU {','.join(map(str, sorted(args.pin_server)))}", file=sys.stderr
            )
        publisher = await target.publish(session, args)
        print(f"  publisher connected, track {publisher.track_id}", file=sys.stderr)
        await asyncio.sleep(min(args.warmup, 3.0))
        counts = list(args.counts)
        index = 0
        while index < len(counts):
            n = counts[index]
            index += 1
            if publisher.pc.connectionState != "connected":
                reason = (
                    f"the publisher's connection is {publisher.pc.connectionState} before N={n} "
                    f"(state changes: {publisher.state_log()}); stopping here"
                )
                print(f"  {reason}", file=sys.stderr)
                rows.append({"server": target.name, "subscribers": n, "error": reason})
                break
            print(
                f"[{target.name}] N={n}: joining, {args.warmup:.0f} s warm-up, {args.seconds:.0f} s window ...",
                file=sys.stderr,
            )
            try:
                row = await run_one(n, args, target, publisher, workdir, live, session)
            except BenchError as exc:
                if not server.alive():
                    raise
                print(f"  N={n} failed: {exc}", file=sys.stderr)
                rows.append({"server": target.name, "subscribers": n, "error": str(exc)})
                continue
            rows.append(row)
            print(
                f"  [{target.name}] N={n}: {row['forwarded_packets_per_s']:.0f} packets/s forwarded, "
                f"{row['server_cpu_percent']:.1f}% CPU, fps min {fmt(row['fps_min'], '.1f')}, loss "
                f"{fmt(row['loss_percent'], '.2f')}%, machine {row['machine_busy_percent']:.0f}% busy"
                + (f"; muted {row['upkeep_cpu_percent']:.1f}% CPU" if "upkeep_cpu_percent" in row else ""),
                file=sys.stderr,
            )
            if index == len(counts) and args.extend and n and good(row) and n + args.step <= args.max_subscribers:
                counts.append(n + args.step)  # it held: one step further
            await asyncio.sleep(args.pause)
    finally:
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        with contextlib.suppress(Exception):
            await target.close()
        rc = await server.stop()
        print(f"[{target.name}] stopped (exit status {rc})", file=sys.stderr)
    return rows


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Each server in turn, every N; the result with the rows, their marginals and the summary."""
    live: list[WorkerProcess] = []
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    cancel_on_sigterm()
    load_before = os.getloadavg()
    await asyncio.to_thread(prepare_video, args)
    with workdir("gbmedia-bench-", args.keep) as tmp:
        try:
            async with aiohttp.ClientSession() as session, subscribers_where(args) as host:
                args.subscribers_in, args.server_address = host, host.server_address if host else None
                if host is not None:
                    print(f"[subscribers] in {host.describe()}", file=sys.stderr)
                for name in args.servers:
                    target = TARGETS[name](args, tmp / name)
                    targets.append(target)
                    try:
                        rows.extend(await measure_server(target, args, tmp, session, live))
                    finally:
                        for w in live:
                            w.kill_now()
                        live.clear()
                    await asyncio.sleep(args.pause)
        finally:
            for w in live:
                w.kill_now()
            for target in targets:
                target.server.kill_now()
    for name in args.servers:
        add_marginals([r for r in rows if r.get("server") == name and "error" not in r])
        add_upkeep([r for r in rows if r.get("server") == name and "error" not in r])
    return {
        "benchmark": "forwarding",
        "config": {
            "servers": args.servers,
            "subscribers": args.counts,
            "seconds": args.seconds,
            "warmup": args.warmup,
            **video_config(args),
            "per_process": args.per_process,
            "clear_subscribers": args.clear_subscribers,
            "poll_ms": args.poll_ms if args.clear_subscribers else None,
            "subscriber_host": "netns" if args.server_address else "local",
            "extend": args.extend,
            "pin_server": sorted(args.pin_server) if args.pin_server else None,
            "upkeep": args.upkeep,
        },
        "machine": machine_info(aiortc=aiortc.__version__, loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "reference": {
            "transcode_ms_per_frame_per_subscriber": REF_TRANSCODE_MS_PER_FRAME_PER_SUB,
            "transcode_ms_per_frame": REF_TRANSCODE_MS_PER_FRAME,
            "janus_us_per_packet": REF_JANUS_US_PER_PACKET,
        },
        "rows": rows,
        "summary": summarize(rows, args.servers),
    }


def video_config(args: argparse.Namespace) -> dict[str, Any]:
    """The published stream in the JSON ``config``: size and bitrate as encoded live (vga), or as ffprobe
    measured the replayed clip (2160p, with the clip's details)."""
    info: clip.ClipInfo | None = args.clip_info
    if info is None:
        return {"video": args.video, "bitrate": args.bitrate, "width": 640, "height": 480, "fps": 30, "codec": "VP8"}
    return {
        "video": args.video,
        "bitrate": round(info.bitrate),
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "codec": info.codec.upper(),
        "clip": info.as_json(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run it, print the tables and the JSON; exit 1 when no N was measured."""
    args = parse_args(argv)
    result = run_benchmark(
        args,
        "forwarding",
        "subscribers",
        (lambda: serve_subscribers(make_subscribers)) if args.worker else None,
        lambda: orchestrate(args),
        # Clear subscribers drain their sockets themselves, which uvloop's UDP transports do not allow.
        use_uvloop=not (args.worker and args.clear_subscribers),
    )
    if isinstance(result, int):
        return result
    measured = [r for r in result["rows"] if "error" not in r]
    for name in args.servers:
        mine = [r for r in measured if r["server"] == name]
        if mine:
            print_table(mine, args, name)
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['server']} N={r['subscribers']}: not measured: {r['error']}")
    if measured:
        print_comparison(result)
    if args.profile is not None and "gbmedia" in args.servers:
        print()
        for r in measured:
            if r["server"] == "gbmedia":
                summary = profile_summary(args.profile / f"server-n{r['subscribers']}.txt")
                result.setdefault("profile", {})[str(r["subscribers"])] = summary
                print("\n".join(summary))
    print_json(result, args.json)
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
