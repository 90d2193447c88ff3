"""CPU, scheduling and socket figures of processes, read from /proc (Linux).

The benchmarks measure the server from outside, the way an operator would: the kernel's
own accounting of its threads, not anything the server says about itself. The parsers
take the files' text so they can be checked without the processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Indexes into parse_stat()'s fields (proc(5) numbers the fields from 1, and the list starts at field 3).
PPID, UTIME, STIME, CUTIME, CSTIME = 1, 11, 12, 13, 14


def parse_stat(text: str) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` line from "state" (field 3) on.

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
    so the fields start after the last closing one."""
    return text[text.rindex(")") + 2 :].split()


def proc_stat(pid: int) -> list[str] | None:
    """``parse_stat`` of a live process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return parse_stat(raw)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of every thread of ``pid`` (plus its reaped children's if asked)."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[UTIME]) + int(fields[STIME])
    if children:
        ticks += int(fields[CUTIME]) + int(fields[CSTIME])
    return ticks / CLK_TCK


def sys_cpu_seconds(pid: int) -> float:
    """stime alone, all threads: the kernel's share (syscalls: socket I/O, the local UDP path)."""
    fields = proc_stat(pid)
    return int(fields[STIME]) / CLK_TCK if fields is not None else 0.0


def _schedstat(pid: int, field: int) -> int:
    """One field of /proc/<pid>/task/*/schedstat summed over the threads: 0 on a CPU, 1 waiting for one
    (both ns), 2 times put on a CPU."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[field])
    return total


def _schedstat_seconds(pid: int, field: int) -> float:
    return _schedstat(pid, field) / 1e9


def cpu_runs(pid: int) -> int:
    """Times the threads of ``pid`` were put on a CPU: a wake-up each (or a return after being preempted).
    On a virtual machine each costs tens of µs of CPU before any work, so fewer is cheaper."""
    return _schedstat(pid, 2)


def runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of ``pid`` were ready to run but waited for a CPU."""
    return _schedstat_seconds(pid, 1)


def oncpu_seconds(pid: int) -> float:
    """Time the threads of ``pid`` ran, to the nanosecond (``cpu_seconds`` counts clock ticks)."""
    return _schedstat_seconds(pid, 0)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None:
            by_parent.setdefault(int(fields[PPID]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """A process and its live descendants, plus the children it already reaped."""
    return cpu_seconds(pid, children=True) + sum(cpu_seconds(c) for c in descendants(pid))


def parse_machine_busy(text: str) -> tuple[float, float]:
    """(busy, total) jiffies from the text of /proc/stat: its first line sums every CPU."""
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return float(total - values[3] - values[4]), float(total)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    return parse_machine_busy(Path("/proc/stat").read_text())


def embedded_postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the server's embedded PostgreSQL (``<data>/postgres/postmaster.pid``), if it runs one."""
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


def socket_inodes(pid: int) -> set[str]:
    """The inode numbers of ``pid``'s open sockets (its ``/proc/<pid>/fd`` links to ``socket:[N]``)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def parse_udp_table(text: str, inodes: set[str]) -> tuple[int, int]:
    """(drops, bytes queued for reading) summed over the rows of a /proc/net/udp table whose inode is in ``inodes``."""
    drops = queued = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13 and fields[9] in inodes:
            drops += int(fields[12])
            queued += int(fields[4].partition(":")[2], 16)  # tx_queue:rx_queue, hexadecimal
    return drops, queued


def udp_sockets(pid: int) -> tuple[int, int]:
    """(datagrams the kernel dropped, bytes waiting unread) on ``pid``'s UDP sockets, from /proc/net/udp*.

    Drops: a receive buffer was full. Bytes waiting at the end of a window: that side is behind (a
    subscriber worker that waits for the CPU reads its media late: low fps there is not the server's)."""
    inodes = socket_inodes(pid)
    drops = queued = 0
    for table in ("udp", "udp6"):
        with contextlib.suppress(FileNotFoundError):
            d, q = parse_udp_table(Path(f"/proc/{pid}/net/{table}").read_text(), inodes)
            drops += d
            queued += q
    return drops, queued


def pin_process(pid: int, cpus: set[int]) -> int:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it): how many were pinned.

    Janus hands each packet from the publisher's thread to every subscriber's loop thread; on a small
    virtual machine the cross-core wake-ups cost more than the forwarding (the reference Janus figure was
    taken pinned to one core). Pinning both servers alike also makes "per core" literal."""
    pinned: set[int] = set()
    for _ in range(3):  # threads started while pinning: once more
        for task in Path(f"/proc/{pid}/task").iterdir():
            tid = int(task.name)
            if tid not in pinned:
                with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                    os.sched_setaffinity(tid, cpus)
                    pinned.add(tid)
    return len(pinned)


@dataclass
class ServerReading:
    """A server's CPU counters beside this (the orchestrator's) process's and the whole machine's, at one
    moment: two readings make a window's CPU figures. Benchmarks extend it with what else they read."""

    t: float  # CLOCK_MONOTONIC
    server_cpu: float  # utime + stime, all threads
    server_sys: float  # stime alone
    server_wait: float  # runqueue wait
    server_runs: int  # times its threads were put on a CPU
    orchestrator_cpu: float
    machine: tuple[float, float]  # machine_busy()


def read_server(pid: int | list[int]) -> dict[str, Any]:
    """``ServerReading``'s fields for server ``pid`` now (summed over the pids of a server made of
    several processes: ``gbmedia serve --workers N``), as keyword arguments (for it or a subclass)."""
    pids = pid if isinstance(pid, list) else [pid]
    return {
        "t": time.monotonic(),
        "server_cpu": sum(cpu_seconds(p) for p in pids),
        "server_sys": sum(sys_cpu_seconds(p) for p in pids),
        "server_wait": sum(runqueue_wait_seconds(p) for p in pids),
        "server_runs": sum(cpu_runs(p) for p in pids),
        "orchestrator_cpu": cpu_seconds(os.getpid()),
        "machine": machine_busy(),
    }


def gbmedia_pids(pid: int) -> list[int]:
    """``pid`` and its descendants that run gbmedia (a supervisor's workers; not its PostgreSQL)."""
    found = [pid]
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"gbmedia" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found
