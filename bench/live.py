#!/usr/bin/env python
"""Live benchmark: one WHIP publisher (720p VP8 ~1.5 Mbps) to as many WHEP viewers as one server holds.

The issue's scenario (a): one live publisher, N WebRTC viewers, one ``gbmedia serve``
process. The publisher is an aiortc encoder in this process that publishes over WHIP
(``POST /whip/{room}``) 1280x720 VP8 at 30 fps with the encoder pinned near the
bitrate (default 1.5 Mbps; the server's REMB cannot move it) and a fresh frame object
every time. Viewers play over WHEP (``POST /whep/{room}``) in worker processes and
count RTP packets and frames (marker bits) through
:func:`gbmedia.sfu.aiortc_adapter.tap_receiver`, never decoding. Everything else is
bench/forwarding.py's harness (snapshots, loss from sequence numbers, fps per viewer,
server CPU from /proc, runqueue wait, UDP drops).

N steps up through ``--viewers``; a step **holds** when every viewer joined, received
media, kept >= 29 distinct frames/s and loss stayed under 1%; it is **inconclusive**
when the publisher itself sent under 29 fps without loss (a busy machine starved its
encoder), and **fails** otherwise. The run stops after the first step that fails
(``--keep-going`` measures them all). It prints the
largest N held, the server's CPU at that N, and viewers per core: N divided by the
cores the server process used (LiveKit publishes about 200 viewers per vCPU for this
scenario), plus the estimate from the marginal CPU per viewer. It asserts nothing
about time: it is a measurement. On a shared machine, read the load it prints.

    .venv/bin/python bench/live.py --viewers 10,25,50,100,150,200 --seconds 15
    .venv/bin/python bench/live.py --smoke
"""

# ruff: noqa: ASYNC109 - a harness: explicit timeouts

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py and forwarding.py, also in workers

import aiohttp  # noqa: E402
import forwarding as fw  # noqa: E402
import harness  # noqa: E402
from aiortc import RTCRtpSender, RTCSessionDescription  # noqa: E402
from harness import BenchError, Server, cpu_seconds, fmt, tail  # noqa: E402

from gbmedia.sfu.aiortc_adapter import tap_receiver  # noqa: E402
from gbmedia.tenancy.tokens import Grants, mint_token  # noqa: E402

ROOM = "bench-live"
MAX_LOSS_PERCENT = 1.0
LIVEKIT_VIEWERS_PER_VCPU = 200  # LiveKit's published figure for this scenario
SDP = {"Content-Type": "application/sdp"}


# --- publisher (WHIP) ---------------------------------------------------------------------

class WhipPublisher(fw.Publisher):
    """bench/forwarding.py's publisher, at 720p, publishing over WHIP instead of the socket.

    It still opens a signaling socket (without joining) to ping the server all along:
    the reply time is the server's event-loop lag.
    """

    def __init__(self, bitrate: int, width: int, height: int) -> None:
        super().__init__(bitrate)
        self.track = fw.PlasmaVideoTrack(width, height)
        self.location = ""
        self.token = ""
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self, session: aiohttp.ClientSession, url: str, token: str, timeout: float) -> None:
        self.session, self.url, self.token = session, url, token
        self.signaling = fw.Signaling(await session.ws_connect(fw.ws_url(url)))
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                         if c.mimeType == "video/VP8"])
        self.sender = transceiver.sender
        self.sender._RTCRtpSender__encoder = self.encoder  # type: ignore[attr-defined]  # see forwarding.py
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with session.post(f"{url}/whip/{ROOM}", data=self.pc.localDescription.sdp,
                                headers={**SDP, "Authorization": f"Bearer {token}"}) as resp:
            if resp.status != 201:
                raise BenchError(f"WHIP publish: HTTP {resp.status}: {await resp.text()}")
            self.location = resp.headers["Location"]
            answer = await resp.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState == "failed" or time.monotonic() > deadline:
                raise BenchError(f"the publisher connection did not connect ({self.pc.connectionState})")
            await asyncio.sleep(0.05)
        self.track_id = self.location.rsplit("/", 1)[-1]
        self.start_pinging()
        self.watch_loop()

    async def close(self) -> None:
        self.closing = True
        for task in (self._pinger, self._watcher):
            if task is not None:
                task.cancel()
        if self.session is not None and self.location:
            with contextlib.suppress(Exception):
                async with self.session.delete(f"{self.url}{self.location}",
                                               headers={"Authorization": f"Bearer {self.token}"}):
                    pass
        if self.signaling is not None:
            await self.signaling.close()
        await self.pc.close()


