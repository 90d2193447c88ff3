"""``gbmedia serve --workers N``: N node processes on one machine, one per core.

A Python process runs its event loop on one core, so one node per machine leaves the
other cores idle. Here the ``gbmedia serve`` process becomes a supervisor that starts
N workers, each a whole node (``python -m gbmedia serve`` again) with a node id of its
own (``<node id>-w<i>``), its own slice of the UDP range, and the same HTTP port: each
worker listens with SO_REUSEPORT and the kernel spreads new connections over them.

So any request may land on any worker, whichever worker owns the room it is about.
That is why more than one worker needs the cluster (``GBMEDIA_REDIS_URL``): each
worker registers in the node registry, every room is placed on one of them, and a
worker relays a request for another worker's room to that owner over the internal
listener, authenticated by the cluster secret they all share. Without Redis there is
no registry and two workers would each hold their own copy of a room, so more than
one worker is refused; with one worker (the default without Redis) there is no
supervisor at all and ``gbmedia serve`` is the single-process node.

The supervisor does what must happen once per machine, before any worker starts,
so workers never race each other for it: it picks the port when 0 is asked (all
workers must share one), creates the generated secrets in the data directory (the
operator token, the secret key, the cluster secret), and starts the embedded
PostgreSQL and migrates it, handing the workers its URL. Then it prints the ready
line once every worker listens, restarts a worker that dies (with backoff), and on
SIGTERM or SIGINT passes the signal on and waits for the workers to drain and stop.
A worker that exits cleanly by itself was drained (``gbmedia drain --node <id>``
drains every ``<id>-wN``): it is not restarted, and the supervisor exits once all are.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gbmedia.config import ConfigError, Settings, env_name, load_settings
from gbmedia.waits import wait_for_event

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "GBMEDIA_WORKER_INDEX"  # set by the supervisor: this process is worker i
SUPERVISOR_PID_ENV = "GBMEDIA_SUPERVISOR_PID"
MIN_UDP_PORTS_PER_WORKER = 16
READY_PREFIX = "gbmedia listening on "
TOKEN_PREFIX = "operator token "
STOP_MARGIN_SECONDS = 10.0  # beyond drain and shutdown timeouts before a worker is killed
STABLE_SECONDS = 30.0  # a worker that ran this long restarts without backoff
MAX_RESTART_DELAY = 30.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


# --- the pure pieces ----------------------------------------------------------------


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), capped by a CPU quota.

    A Kubernetes pod with ``limits.cpu: 2`` on a 64-core machine still sees 64 cores
    in its affinity; its quota says 2. A fraction counts as a core (1.5 → 2).
    """
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return min(cores, max(1, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max``, else v1 CFS), None when unlimited."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields.append((root / period_file).read_text().strip())
            quota, period = fields[0], fields[1]
            if quota == "max" or int(quota) <= 0:
                return None
            return int(quota) / int(period) if int(period) > 0 else None
        except (OSError, ValueError, IndexError):
            continue
    return None


def worker_count(settings: Settings) -> int:
    """``GBMEDIA_WORKERS`` (or ``--workers``); unset, one per core in a cluster and 1 alone."""
    if settings.workers is not None:
        count = settings.workers
    else:
        count = available_cores() if settings.clustered else 1
    if count > 1 and not settings.clustered:
        raise ConfigError(
            f"{count} workers need GBMEDIA_REDIS_URL: workers share the HTTP port, so any of them may get "
            "a room's requests, and only the cluster's node registry (in Redis) tells them which worker "
            "owns the room; set GBMEDIA_REDIS_URL or run one worker (--workers 1)"
        )
    return count


def split_port_range(ports: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """``count`` disjoint, contiguous slices of an inclusive port range, covering it.

    Each worker binds its media sockets in its own slice, so two workers never pick
    the same port and a firewall still opens the one configured range.
    """
    low, high = ports
    size = high - low + 1
    if size < count * MIN_UDP_PORTS_PER_WORKER:
        raise ConfigError(
            f"GBMEDIA_UDP_PORTS {low}-{high} has {size} ports; {count} workers need at least "
            f"{count * MIN_UDP_PORTS_PER_WORKER} ({MIN_UDP_PORTS_PER_WORKER} each): widen the range or run fewer"
        )
    share, extra = divmod(size, count)
    slices = []
    start = low
    for index in range(count):
        end = start + share + (1 if index < extra else 0) - 1
        slices.append((start, end))
        start = end + 1
    return slices


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that has died ``failures`` times in a row."""
    return min(MAX_RESTART_DELAY, 0.5 * 2 ** max(0, failures - 1))


def worker_index() -> int | None:
    """This process's worker number when a supervisor started it, else None."""
    raw = os.environ.get(WORKER_INDEX_ENV, "")
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(f"{WORKER_INDEX_ENV} must be a worker number (gbmedia serve --workers sets it)")
    return int(raw)


@dataclass(frozen=True)
class WorkerPlan:
    """What makes worker ``index`` differ from its siblings: settings passed as ``GBMEDIA_*``."""

    index: int
    values: dict[str, str]

    @property
    def node_id(self) -> str:
        return self.values["node_id"]

    @property
    def udp_ports(self) -> str:
        """The media ports the worker binds: its one port (``0-0``: one picked at start) or its slice."""
        port = self.values.get("udp_port")
        return f"{port}-{port}" if port is not None else self.values["udp_ports"]

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update({env_name(name): value for name, value in self.values.items()})
        env[WORKER_INDEX_ENV] = str(self.index)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        return env


def plan_workers(
    settings: Settings, count: int, *, port: int, cluster_secret: str, database_url: str | None
) -> list[WorkerPlan]:
    """Each worker's settings, checked as the worker will load them (a too long node id fails here).

    The host and port travel as variables too: ``--host`` and ``--port`` were flags
    of the supervisor, which its workers do not get. A configured internal listener
    port becomes one port per worker, counting up from it.
    """
    plans = []
    for index, (low, high) in enumerate(split_port_range(settings.udp_port_range, count)):
        values = {
            "data_dir": str(settings.data_dir),
            "host": settings.host,
            "port": str(port),
            "node_id": f"{settings.node_id}-w{index}",
            "udp_ports": f"{low}-{high}",
            "cluster_secret": cluster_secret,
            "workers": str(count),
        }
        if settings.cluster_port:
            values["cluster_port"] = str(settings.cluster_port + index)
        if settings.udp_port is not None:  # one media port per worker, counting up (0: each picks its own)
            values["udp_port"] = str(settings.udp_port + index if settings.udp_port else 0)
        if database_url is not None:
            values["database_url"] = database_url
        load_settings(**values)  # raises ConfigError naming the variable
        plans.append(WorkerPlan(index, values))
    return plans


# --- a worker -----------------------------------------------------------------------


PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (SIGKILL, OOM).

    A worker left behind would keep the HTTP port and its rooms with nobody to stop
    it; with this it drains and exits like on a supervisor's SIGTERM. Linux only.
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the request above took effect


# --- the supervisor -----------------------------------------------------------------


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to the port the workers will share, held until they listen.

    Port 0 becomes a real free port here, since every worker must bind the same one.
    The port is first bound without SO_REUSEPORT, which fails when anything holds
    it: with SO_REUSEPORT alone a second gbmedia of the same user on the same port
    would silently share its connections. A bound socket that does not listen gets
    no connections, so holding it only keeps the port from being taken meanwhile.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]

    def bound_socket(port: int, *, reuse_port: bool) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server binds the workers' sockets
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"GBMEDIA_PORT {port} on {host}: {exc.strerror or exc}") from None
        return sock

    with bound_socket(port, reuse_port=False) as probe:
        chosen = probe.getsockname()[1]
    return bound_socket(chosen, reuse_port=True)


