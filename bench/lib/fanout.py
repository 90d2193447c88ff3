"""One publisher, N receivers in worker processes: joining them, snapshots, and one window's figures.

The forwarding and live benchmarks measure the same thing through different signaling:
what one server process spends to send one stream to N receivers, and whether every
receiver kept the frame rate. A window is two snapshots: the server's CPU (all threads,
/proc), its runqueue wait and UDP sockets, the publisher's counters, and every
receiver's counts; ``measure`` turns two into one row.
"""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.lib.errors import BenchError
from bench.lib.netns import SubscriberHost
from bench.lib.proc import ServerReading, read_server, udp_sockets
from bench.lib.publisher import Publisher
from bench.lib.server import ChildServer
from bench.lib.workers import WorkerProcess

KEPT_FPS = 29.0  # "kept 30 fps": every receiver got at least this many distinct frames/s
LOSS_LIMIT_PERCENT = 1.0  # the bar: 30 fps at < 1% loss


@dataclass
class Snapshot(ServerReading):
    """Everything read at one moment: the server's, the publisher's and every worker's counters."""

    server_udp_drops: int
    server_udp_queued: int
    link_drops: int  # datagrams the link to the subscribers' host dropped (bench.lib.netns; 0 on loopback)
    postgres_cpu: float
    publisher: dict[str, float]
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def subs(self) -> list[dict[str, Any]]:
        return [s for w in self.workers for s in w["subs"]]


async def snapshot(
    server: ChildServer, publisher: Publisher, workers: Sequence[WorkerProcess], host: SubscriberHost | None = None
) -> Snapshot:
    """The workers are asked first and read while the server's own figures are taken, so they line up;
    ``host``: the subscribers' namespace, whose link's drops are read too."""
    replies = asyncio.gather(*(w.call({"cmd": "snapshot"}, 30) for w in workers))
    pids = server.pids()
    sockets = [udp_sockets(pid) for pid in pids]
    drops, queued = sum(d for d, _ in sockets), sum(q for _, q in sockets)
    snap = Snapshot(
        **read_server(pids),
        server_udp_drops=drops,
        server_udp_queued=queued,
        link_drops=await host.link_drops() if host is not None else 0,
        postgres_cpu=server.postgres_cpu(),
        publisher=await publisher.counters(),
    )
    snap.workers = list(await replies)
    return snap