# --- viewers (WHEP, in worker processes) -----------------------------------------------

class WhepViewer(fw.Subscriber):
    """One WHEP player that counts packets like forwarding.py's subscribers (no decoding)."""

    location = ""

    async def join(self) -> None:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        tap_receiver(transceiver.receiver, self._count)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._enlarge_receive_buffers()
        async with self.session.post(f"{self.url}/whep/{ROOM}", data=self.pc.localDescription.sdp,
                                     headers={**SDP, "Authorization": f"Bearer {self.token}"}) as resp:
            if resp.status != 201:
                raise BenchError(f"WHEP play: HTTP {resp.status}: {await resp.text()}")
            self.location = resp.headers["Location"]
            answer = await resp.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        if self.location:
            with contextlib.suppress(Exception):
                async with self.session.delete(f"{self.url}{self.location}",
                                               headers={"Authorization": f"Bearer {self.token}"}):
                    pass
        with contextlib.suppress(Exception):
            await self.pc.close()


async def worker_main() -> None:
    """A viewer worker: JSON commands on stdin, one JSON reply line each on stdout."""
    reply = harness.reply
    viewers: list[WhepViewer] = []
    async with aiohttp.ClientSession() as session:
        try:
            async for command in harness.commands():
                if command["cmd"] == "join":
                    viewers = [WhepViewer(session, command["url"], t) for t in command["tokens"]]
                    results = await asyncio.gather(*(v.join() for v in viewers), return_exceptions=True)
                    reply({"joined": sum(r is None for r in results),
                           "errors": [repr(r) for r in results if r is not None]})
                elif command["cmd"] == "snapshot":
                    reply({"t": time.monotonic(), "cpu": cpu_seconds(os.getpid()),
                           "udp_drops": fw.udp_drops(os.getpid()), "subs": [v.snapshot() for v in viewers]})
                elif command["cmd"] == "leave":
                    await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
                    viewers = []
                    reply({"left": True})
                    break
        finally:
            for v in viewers:
                with contextlib.suppress(Exception):
                    await v.close()


class Worker(harness.WorkerProcess):
    def __init__(self, index: int, tokens: list[str], log_path: Path, nice: int) -> None:
        super().__init__(index, log_path, nice, argv=[str(Path(__file__).resolve()), "--worker", "--nice", str(nice)],
                         what="viewer worker", stop_command="leave")
        self.tokens = tokens


# --- one step ---------------------------------------------------------------------------

def holds(row: dict[str, Any]) -> bool:
    return bool(row.get("kept_30_fps")) and row.get("loss_percent") is not None \
        and row["loss_percent"] < MAX_LOSS_PERCENT and row["subscribers_joined"] == row["subscribers"] \
        and row["subscribers_without_media"] == 0


def verdict(row: dict[str, Any]) -> str:
    """``holds``, ``fails``, or ``inconclusive`` when the publisher itself sent under 30 fps (a busy
    machine starves its encoder): then the viewers could not get 30 fps whatever the server did."""
    if holds(row):
        return "holds"
    if row["publisher_fps"] < fw.KEPT_FPS and (row.get("loss_percent") or 0) < MAX_LOSS_PERCENT:
        return "inconclusive"
    return "fails"