def _prepare_secrets(settings: Settings) -> str:
    """Create the data directory's generated secrets once, before workers read them; the cluster secret."""
    from gbmedia.node import cluster_secret_for, operator_token_for
    from gbmedia.tenancy.secrets import SecretBox

    operator_token_for(settings)
    SecretBox.for_node(settings.secret_key, settings.data_dir)
    return cluster_secret_for(settings)


def _say(line: str) -> None:
    """A line on the supervisor's stdout; one nobody reads any more is dropped, not fatal."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(line, flush=True)


def _exit_description(code: int) -> dict[str, object]:
    if code < 0:
        with contextlib.suppress(ValueError):
            return {"exit_code": code, "signal": signal.Signals(-code).name}
    return {"exit_code": code}


@dataclass
class _Slot:
    plan: WorkerPlan
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


class Supervisor:
    """Starts the workers, keeps them running, stops them together."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM
        self._stopping = False
        self._started = False  # every worker listened once: later exits are restarted
        self._exit_code = 0
        self._slots: list[_Slot] = []
        self._drained: set[int] = set()  # workers that stopped by themselves (exit 0): not restarted

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, signum: signal.Signals) -> None:
        self._signal = signum
        if self._stopping:  # a second signal: pass it on as well
            for slot in self._slots:
                slot.signal(signum)
        self._stop.set()

    async def _run(self) -> int:
        from gbmedia.db.embedded import EmbeddedPostgres
        from gbmedia.db.pool import Database

        settings = self.settings
        held = reserve_port(settings.host, settings.port)
        port = held.getsockname()[1]
        embedded: EmbeddedPostgres | None = None
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_secret = _prepare_secrets(settings)
            database_url = settings.database_url
            if database_url is None:
                embedded = EmbeddedPostgres(settings.data_dir)
                database_url = await embedded.start()
            # Migrate once here; each worker's own migration then finds nothing to do.
            await Database(settings.model_copy(update={"database_url": database_url})).migrate()
            plans = plan_workers(
                settings,
                self.count,
                port=port,
                cluster_secret=cluster_secret,
                database_url=database_url if embedded is not None else None,
            )
            self._slots = [_Slot(plan) for plan in plans]
            if not self._stop.is_set():
                await self._supervise(held, port)
        finally:
            held.close()
            if embedded is not None:
                await embedded.stop()
        log.info("supervisor stopped", extra={"exit_code": self._exit_code})
        return self._exit_code

    async def _supervise(self, held: socket.socket, port: int) -> None:
        keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        all_ready = asyncio.ensure_future(asyncio.gather(*(slot.ready.wait() for slot in self._slots)))
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({all_ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if all_ready.done() and not self._stop.is_set():
            self._started = True
            held.close()  # the workers listen on the port now
            self._announce(port)
        else:
            all_ready.cancel()
        await stopped
        await self._stop_workers(keepers)

    def _announce(self, port: int) -> None:
        from gbmedia.server import dashboard_line, public_url

        url = public_url(self.settings, port)
        log.info(
            "workers listening",
            extra={"url": url, "workers": self.count, "node_ids": [slot.plan.node_id for slot in self._slots]},
        )
        _say(f"gbmedia listening on {url}")
        _say(
            f"operator token in {self.settings.data_dir / 'operator.token'}"
            if not self.settings.operator_token
            else "operator token from GBMEDIA_OPERATOR_TOKEN"
        )
        _say(dashboard_line(self.settings, url))

    async def _keep(self, slot: _Slot) -> None:
        """Run one worker; start it again when it dies, until the supervisor stops.

        A worker that exits 0 by itself was drained (``gbmedia drain`` moved its rooms
        away and it left the cluster): it is not started again, and when every worker
        has drained the supervisor exits too, as a single node does after its drain.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            proc = await self._spawn(slot)
            started = loop.time()
            reader = asyncio.create_task(self._follow(slot, proc))
            code = await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 5.0)
            reader.cancel()
            fields = {"worker": slot.plan.index, "node_id": slot.plan.node_id, "pid": proc.pid}
            fields |= _exit_description(code)
            if self._stopping:
                (log.info if code == 0 else log.warning)("worker exited", extra=fields | {"expected": True})
                return
            if code == 0 and self._started:
                # A worker stops by itself, and cleanly, only when told to: drained (gbmedia drain).
                log.info("worker exited", extra=fields | {"expected": True})
                self._drained.add(slot.plan.index)
                log.info("worker drained, not restarted", extra=fields | {"drained": len(self._drained)})
                if len(self._drained) == len(self._slots):
                    log.info("every worker drained, stopping", extra={"workers": len(self._slots)})
                    self._stop.set()
                return
            log.error("worker exited", extra=fields | {"expected": False})
            if not self._started:
                # A worker that cannot start would fail again: stop everything and say so.
                log.error("worker failed to start, stopping", extra=fields)
                self._exit_code = code if code > 0 else 1
                self._stop.set()
                return
            failures = 1 if loop.time() - started >= STABLE_SECONDS else failures + 1
            delay = restart_delay(failures)
            log.warning("worker restarting", extra=fields | {"delay_seconds": delay, "failures": failures})
            if await wait_for_event(self._stop, delay):
                return

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        slot.ready.clear()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gbmedia",
            "serve",
            env=slot.plan.environment(dict(os.environ)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,  # read for the ready line; stderr (the logs) is shared
            limit=1 << 20,
        )
        slot.proc = proc
        slot.starts += 1
        log.info(
            "worker started",
            extra={
                "worker": slot.plan.index,
                "node_id": slot.plan.node_id,
                "pid": proc.pid,
                "udp_ports": slot.plan.udp_ports,
                "restart": slot.starts > 1,
            },
        )
        if self._stopping:  # the stop began while it was starting
            slot.signal(self._signal)
        return proc

    async def _follow(self, slot: _Slot, proc: asyncio.subprocess.Process) -> None:
        """Forward a worker's stdout; its ready line becomes ``worker i (node id, pid p) ready``."""
        assert proc.stdout is not None
        index, node_id = slot.plan.index, slot.plan.node_id
        while raw := await proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith(READY_PREFIX):
                log.info("worker ready", extra={"worker": index, "node_id": node_id, "pid": proc.pid})
                _say(f"worker {index} (node {node_id}, pid {proc.pid}) ready")
                slot.ready.set()
            elif not line.startswith(TOKEN_PREFIX):  # the supervisor prints that one once
                _say(f"worker {index}: {line}")

    async def _stop_workers(self, keepers: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        log.info("stopping workers", extra={"signal": signal.Signals(self._signal).name})
        for slot in self._slots:
            slot.signal(self._signal)
        patience = self.settings.drain_timeout + self.settings.shutdown_timeout + STOP_MARGIN_SECONDS
        _, pending = await asyncio.wait(keepers, timeout=patience)
        if pending:
            for slot in self._slots:
                if slot.alive and slot.proc is not None:
                    log.error(
                        "worker killed: it did not stop in time",
                        extra={"worker": slot.plan.index, "pid": slot.proc.pid, "waited_seconds": patience},
                    )
                    slot.signal(signal.SIGKILL)
            await asyncio.wait(pending)
            self._exit_code = self._exit_code or 1


def supervise(settings: Settings, count: int) -> int:
    """Run ``count`` workers until SIGTERM or SIGINT; the process's exit code.

    Everything that can be refused is refused before anything starts.
    """
    plan_workers(settings, count, port=settings.port, cluster_secret="x" * 32, database_url=None)
    return asyncio.run(Supervisor(settings, count).run())
