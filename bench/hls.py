#!/usr/bin/env python
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

    .venv/bin/python bench/hls.py --players 10,50,100 --seconds 15
    .venv/bin/python bench/hls.py --smoke
"""



from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import av  # noqa: E402
import numpy as np  # noqa: E402
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_PTIME, VIDEO_TIME_BASE  # noqa: E402

from gbmedia.tenancy.tokens import Grants, mint_token  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/harness.py, also in the worker processes
import harness  # noqa: E402
from harness import BenchError, Server, fmt  # noqa: E402

ROOM = "bench-hls"
NO_STUN = RTCConfiguration(iceServers=[])
_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[0-9a-f]{8}-(\d+)\.(\d+)\.m4s"')
_PART = re.compile(r'#EXT-X-PART:[^\n]*URI="([^"]+)"')


# --- the publisher ------------------------------------------------------------------------

class MovingVideo(MediaStreamTrack):
    """640x480 at 30 fps, moving: three seconds of frames made once, in yuv420p, replayed in a loop (a
    fresh frame object every time: see the notes), so the publisher spends its CPU on encoding only."""

    kind = "video"
    LOOP = 90

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        # Gradients and a moving square: compressible like camera video (noise would make every
        # keyframe huge and measure the encoder instead of the packager).
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=-1).astype(np.uint8)
        self._frames = []
        for step in range(self.LOOP):
            image = np.roll(base, step * 7, axis=1)
            top, left = 100 + (step * 3) % 280, (step * 5) % 560
            image[top:top + 80, left:left + 80] = (255, 255, 255)
            rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
            self._frames.append(rgb.reformat(format="yuv420p").to_ndarray())

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += int(VIDEO_PTIME * VIDEO_CLOCK_RATE)
            wait = self._start + self._pts / VIDEO_CLOCK_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        index = (self._pts // int(VIDEO_PTIME * VIDEO_CLOCK_RATE)) % self.LOOP
        frame = av.VideoFrame.from_ndarray(self._frames[index], format="yuv420p")
        frame.pts, frame.time_base = self._pts, VIDEO_TIME_BASE
        return frame


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._samples / 48000 - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(960) + self._samples) / 48000
        samples = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._samples, fractions.Fraction(1, 48000)
        self._samples += 960
        return frame


async def publish(url: str, token: str, h264: bool) -> tuple[aiohttp.ClientSession, Any, RTCPeerConnection, Any]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url.replace("http", "ws", 1) + "/rtc")
    await ws.send_json({"type": "join", "token": token, "id": "j"})
    while (await ws.receive_json()).get("id") != "j":
        pass
    pc = RTCPeerConnection(NO_STUN)
    video = pc.addTransceiver(MovingVideo(), direction="sendonly")
    if h264:
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType == "video/H264"])
    pc.addTransceiver(Tone(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send_json({"type": "publish", "sdp": pc.localDescription.sdp, "tracks": {}, "id": "p"})
    while True:
        reply = await ws.receive_json()
        if reply.get("id") == "p":
            break
    if reply["type"] != "publish_answer":
        raise BenchError(f"publish refused: {reply}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    async def keep_reading() -> None:  # answers the server's heartbeats; a silent socket would be dropped
        async for _ in ws:
            pass

    return session, ws, pc, asyncio.ensure_future(keep_reading())


# --- players ------------------------------------------------------------------------------

class Stats:
    def __init__(self) -> None:
        self.window: tuple[float, float] = (math.inf, math.inf)
        self.requests = 0
        self.bytes = 0
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.media_ms: list[float] = []
        self.reload_ms: list[float] = []

    def record(self, started: float, ended: float, size: int, status: int, reload: bool) -> None:
        if not self.window[0] <= ended <= self.window[1]:
            return
        self.requests += 1
        self.bytes += size
        if status != 200:
            self.errors += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            return
        (self.reload_ms if reload else self.media_ms).append((ended - started) * 1000)


async def fetch(session: aiohttp.ClientSession, url: str, stats: Stats, *, reload: bool = False,
                params: dict[str, str] | None = None) -> tuple[int, bytes]:
    started = time.monotonic()
    try:
        async with session.get(url, params=params) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        stats.record(started, time.monotonic(), 0, 0, reload)
        return 0, b""
    stats.record(started, time.monotonic(), len(body), status, reload)
    return status, body


async def ll_player(session: aiohttp.ClientSession, base: str, stats: Stats, stop: asyncio.Event) -> None:
    """Like hls.js in low-latency mode: blocking reload for the hinted part, then the new parts."""
    fetched: set[str] = set()
    params: dict[str, str] | None = None
    while not stop.is_set():
        status, body = await fetch(session, base + "/live.m3u8", stats, reload=params is not None, params=params)
        if status != 200:
            await asyncio.sleep(0.2)
            params = None
            continue
        text = body.decode()
        new = [uri for uri in _PART.findall(text) if uri not in fetched]
        for uri in new[-4:] if not fetched else new:  # a fresh player starts near the edge
            fetched.add(uri)
            await fetch(session, f"{base}/{uri}", stats)
        hint = _HINT.search(text)
        params = {"_HLS_msn": hint[1], "_HLS_part": hint[2]} if hint else None


async def segment_player(session: aiohttp.ClientSession, base: str, stats: Stats, stop: asyncio.Event) -> None:
    """A player without LL-HLS: poll the playlist, fetch whole new segments."""
    fetched: set[str] = set()
    while not stop.is_set():
        status, body = await fetch(session, base + "/live.m3u8", stats)
        if status == 200:
            segments = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
            for uri in segments[-1:] if not fetched else segments:
                if uri not in fetched:
                    fetched.add(uri)
                    await fetch(session, f"{base}/{uri}", stats)
        await asyncio.sleep(1.0)


async def worker_main() -> None:
    stats = Stats()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    session: aiohttp.ClientSession | None = None
    publisher: Any = None
    async for command in harness.commands():
        cmd = command["cmd"]
        if cmd == "publish":
            publisher = await publish(command["url"], command["token"], command["h264"])
            harness.reply({"ok": True})
        elif cmd == "players":
            connector = aiohttp.TCPConnector(limit=0)
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
            player = ll_player if command["mode"] == "parts" else segment_player
            tasks = [asyncio.ensure_future(player(session, command["base"], stats, stop))
                     for _ in range(command["count"])]
            harness.reply({"ok": True})
        elif cmd == "window":
            now = time.monotonic()
            stats.window = (now + command["after"], now + command["after"] + command["seconds"])
            harness.reply({"ok": True})
        elif cmd == "report":
            harness.reply({"requests": stats.requests, "bytes": stats.bytes, "errors": stats.errors,
                           "statuses": stats.statuses,
                           "media_ms": stats.media_ms, "reload_ms": stats.reload_ms})
        elif cmd == "stop":
            stop.set()
            for task in tasks:
                task.cancel()
            if session is not None:
                await session.close()
            if publisher is not None:
                publisher[3].cancel()
                await publisher[2].close()
                await publisher[1].close()
                await publisher[0].close()
            harness.reply({"ok": True})
            return


class Worker(harness.WorkerProcess):
    def __init__(self, index: int, log_path: Path, nice: int) -> None:
        super().__init__(index, log_path, nice, argv=[__file__, "--worker", "--nice", str(nice)],
                         what="hls worker", stop_command="stop", limit=1 << 26)  # reports carry every latency


# --- the orchestrator ---------------------------------------------------------------------

async def wait_ready(session: aiohttp.ClientSession, base: str, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with session.get(base + "/live.m3u8") as resp:
            text = await resp.text()
            if resp.status == 200 and text.count("#EXTINF") >= 2:
                return
        await asyncio.sleep(0.5)
    raise BenchError(f"the live room's playlist never had two segments within {within:.0f} s")


async def hls_counters(url: str) -> dict[str, float]:
    """The node's gbmedia_hls_* counters: is the stream still produced, and whole?"""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return {line.split()[0]: float(line.split()[1]) for line in (await resp.text()).splitlines()
                if line.startswith("gbmedia_hls_") and line.split()[0].endswith("_total")}