async def run_one(n: int, args: argparse.Namespace, server: Server, publisher: WhipPublisher, key: str,
                  secret: str, workdir: Path, live: list[Worker]) -> dict[str, Any]:
    grants = Grants(room=ROOM, can_subscribe=True)
    tokens = [mint_token(key, secret, f"viewer-{n}-{i}", grants) for i in range(n)]
    per = max(1, args.per_process)
    workers = [Worker(i, tokens[i * per:(i + 1) * per], workdir / f"worker-n{n}-{i}.log", args.nice)
               for i in range(math.ceil(n / per))]
    live.extend(workers)
    joining_since = time.monotonic()
    try:
        await asyncio.gather(*(w.start() for w in workers))
        results = await asyncio.gather(*(w.call({"cmd": "join", "url": server.url, "tokens": w.tokens},
                                                args.join_timeout) for w in workers))
        joined = sum(r["joined"] for r in results)
        errors = [e for r in results for e in r["errors"]]
        if errors:
            print(f"  N={n}: {len(errors)} viewers could not join: {errors[:3]}", file=sys.stderr)
        if joined == 0 and n:
            raise BenchError(f"no viewer could join at N={n}: {errors[:3]}")
        deadline = time.monotonic() + args.join_timeout
        while True:
            snap = await fw.snapshot(server, publisher, workers)
            waiting = [s for s in snap.subs if s["frames"] == 0]
            if not waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        if n and len(waiting) == len(snap.subs):
            raise BenchError(f"at N={n} no viewer received any media (publisher sent "
                             f"{snap.publisher['packets']} packets)")
        await asyncio.sleep(args.warmup)
        if not server.alive():
            raise BenchError(f"gbmedia serve died during warm-up; log:\n{tail(server.log_path)}")
        load_before = os.getloadavg()
        first = await fw.snapshot(server, publisher, workers)
        await asyncio.sleep(args.seconds)
        last = await fw.snapshot(server, publisher, workers)
        if not server.alive():
            raise BenchError(f"gbmedia serve died while measuring; log:\n{tail(server.log_path)}")
        row = fw.measure(n, first, last, joined, len(waiting), publisher, joining_since)
        row["viewers"] = n
        row["loadavg_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        row["holds"] = holds(row) if n else None
        row["verdict"] = verdict(row) if n else None
        return row
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for w in workers:
            live.remove(w)


async def create_tenant(session: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """An enterprise customer (1000 participants per room) and its instance: (key, secret)."""
    headers = {"Authorization": f"Bearer {harness.OPERATOR_TOKEN}"}
    async with session.post(f"{url}/api/v1/customers", json={"name": "bench-live", "tier": "enterprise"},
                            headers=headers) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the customer: HTTP {resp.status}: {await resp.text()}")
        customer = await resp.json()
    async with session.post(f"{url}/api/v1/customers/{customer['id']}/instances", json={"name": "bench-live"},
                            headers=headers) as resp:
        if resp.status != 201:
            raise BenchError(f"creating the instance: HTTP {resp.status}: {await resp.text()}")
        body = await resp.json()
    return body["credentials"]["key"], body["credentials"]["secret"]


# --- output -----------------------------------------------------------------------------

def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if "error" not in r and r["subscribers"] > 0]
    held = [r for r in measured if r["holds"]]
    best = max(held, key=lambda r: r["subscribers"]) if held else None
    result: dict[str, Any] = {"max_viewers_held": best["subscribers"] if best else 0}
    if best is not None:
        cores = best["server_cpu_percent"] / 100
        result["server_cpu_percent_at_max"] = round(best["server_cpu_percent"], 1)
        result["viewers_per_core_used"] = round(best["subscribers"] / cores, 1) if cores > 0 else None
    marginals = [r["marginal_ms_per_frame_per_subscriber"] for r in measured
                 if r.get("marginal_ms_per_frame_per_subscriber")]
    per_viewer = [r["server_cpu_percent"] / r["subscribers"] for r in measured if r["subscribers"]]
    if marginals:
        # One core is 1000 ms of CPU per second; a viewer costs (ms per frame) x fps of it.
        fps = measured[-1]["publisher_fps"] or 30.0
        result["viewers_per_core_from_marginal"] = round(1000 / (max(statistics_median(marginals), 1e-6) * fps), 1)
    if per_viewer:
        result["viewers_per_core_from_average"] = round(100 / min(per_viewer), 1)
    result["livekit_viewers_per_vcpu"] = LIVEKIT_VIEWERS_PER_VCPU
    return result


def statistics_median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, result: dict[str, Any]) -> None:
    print()
    print(f"gbmedia live: 1 WHIP publisher ({args.width}x{args.height} VP8, 30 fps, encoder fixed at "
          f"{args.bitrate / 1e6:.2f} Mbps) -> N WHEP viewers counting RTP without decoding; {args.seconds:.0f} s "
          f"window after {args.warmup:.0f} s warm-up; server CPU = utime+stime of the gbmedia process; "
          f"{os.cpu_count()} cores.")
    lines = [("N", "pub kbps", "pub fps", "fwd pkt/s", "srv CPU%", "us/pkt", "fps min", "loss %", "drops srv/sub",
              "ping ms max", "srv wait%", "viewers%", "machine busy%", "load 1m", "verdict")]
    for r in rows:
        lines.append((str(r["subscribers"]), fmt(r["publisher_kbps"], ".0f"), fmt(r["publisher_fps"], ".1f"),
                      fmt(r["forwarded_packets_per_s"], ".0f"), fmt(r["server_cpu_percent"], ".1f"),
                      fmt(r["server_us_per_packet"], ".1f"), fmt(r["fps_min"], ".1f"), fmt(r["loss_percent"], ".2f"),
                      f"{r['server_udp_drops']}/{r['subscriber_udp_drops']}", fmt(r["ping_ms_max"], ".0f"),
                      fmt(r["server_runqueue_wait_percent"], ".1f"), fmt(r["subscriber_workers_cpu_percent"], ".0f"),
                      fmt(r["machine_busy_percent"], ".0f"), "/".join(str(v) for v in r["loadavg_1m"]),
                      r["verdict"] if r["subscribers"] else "-"))
    harness.print_aligned(lines)
    print()
    print("holds: every viewer joined and received >= 29 distinct frames/s with < 1% loss; inconclusive: the "
          "publisher itself sent under 29 fps (its encoder starved), without loss; fails: otherwise.\n"
          "srv wait: time the server's threads were ready but waited for a CPU (a busy machine); machine busy: "
          "all cores, all processes; viewers%: the viewer workers' CPU.")
    print(f"Largest N held by one server process: {result['max_viewers_held']}"
          + (f" at {result['server_cpu_percent_at_max']}% of a core: {result['viewers_per_core_used']} viewers per "
             "core used" if result.get("viewers_per_core_used") else "")
          + (f"; from the marginal cost, {result['viewers_per_core_from_marginal']} viewers per core"
             if result.get("viewers_per_core_from_marginal") else "")
          + f". LiveKit publishes about {LIVEKIT_VIEWERS_PER_VCPU} viewers per vCPU for this scenario.")


