"""Another host for a benchmark's subscribers: a network namespace behind a veth pair, received like a NIC.

On one machine the kernel delivers a datagram in the context of whoever sent it. On
loopback a forwarding server's CPU therefore pays its subscribers' receive path too: IP
and UDP receive, the socket lookup, the queueing on each subscriber's socket. That is
most of what a datagram costs the kernel, and a server sending to other machines never
pays it. In the subscribers' own namespace, behind a veth pair, the namespace's end
receives with NAPI in a kernel thread of its own (GRO on: veth then queues the
datagram and wakes that thread instead of receiving it in the sender's call), polled on
a timer (``napi_defer_hard_irqs``, ``gro_flush_timeout``: a network card's interrupt
coalescing) and kept off the server's CPUs. The server then pays its send path up to the
link, as it pays it up to a network card's driver, and a queue in front of the link (pfifo,
``LINK_QUEUE``) holds a burst as a card's queue would. veth queues a datagram for NAPI only
when the sending end has no TSO (``veth_skb_is_eligible_for_gro``), so the machine's end
has it turned off.

The other way (the subscribers' RTCP and STUN to the server) has no NAPI: the server's
receive path is paid by the subscribers' sends, as on loopback, for every server alike.

The pair uses the first free /30 of 203.0.113.0/24 (TEST-NET-3: never a machine's own
subnet, and not the 198.51.100.0/24 the tests' namespaces use), so benchmarks run side by
side do not share an address. Needs root, iproute2 and ethtool. Names carry the
benchmark's process id; each namespace made first removes those a killed run left (its
process gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.lib.errors import BenchError

RANGE = "203.0.113"  # a /30 of it per namespace: .4k+1 the machine's end (the server listens there), .4k+2 inside
POLL_NS = 500_000  # the namespace's NAPI polls every 0.5 ms while traffic flows (gro_flush_timeout)
POLLS_BEFORE_WAKE_UPS = 100  # empty polls (50 ms) before it goes back to being woken (napi_defer_hard_irqs)
# A queue in front of the link, as in front of every network card (txqueuelen 1000). veth has none
# by default, so a fan-out's burst found only its ring of 256 and the rest was dropped: the native
# fan-out's sendmmsg lost 0.2-0.5 % at N=128-512 (2026-12-07), a NIC's queue would have held it. With
# a queue, veth stops it while the ring is full (the qdisc's requeues) and nothing is lost.
LINK_QUEUE = 1000
RECEIVE_PRIORITY = 50  # SCHED_FIFO for the namespace's receive thread: before any process, as a card's interrupt
LEFT_BY = re.compile(r"^gbb(\d+)n\d+\b")  # a namespace's name: the benchmark's process id, then a counter
SYS_NET = Path("/sys/class/net")
PROC = Path("/proc")
NETNS_DIR = Path("/run/netns")  # where ip netns keeps the namespaces it names
CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def missing() -> str | None:
    """Why the subscribers cannot have a host of their own here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("ethtool", "ethtool")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    return None


async def run(*args: str, check: bool = True) -> str:
    """What the command prints; BenchError if it fails, unless ``check`` is off."""
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise BenchError(f"{' '.join(args)} failed ({process.returncode}): {text.strip()}")
    return text


@dataclass(frozen=True)
class SubscriberHost:
    name: str  # the namespace
    outer_link: str  # the veth end on the machine's side
    inner_link: str  # the end in the namespace
    server_address: str
    address: str
    napi_thread: int | None  # the pid of the namespace's receive thread (None: not found)

    async def link_drops(self) -> int:
        """Datagrams to the namespace dropped so far: by the link itself (its ring to the receive thread
        was full) and by the queue in front of it (full too); 0 once the link is gone."""
        try:
            dropped = int((SYS_NET / self.outer_link / "statistics" / "tx_dropped").read_text())
        except (OSError, ValueError):
            return 0
        return dropped + queue_drops(await run("tc", "-s", "-j", "qdisc", "show", "dev", self.outer_link, check=False))

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def describe(self) -> str:
        return (
            f"a network namespace of their own ({self.name}, {self.address}; the server on {self.server_address}, "
            "receive polled in a thread of its own)"
        )