async def join(
    n: int, workers: Sequence[WorkerProcess], commands: Sequence[dict[str, Any]], timeout: float, what: str
) -> int:
    """Start the workers and send each its ``join`` command: how many joined (those that could not are named
    on stderr; none at all raises)."""
    await asyncio.gather(*(w.start() for w in workers))
    results = await asyncio.gather(*(w.call(c, timeout) for w, c in zip(workers, commands, strict=True)))
    joined = sum(r["joined"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    if errors:
        print(f"  N={n}: {len(errors)} {what}s could not join: {errors[:3]}", file=sys.stderr)
    if joined == 0 and n:
        raise BenchError(f"no {what} could join at N={n}: {errors[:3]}")
    return joined


async def wait_for_media(
    n: int,
    server: ChildServer,
    publisher: Publisher,
    workers: Sequence[WorkerProcess],
    timeout: float,
    what: str,
) -> tuple[Snapshot, list[dict[str, Any]]]:
    """Until every joined receiver has a frame (or ``timeout`` s pass): the last snapshot and those still
    waiting (named on stderr; all of them raises)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = await snapshot(server, publisher, workers)
        waiting = [s for s in snap.subs if s["frames"] == 0]
        if not waiting or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    if waiting:
        print(
            f"  N={n}: {len(waiting)} of {len(snap.subs)} {what}s received no frame within "
            f"{timeout:.0f} s; states {sorted({s['state'] for s in waiting})}; "
            f"errors {[e for s in waiting for e in s['errors']][:3]}",
            file=sys.stderr,
        )
    if n and len(waiting) == len(snap.subs):
        raise BenchError(
            f"at N={n} no {what} received any media from the server "
            f"(publisher sent {snap.publisher['packets']} packets)"
        )
    return snap, waiting


def measure(
    n: int,
    a: Snapshot,
    b: Snapshot,
    joined: int,
    not_receiving: int,
    publisher: Publisher,
    joining_since: float,
) -> dict[str, Any]:
    """One row of figures from the window between snapshots ``a`` and ``b``."""
    window = b.t - a.t
    fps: list[float] = []
    missing = expected = received = duplicates = frames = keyframes = 0
    for wa, wb in zip(a.workers, b.workers, strict=True):
        span = wb["t"] - wa["t"]
        for sa, sb in zip(wa["subs"], wb["subs"], strict=True):
            got = sb["unique"] - sa["unique"]
            want = (sb["ext_seq"] - sa["ext_seq"]) if sa["ext_seq"] is not None and sb["ext_seq"] is not None else got
            received += sb["packets"] - sa["packets"]
            duplicates += sb["duplicates"] - sa["duplicates"]
            expected += want
            missing += max(0, want - got)
            frames += sb["frames"] - sa["frames"]
            keyframes += sb["keyframes"] - sa["keyframes"]
            fps.append((sb["frames"] - sa["frames"]) / span if span > 0 else 0.0)
    pub_packets = b.publisher["packets"] - a.publisher["packets"]
    pub_frames = b.publisher["frames"] - a.publisher["frames"]
    server_cpu = b.server_cpu - a.server_cpu
    busy = (b.machine[0] - a.machine[0]) / max(1.0, b.machine[1] - a.machine[1])
    worker_cpu = sum(wb["cpu"] - wa["cpu"] for wa, wb in zip(a.workers, b.workers, strict=True))
    row: dict[str, Any] = {
        "subscribers": n,
        "subscribers_joined": joined,
        "subscribers_without_media": not_receiving,
        "window_s": round(window, 3),
        "publisher_packets_per_s": pub_packets / window,
        "publisher_fps": pub_frames / window,
        "publisher_kbps": (b.publisher["bytes"] - a.publisher["bytes"]) * 8 / window / 1000,
        "publisher_forced_keyframes": b.publisher["forced_keyframes"] - a.publisher["forced_keyframes"],
        "forwarded_packets_per_s": received / window,
        "forwarded_frames_per_s": frames / window,
        "duplicates_received": duplicates,
        "publisher_state": b.publisher["state"],
        "keyframes_received": keyframes,
        "server_cpu_s": server_cpu,
        "server_cpu_percent": 100 * server_cpu / window,
        "server_sys_percent": 100 * (b.server_sys - a.server_sys) / window,
        "server_runqueue_wait_percent": 100 * (b.server_wait - a.server_wait) / window,
        "server_runs_per_s": (b.server_runs - a.server_runs) / window,
        "server_udp_drops": b.server_udp_drops - a.server_udp_drops,
        "link_drops": b.link_drops - a.link_drops,
        "server_udp_queued_kb_end": b.server_udp_queued / 1024,
        "subscriber_udp_queued_kb_end": sum(w.get("udp_queued", 0) for w in b.workers) / 1024,
        "subscriber_udp_drops": sum(
            wb["udp_drops"] - wa["udp_drops"] for wa, wb in zip(a.workers, b.workers, strict=True)
        ),
        "server_cpu_s_per_1000_packets": (server_cpu / (received / 1000)) if received else None,
        "server_us_per_packet": (server_cpu / received * 1e6) if received else None,
        "server_ms_per_frame_per_subscriber": (server_cpu / (n * pub_frames) * 1000) if n and pub_frames else None,
        "postgres_cpu_percent": 100 * (b.postgres_cpu - a.postgres_cpu) / window,
        "publisher_process_cpu_percent": 100 * (b.orchestrator_cpu - a.orchestrator_cpu) / window,
        "subscriber_workers_cpu_percent": 100 * worker_cpu / window,
        "machine_busy_percent": 100 * busy,  # of all cores together
        "fps_min": min(fps) if fps else None,
        "fps_median": statistics.median(fps) if fps else None,
        "fps_max": max(fps) if fps else None,
        "loss_percent": (100 * missing / expected) if expected else None,
        "kept_30_fps": (len(fps) == n and min(fps) >= KEPT_FPS) if n else None,
    }
    row["ping_ms_median"], row["ping_ms_max"] = publisher.ping_ms(a.t, b.t)
    row["join_ping_ms_max"] = publisher.ping_ms(joining_since, a.t)[1]
    row["publisher_loop_lag_ms_max"] = publisher.lag_ms_max(a.t, b.t)
    return row


def add_marginals(rows: list[dict[str, Any]]) -> None:
    """Each row's cost against the row above (rows ascending by N): µs per extra packet, ms per extra
    subscriber and frame. The first row's are None."""
    previous = None
    for row in rows:
        row["marginal_us_per_packet"] = None
        row["marginal_ms_per_frame_per_subscriber"] = None
        if previous is not None:
            d_cpu = row["server_cpu_s"] / row["window_s"] - previous["server_cpu_s"] / previous["window_s"]
            d_pkts = row["forwarded_packets_per_s"] - previous["forwarded_packets_per_s"]
            d_subs = row["subscribers"] - previous["subscribers"]
            if d_pkts > 0:
                row["marginal_us_per_packet"] = d_cpu / d_pkts * 1e6
            if d_subs > 0 and row["publisher_fps"] > 0:
                row["marginal_ms_per_frame_per_subscriber"] = d_cpu / (d_subs * row["publisher_fps"]) * 1000
        previous = row