# --- main -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", default="10,25,50,100,150,200,300",
                        help="comma-separated N values, ascending (default 10,25,50,100,150,200,300)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per N (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up per N before measuring (default 5)")
    parser.add_argument("--bitrate", type=int, default=1_500_000, help="publisher encoder bitrate (default 1.5e6)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--per-process", type=int, default=10, help="viewers per worker process (default 10)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the viewer workers (default 10)")
    parser.add_argument("--keep-going", action="store_true", help="measure every N even after one does not hold")
    parser.add_argument("--join-timeout", type=float, default=90.0)
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between steps (default 2)")
    parser.add_argument("--server-env", action="append", default=[], type=harness._env_pair, metavar="NAME=VALUE",
                        help="extra environment for gbmedia serve (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--smoke", action="store_true", help="quick check: N=2, 640x360, 4 s window, 2 s warm-up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.viewers, args.seconds, args.warmup, args.width, args.height = "2", 4.0, 2.0, 640, 360
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
    workdir = Path(tempfile.mkdtemp(prefix="gbmedia-bench-live-"))
    server = Server(workdir, args.startup_timeout, dict(args.server_env))
    live: list[Worker] = []
    publisher: WhipPublisher | None = None
    rows: list[dict[str, Any]] = []
    ok = False
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    load_at_start = os.getloadavg()
    try:
        print(f"starting gbmedia serve (data dir {server.data_dir}) ...", file=sys.stderr)
        await server.start()
        print(f"  listening on {server.url}, pid {server.pid}", file=sys.stderr)
        async with aiohttp.ClientSession() as session:
            key, secret = await create_tenant(session, server.url)
            publisher = WhipPublisher(args.bitrate, args.width, args.height)
            await publisher.start(session, server.url, mint_token(
                key, secret, "publisher", Grants(room=ROOM, can_publish=True)), args.join_timeout)
            print(f"  WHIP publisher connected ({publisher.location})", file=sys.stderr)
            await asyncio.sleep(min(args.warmup, 3.0))
            for n in args.counts:
                if publisher.pc.connectionState != "connected":
                    rows.append({"subscribers": n, "error": f"publisher {publisher.pc.connectionState}"})
                    break
                print(f"N={n}: joining, {args.warmup:.0f} s warm-up, {args.seconds:.0f} s window ...",
                      file=sys.stderr)
                try:
                    row = await run_one(n, args, server, publisher, key, secret, workdir, live)
                except BenchError as exc:
                    if not server.alive():
                        raise
                    print(f"  N={n} failed: {exc}", file=sys.stderr)
                    rows.append({"subscribers": n, "error": str(exc)})
                    if not args.keep_going:
                        break
                    continue
                rows.append(row)
                print(f"  N={n}: server {row['server_cpu_percent']:.1f}% CPU, publisher "
                      f"{row['publisher_fps']:.1f} fps, viewers fps min {fmt(row['fps_min'], '.1f')}, "
                      f"loss {fmt(row['loss_percent'], '.2f')}%: {row['verdict']}, machine "
                      f"{row['machine_busy_percent']:.0f}% busy, load {row['loadavg_1m']}", file=sys.stderr)
                if n and row["verdict"] == "fails" and not args.keep_going:
                    break
                await asyncio.sleep(args.pause)
            await publisher.close()
            publisher = None
        ok = True
    finally:
        for w in live:
            w.kill_now()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        rc = await server.stop()
        print(f"gbmedia serve stopped (exit status {rc})", file=sys.stderr)
        if args.keep or not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    measured = [r for r in rows if "error" not in r]
    fw.add_marginals(measured)
    import aiortc

    return {
        "benchmark": "live",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {"viewers": args.counts, "seconds": args.seconds, "warmup": args.warmup, "bitrate": args.bitrate,
                   "width": args.width, "height": args.height, "fps": 30, "codec": "VP8",
                   "per_process": args.per_process, "max_loss_percent": MAX_LOSS_PERCENT},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "aiortc": aiortc.__version__,
                    "platform": platform.platform(), "loadavg_at_start": [round(v, 2) for v in load_at_start]},
        "rows": rows,
        "summary": summary(rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = harness.run_benchmark(args, "live", "viewers", worker_main if args.worker else None,
                                   lambda: orchestrate(args))
    if isinstance(result, int):
        return result
    measured = [r for r in result["rows"] if "error" not in r]
    if measured:
        print_table(measured, args, result["summary"])
    for r in result["rows"]:
        if "error" in r:
            print(f"N={r['subscribers']}: not measured: {r['error']}")
    text = json.dumps(result, indent=2, default=float)
    print()
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if measured else 1


if __name__ == "__main__":
    raise SystemExit(main())