def enter(name: str) -> None:
    """Move the calling thread into the namespace ``name`` (``setns``; what ``ip netns exec`` does for a
    command, for a process forked here): the sockets it makes from then on live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def _alive(pid: int) -> bool:
    return (PROC / str(pid)).exists()


async def remove_leftovers(left_by: re.Pattern[str] = LEFT_BY) -> list[str]:
    """Delete the namespaces named by ``left_by`` (its group 1: the process id that made them; the
    benchmarks' by default, the tests' in tests/netns.py) whose process is gone (a run killed
    mid-way); their names."""
    removed = []
    for line in (await run("ip", "netns", "list")).splitlines():
        match = left_by.match(line)
        if match and not _alive(int(match[1])):
            await delete_namespace(match[0])
            removed.append(match[0])
    return removed


async def delete_namespace(name: str) -> None:
    """Delete the namespace ``name`` and the veth pairs it holds, both ends, before returning.

    ``ip netns del`` alone only drops the name: the kernel tears the namespace down later, from a
    work queue, and until then the machine's end of its pair still holds its address and route
    (seen: still there right after a run of namespaces had been deleted). Deleting a veth end
    deletes its peer at once."""
    shown = await run("ip", "-n", name, "-o", "link", "show", "type", "veth")
    for line in shown.splitlines():
        link = line.split(": ")[1].partition("@")[0] if ": " in line else ""
        if link:
            await run("ip", "-n", name, "link", "del", link, check=False)  # gone meanwhile: fine
    await run("ip", "netns", "del", name)


def queue_drops(shown: str) -> int:
    """Drops counted by the qdiscs in ``tc -s -j qdisc show`` output (0 when there is none to read)."""
    try:
        qdiscs = json.loads(shown)
    except ValueError:
        return 0
    return sum(int(q.get("drops", 0)) for q in qdiscs) if isinstance(qdiscs, list) else 0


def napi_thread(link: str) -> int | None:
    """The pid of the kernel thread that receives for ``link`` (threaded NAPI names it ``napi/<link>-<id>``)."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if comm.startswith(f"napi/{link}-"):
                return int(entry.name)
    return None


def keep_off(pid: int, cpus: Collection[int]) -> None:
    """Move ``pid`` to the CPUs not in ``cpus`` (the server's), where there are any left."""
    others = set(os.sched_getaffinity(0)) - set(cpus)
    if others:
        os.sched_setaffinity(pid, others)


def receive_first(pid: int) -> None:
    """Run the receive thread ``pid`` before any process (SCHED_FIFO), as a network card's interrupt and
    softirq run before them on a real host.

    veth queues what it hands to NAPI in a ring of 256 datagrams. As an ordinary thread, the
    receive waited its turn behind the subscribers' processes (8-16 busy ones share a CPU at
    N=256-512), the ring filled during a fan-out's burst, and veth dropped the rest: the server's
    ``sendmmsg`` saw nothing (the kernel counts it in Udp SndbufErrors), the subscribers saw loss.
    """
    os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(RECEIVE_PRIORITY))


async def tune_receive(name: str, inner: str, outer: str) -> None:
    """NAPI on the namespace's end, threaded and polled; no TSO on the machine's end (see the module)."""
    inside = ["ip", "netns", "exec", name]
    await run("ethtool", "-K", outer, "tso", "off")
    await run("tc", "qdisc", "replace", "dev", outer, "root", "pfifo", "limit", str(LINK_QUEUE))  # see LINK_QUEUE
    await run(*inside, "ethtool", "-K", inner, "gro", "on")
    for setting, value in (
        ("threaded", 1),
        ("napi_defer_hard_irqs", POLLS_BEFORE_WAKE_UPS),
        ("gro_flush_timeout", POLL_NS),
    ):
        await run(*inside, "sh", "-c", f"echo {value} > {SYS_NET / inner / setting}")


