"""The native fan-out on its own: what one forwarded packet costs with nothing around it.

``bench.forwarding`` measures a whole ``gbmedia serve``: the native fan-out
(gbmedia/sfu/_fanout.c), and also the publisher's receive path, aiortc's RTCP per
subscriber, ICE consent, stats. This one drives ``_fanout.forward`` directly, from
one thread, with N downlinks (real SRTP sessions, libsrtp as the node uses it) to N
UDP sockets a receiver process drains, and splits the thread's CPU per datagram into
user time (header rewrite, SRTP, the C loop) and system time (the kernel's UDP send;
on loopback the receive side's delivery and wake-ups are charged to the sender too).
That system time is the floor of any server forwarding on this machine, C or Python.

By default (``--receivers auto``) the receivers live in a network namespace of their own where
one can be made (``bench.lib.netns``, as ``bench.forwarding``'s subscribers): their kernel's
receive path then runs in that namespace's own thread, not in the sender's system call, and the
system time is the send path alone. ``--receivers local`` keeps them on loopback; ``--pin`` keeps
the sending thread on some CPUs (and the namespace's receive thread off them).

    python -m bench.fanout_floor --subscribers 32,128,512 --seconds 5 --pin 1
    python -m bench.fanout_floor --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import selectors
import socket
import sys
import time
from typing import Any

from bench.lib import netns
from bench.lib.cli import cpu_list
from bench.lib.netns import SubscriberHost
from bench.lib.report import col, machine_info, print_aligned, print_json, table
from gbmedia.sfu import fanout

PROFILES = {"aes-gcm": (7, 28), "aes-cm-sha1-80": (1, 30)}  # libsrtp profile number, key + salt bytes


def receive(n: int, host: str, conn: multiprocessing.connection.Connection, namespace: str | None = None) -> None:
    """The receiver process: N sockets (in ``namespace``, if any), drained as they become readable, until told
    to stop; then the count."""
    if namespace is not None:
        netns.enter(namespace)
    sockets = []
    selector = selectors.DefaultSelector()
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
    conn.send([s.getsockname()[1] for s in sockets])
    received = 0
    while not conn.poll():
        for key, _ in selector.select(timeout=0.05):
            received += drain(key.fileobj, 64)  # type: ignore[arg-type]
    conn.send(received + sum(drain(sock) for sock in sockets))  # and what is still queued


def drain(sock: socket.socket, most: int = 1 << 30) -> int:
    """Read up to ``most`` datagrams without waiting; how many were read."""
    count = 0
    while count < most:
        try:
            sock.recv(2048)
        except BlockingIOError:
            break
        count += 1
    return count


def thread_cpu() -> tuple[float, float]:
    """This thread's user and system CPU seconds: the total is exact (the scheduler's runtime), the
    split between the two follows the clock-tick samples (getrusage(RUSAGE_THREAD))."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def measure(n: int, args: argparse.Namespace, host: SubscriberHost | None = None) -> dict[str, Any]:
    """One N: a receiver process (in ``host``'s namespace, else on ``--host``), N downlinks, ``--rate``
    incoming packets/s for ``--seconds``."""
    native = fanout.native
    assert native is not None
    if args.pin:
        os.sched_setaffinity(0, args.pin)  # this thread
    there, here = (host.address, host.server_address) if host is not None else (args.host, args.host)
    parent, child = multiprocessing.Pipe()
    receiver = multiprocessing.Process(
        target=receive, args=(n, there, child, host.name if host is not None else None), daemon=True
    )
    receiver.start()
    ports = parent.recv()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((here, 0))
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sender.setblocking(False)
    profile, key_length = PROFILES[args.profile]
    links = []
    for port in ports:
        link = native.Downlink(0, 0, 3000)
        link.configure(
            native.Session(os.urandom(key_length), profile),
            native.address(there, port),
            sender.fileno(),
            96,
            1234,
            0,
        )
        link.layer = 0
        links.append(link)
    body = os.urandom(args.size - 12)
    blocks = (b"",)
    interval = 1.0 / args.rate
    sent = dropped = 0
    seq = 0
    user0, sys0 = thread_cpu()
    wall0 = time.perf_counter()
    deadline = wall0 + args.seconds
    next_at = wall0
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        if now < next_at:
            time.sleep(next_at - now)
            continue
        next_at += interval
        forwarded, _, lost = native.forward(
            links, 0, 99, seq & 0xFFFF, seq * 3000, seq % 10 == 9, False, body, blocks, len(body), 0
        )
        sent += forwarded - lost
        dropped += lost
        seq += 1
    wall = time.perf_counter() - wall0
    user1, sys1 = thread_cpu()
    time.sleep(0.3)  # the receiver drains what is in flight
    parent.send("stop")
    received = parent.recv()
    receiver.join(5)
    sender.close()
    datagrams = max(1, sent)
    return {
        "subscribers": n,
        "incoming_packets": seq,
        "datagrams_per_s": sent / wall,
        "user_us_per_datagram": (user1 - user0) / datagrams * 1e6,
        "sys_us_per_datagram": (sys1 - sys0) / datagrams * 1e6,
        "us_per_datagram": (user1 - user0 + sys1 - sys0) / datagrams * 1e6,
        "cpu_percent": (user1 - user0 + sys1 - sys0) / wall * 100,
        "dropped_by_send_buffer": dropped,
        "received": received,
        "loss_percent": 100.0 * (1 - received / datagrams) if sent else None,
    }