async def run_step(players: int, args: argparse.Namespace, server: Server, base: str, workdir: Path,
                   step: int) -> dict[str, Any]:
    per = args.per_process
    workers = [Worker(step * 1000 + i, workdir / f"players-{players}-{i}.log", args.nice)
               for i in range(math.ceil(players / per))]
    try:
        for i, worker in enumerate(workers):
            await worker.start()
            await worker.call({"cmd": "players", "count": min(per, players - i * per), "base": base,
                               "mode": args.mode})
        await asyncio.gather(*(w.call({"cmd": "window", "after": args.warmup, "seconds": args.seconds})
                               for w in workers))
        await asyncio.sleep(args.warmup)
        cpu0, busy0, load0 = server.cpu(), harness.machine_busy(), os.getloadavg()[0]
        counters0 = await hls_counters(server.url)
        await asyncio.sleep(args.seconds)
        cpu1, busy1 = server.cpu(), harness.machine_busy()
        counters1 = await hls_counters(server.url)
        await asyncio.sleep(0.5)
        reports = await asyncio.gather(*(w.call({"cmd": "report"}, 120) for w in workers))
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    media = [v for r in reports for v in r["media_ms"]]
    reloads = [v for r in reports for v in r["reload_ms"]]
    requests = sum(r["requests"] for r in reports)
    return {
        "players": players, "mode": args.mode, "seconds": args.seconds,
        "requests_per_s": requests / args.seconds,
        "parts_produced_per_s": (counters1["gbmedia_hls_parts_total"] - counters0["gbmedia_hls_parts_total"])
        / args.seconds,
        "packets_lost": counters1["gbmedia_hls_packets_lost_total"] - counters0["gbmedia_hls_packets_lost_total"],
        "frames_dropped": counters1["gbmedia_hls_frames_dropped_total"]
        - counters0["gbmedia_hls_frames_dropped_total"],
        "bytes_per_s": sum(r["bytes"] for r in reports) / args.seconds,
        "errors": sum(r["errors"] for r in reports),
        "error_statuses": {k: sum(r["statuses"].get(k, 0) for r in reports) for r in reports for k in r["statuses"]},
        "media_p50_ms": harness.percentile(media, 50), "media_p99_ms": harness.percentile(media, 99),
        "reload_p50_ms": harness.percentile(reloads, 50), "reload_p99_ms": harness.percentile(reloads, 99),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / args.seconds,
        "server_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / requests if requests else None,
        "server_cpu_s": cpu1 - cpu0,
        "machine_busy_percent": 100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]),
        "load_average_1m": load0,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\nLL-HLS: {result['source']} 640x480@30 + Opus, mode {result['mode']}, {result['cpus']} CPUs, "
          f"idle server CPU {fmt(result['idle_server_cpu_percent'], '.1f')}% (packaging alone)")
    lines: list[tuple[str, ...]] = [("players", "parts/s made", "lost pkts", "dropped frames", "req/s", "MB/s",
                                     "errors", "media p50 ms", "p99",
                                     "reload p50 ms", "p99", "server CPU %", "CPU ms/req", "above idle",
                                     "machine busy %", "load 1m")]
    idle = result["idle_server_cpu_percent"]
    for s in result["steps"]:
        serving = (s["server_cpu_percent"] - idle) * 10 / s["requests_per_s"] if s["requests_per_s"] else None
        lines.append((str(s["players"]), fmt(s["parts_produced_per_s"], ".2f"), fmt(s["packets_lost"], ".0f"),
                      fmt(s["frames_dropped"], ".0f"), fmt(s["requests_per_s"], ".0f"),
                      fmt(s["bytes_per_s"] / 1e6, ".2f"),
                      str(s["errors"]), fmt(s["media_p50_ms"], ".1f"), fmt(s["media_p99_ms"], ".1f"),
                      fmt(s["reload_p50_ms"], ".0f"), fmt(s["reload_p99_ms"], ".0f"),
                      fmt(s["server_cpu_percent"], ".0f"), fmt(s["server_cpu_ms_per_request"], ".3f"),
                      fmt(serving, ".3f"), fmt(s["machine_busy_percent"], ".0f"), fmt(s["load_average_1m"], ".2f")))
    harness.print_aligned(lines)


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gbmedia-bench-hls-"))
    server = Server(workdir, args.startup_timeout, dict(args.server_env))
    publisher = Worker(0, workdir / "publisher.log", 0)
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            key, secret = await harness.create_tenant(session, server.url)
            admin = {"Authorization": "Bearer " + mint_token(key, secret, "bench-admin", Grants(room_admin=True))}
            async with session.post(f"{server.url}/api/v1/rooms", json={"name": ROOM, "kind": "live"},
                                    headers=admin) as resp:
                if resp.status != 201:
                    raise BenchError(f"creating the live room: HTTP {resp.status}: {await resp.text()}")
                room_id = (await resp.json())["id"]
            await publisher.start()
            await publisher.call({"cmd": "publish", "url": server.url, "h264": args.h264,
                                  "token": mint_token(key, secret, "host", Grants.participant(ROOM))})
            base = f"{server.url}/hls/{room_id}"
            await wait_ready(session, base, 60)
            cpu0 = server.cpu()
            await asyncio.sleep(5)
            idle = 100 * (server.cpu() - cpu0) / 5
            steps = []
            for i, players in enumerate(args.players):
                step = await run_step(players, args, server, base, workdir, i + 1)
                steps.append(step)
                print(f"  {players} players: {step['requests_per_s']:.0f} req/s, "
                      f"server CPU {step['server_cpu_percent']:.0f}%", file=sys.stderr)
    finally:
        await publisher.stop()
        await server.stop()
    result = {"source": "H.264 (remuxed)" if args.h264 else "VP8 (transcoded)", "mode": args.mode,
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "idle_server_cpu_percent": idle, "steps": steps}
    print_table(result)
    print(json.dumps(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", default="10,50,100",
                        type=lambda v: [int(x) for x in v.split(",")], help="K values, comma-separated")
    parser.add_argument("--per-process", type=int, default=50, help="players per worker process")
    parser.add_argument("--mode", choices=("parts", "segments"), default="parts")
    parser.add_argument("--h264", action="store_true", help="publish H.264 (remuxed) instead of VP8")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--nice", type=int, default=5, help="niceness of the player processes")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--server-env", action="append", default=[], type=harness._env_pair, metavar="NAME=VALUE")
    parser.add_argument("--smoke", action="store_true", help="a quick run: 5 players, 5 s")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.players, args.seconds, args.warmup = [5], 5.0, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcome = harness.run_benchmark(args, "LL-HLS", "players", worker_main if args.worker else None,
                                    lambda: orchestrate(args))
    return outcome if isinstance(outcome, int) else 0


if __name__ == "__main__":
    sys.exit(main())