async def free_subnet() -> int:
    """The first /30 of ``RANGE`` no link on this machine has an address in: its base (0, 4, 8 ...)."""
    shown = await run("ip", "-4", "-o", "addr", "show", "to", f"{RANGE}.0/24")
    used = {int(m[1]) // 4 * 4 for m in re.finditer(rf"inet {re.escape(RANGE)}\.(\d+)/", shown)}
    base = next((b for b in range(0, 256, 4) if b not in used), None)
    if base is None:
        raise BenchError(f"every /30 of {RANGE}.0/24 is taken: remove the namespaces holding them")
    return base


@asynccontextmanager
async def subscriber_host(server_cpus: Collection[int] = ()) -> AsyncIterator[SubscriberHost]:
    """The namespace, set up and tuned; removed when the block ends however it ends. Its receive thread
    runs off ``server_cpus`` (the CPUs the server is pinned to, where it is)."""
    if (why := missing()) is not None:
        raise BenchError(f"the subscribers cannot have a host of their own: {why}")
    await remove_leftovers()
    base = await free_subnet()
    server_address, address = f"{RANGE}.{base + 1}", f"{RANGE}.{base + 2}"
    pid, number = os.getpid(), next(_counter)
    name, outer, inner = f"gbb{pid}n{number}", f"gbbo{pid % 100000}n{number}", f"gbbi{pid % 100000}n{number}"
    inside = ["ip", "netns", "exec", name]
    created = False
    try:
        await run("ip", "netns", "add", name)
        created = True
        await run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        await run("ip", "link", "set", inner, "netns", name)
        await run("ip", "addr", "add", f"{server_address}/30", "dev", outer)
        await run("ip", "link", "set", outer, "up")
        await run(*inside, "ip", "addr", "add", f"{address}/30", "dev", inner)
        await run(*inside, "ip", "link", "set", inner, "up")
        await run(*inside, "ip", "link", "set", "lo", "up")
        await tune_receive(name, inner, outer)
        thread = napi_thread(inner)
        if thread is not None:
            receive_first(thread)
            if server_cpus:
                keep_off(thread, server_cpus)
        yield SubscriberHost(name, outer, inner, server_address, address, thread)
    finally:
        if created:
            await run("ip", "netns", "del", name, check=False)  # removes the inner end, and with it the pair
        await run("ip", "link", "del", outer, check=False)  # gone already with its peer, normally


def add_host_option(parser: argparse.ArgumentParser, flag: str, who: str, why: str) -> None:
    """``flag`` (auto, netns, local): where a benchmark's receiving side (``who``) runs."""
    parser.add_argument(
        flag,
        choices=("auto", "netns", "local"),
        default="auto",
        help=f"where {who} run: netns, a network namespace of their own behind a veth pair whose receive runs "
        f"in a kernel thread of its own (bench/lib/netns.py: {why}; needs root, iproute2 and ethtool); local, "
        "on this host over loopback as before 2026-12-07; auto (default): netns where it can be made, else local",
    )


def host_for(
    choice: str, who: str, server_cpus: Collection[int] = ()
) -> contextlib.AbstractAsyncContextManager[SubscriberHost | None]:
    """The namespace ``choice`` asks for (its receive thread off ``server_cpus``), or None for this host;
    ``auto`` falls back to this host where a namespace cannot be made, and says why on stderr."""
    if choice == "local":
        return contextlib.nullcontext()
    if choice == "auto" and (why := missing()) is not None:
        print(f"[{who}] on this host: {why}", file=sys.stderr)
        return contextlib.nullcontext()
    return subscriber_host(server_cpus)