def protect_cost(args: argparse.Namespace, count: int = 20000) -> float:
    """µs per ``Session.protect`` of one packet of ``--size`` bytes, called from Python (an upper bound)."""
    native = fanout.native
    assert native is not None
    profile, key_length = PROFILES[args.profile]
    session = native.Session(os.urandom(key_length), profile)
    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5]) + os.urandom(args.size - 12)
    start = time.thread_time()
    for _ in range(count):
        session.protect(packet)
    return (time.thread_time() - start) / count * 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", default="32,128,512", help="comma-separated N (default 32,128,512)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per N (default 5)")
    parser.add_argument("--rate", type=float, default=110.0, help="incoming packets/s (default 110: 1 Mbps VP8)")
    parser.add_argument("--size", type=int, default=1200, help="clear RTP packet bytes (default 1200)")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="aes-gcm", help="SRTP (default aes-gcm, aiortc's first choice)"
    )
    netns.add_host_option(
        parser,
        "--receivers",
        "the receivers",
        "their kernel's receive path then runs in that thread, not in the sender's system call",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="where local receivers listen (default 127.0.0.1; not with netns)"
    )
    parser.add_argument(
        "--pin",
        type=cpu_list,
        metavar="CPUS",
        help="run the sending thread on these CPUs (and the namespace's receive thread off them), e.g. 1",
    )
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--smoke", action="store_true", help="quick check: N=4, 1 s")
    args = parser.parse_args(argv)
    if args.smoke:
        args.subscribers, args.seconds = "4", 1.0
    try:
        args.counts = [int(v) for v in args.subscribers.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--subscribers takes numbers, not {args.subscribers!r}")
    if not args.counts or min(args.counts) < 1 or not 12 < args.size <= 4096 or args.rate <= 0:
        parser.error("--subscribers >= 1, --size 13-4096, --rate > 0")
    return args


def receivers_where(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[SubscriberHost | None]:
    """The receivers' namespace for ``--receivers``, or None for ``--host``."""
    return netns.host_for(args.receivers, "receivers", args.pin or ())


async def measure_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], SubscriberHost | None]:
    """Every N (each in a thread of its own: the one whose CPU is measured), and the receivers' namespace
    (None: they were on ``--host``)."""
    async with receivers_where(args) as host:
        rows = [await asyncio.to_thread(measure, n, args, host) for n in args.counts]
    return rows, host


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if fanout.native is None:
        print(f"the native fan-out is not built: {fanout.IMPORT_ERROR}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    rows, host = asyncio.run(measure_all(args))
    where = f"in {host.describe()}" if host is not None else f"on {args.host}"
    result = {
        "benchmark": "fanout_floor",
        "config": {
            "seconds": args.seconds,
            "rate": args.rate,
            "size": args.size,
            "profile": args.profile,
            "receivers": "netns" if host is not None else "local",
            "pin": sorted(args.pin) if args.pin else None,
        },
        "library": fanout.LIBRARY,
        "protect_us_from_python": protect_cost(args),
        "machine": machine_info(loadavg_before=load_before, loadavg_after=os.getloadavg()),
        "rows": rows,
    }
    print(
        f"The native fan-out alone ({fanout.LIBRARY}, {args.profile}, {args.size}-byte packets, {args.rate:g} "
        f"incoming/s to N receivers {where}, one thread; CPU of that thread):"
    )
    print_aligned(
        table(
            rows,
            [
                col("N", "subscribers"),
                col("dgram/s", "datagrams_per_s", ".0f"),
                col("CPU%", "cpu_percent", ".1f"),
                col("user us/dgram", "user_us_per_datagram", ".2f"),
                col("sys us/dgram", "sys_us_per_datagram", ".2f"),
                col("us/dgram", "us_per_datagram", ".2f"),
                col("send-buffer drops", "dropped_by_send_buffer"),
                col("loss %", "loss_percent", ".2f"),
            ],
        )
    )
    print(f"One Session.protect called from Python: {result['protect_us_from_python']:.2f} us.")
    print(
        "sys: the kernel's UDP send; on loopback the delivery to the receiver is charged to the sender too, "
        "in a namespace of their own it runs in that namespace's receive thread."
    )
    print_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
