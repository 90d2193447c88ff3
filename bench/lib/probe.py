"""What the machine did beside a benchmark: disk flushes and the other processes' CPU."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lib.proc import CLK_TCK, machine_busy, oncpu_seconds
from bench.lib.stats import percentile


class MachineProbe:
    """Disk flushes and other processes' CPU, read beside a benchmark to explain its slow moments.

    A latency tail on a small shared machine often comes from outside the server: a
    commit waits for the disk's flush, and the kernel's periodic writeback of dirty
    pages (every 30 s on these machines) can hold a flush up for tens of ms; or a
    neighbour process takes a core for a fraction of a second. Two daemon threads
    watch for both: one writes 8 kB to a file in ``directory`` (the filesystem the
    database writes) and flushes it (``fdatasync``) every ``fsync_every`` s, keeping the flushes
    over ``stall_ms``; the other reads the machine's busy time every 0.1 s and
    subtracts the benchmark's own processes (``own_pids()``, asked again every
    second; their time to the nanosecond, the machine's in clock ticks, so a reading
    is good to about 0.1 of a core): what is left is the neighbours'. Its own cost:
    well under 1 % of a core and one small flush per ``fsync_every``.
    """

    SAMPLE = 0.1  # seconds per CPU sample

    def __init__(
        self,
        directory: Path,
        own_pids: Callable[[], list[int]],
        *,
        fsync_every: float = 0.05,
        stall_ms: float = 20.0,
    ) -> None:
        self.path = directory / "machine-probe.dat"
        self.own_pids = own_pids
        self.fsync_every = fsync_every
        self.stall_ms = stall_ms
        self.flushes: list[tuple[float, float]] = []  # (CLOCK_MONOTONIC at the flush's start, ms)
        self.others: list[tuple[float, float]] = []  # (CLOCK_MONOTONIC at the sample's start, cores)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._disk, daemon=True, name="probe-disk"),
            threading.Thread(target=self._cpu, daemon=True, name="probe-cpu"),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _disk(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        block = b"\0" * 8192
        try:
            while not self._stop.wait(self.fsync_every):
                started = time.monotonic()
                os.pwrite(fd, block, (len(self.flushes) % 64) * len(block))
                os.fdatasync(fd)
                self.flushes.append((started, (time.monotonic() - started) * 1000))
        finally:
            os.close(fd)

    def _cpu(self) -> None:
        pids: list[int] = []
        asked = 0.0
        last_t, last_busy, last_own = time.monotonic(), machine_busy()[0], 0.0
        while not self._stop.wait(self.SAMPLE):
            now = time.monotonic()
            if now - asked >= 1.0:
                pids, asked = self.own_pids(), now
                last_own = sum(oncpu_seconds(p) for p in pids)  # a new set: start its count afresh
                last_t, last_busy = now, machine_busy()[0]
                continue
            busy, own = machine_busy()[0], sum(oncpu_seconds(p) for p in pids)
            others = (busy - last_busy) / CLK_TCK - (own - last_own)
            self.others.append((last_t, max(0.0, others) / max(1e-6, now - last_t)))
            last_t, last_busy, last_own = now, busy, own

    def around(self, start: float, end: float) -> dict[str, float]:
        """The worst disk flush and the neighbours' peak (cores) between ``start`` and ``end``."""
        disk = max((ms for t, ms in self.flushes if start <= t <= end and ms > self.stall_ms), default=0.0)
        others = max((cores for t, cores in self.others if start <= t <= end), default=0.0)
        return {"disk_ms": disk, "others_cores": others}

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """The window's readings: the flushes' p50/p99, those over ``stall_ms`` (s into the window, ms), the
        neighbours' peak. A commit waits for such a flush, so its p50 is in every chat send's latency."""
        flushes = [ms for t, ms in self.flushes if start <= t <= end]
        stalls = [
            (round(t - start, 1), round(ms, 1)) for t, ms in self.flushes if start <= t <= end and ms > self.stall_ms
        ]
        peak = max((cores for t, cores in self.others if start <= t <= end), default=0.0)
        return {
            "flushes": len(flushes),
            "flush_ms_p50": round(percentile(flushes, 50) or 0.0, 2),
            "flush_ms_p99": round(percentile(flushes, 99) or 0.0, 2),
            "disk_stalls": stalls,
            "stall_ms": self.stall_ms,
            "others_peak_cores": round(peak, 2),
        }
