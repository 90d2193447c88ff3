"""The node's own coturn, a child process, for a single node with no TURN configured.

Like the embedded PostgreSQL, it makes ``gbmedia serve`` reach people behind
firewalls with nothing set: when ``turnserver`` (Debian's coturn) is installed and no
``GBMEDIA_TURN_URLS`` is given, the node starts coturn on ports it picks, on its media
address, with a secret generated for this run, and stops it when it stops.

It relays only towards this node: ``denied-peer-ip`` covers every private and special
range, and ``allowed-peer-ip`` re-opens exactly the node's media address, so a TURN
credential cannot be used to reach the machine's neighbours (docs/security.md). The
relay binds UDP ports from ``GBMEDIA_TURN_RELAY_PORTS``; the listening port serves
TURN over UDP and TCP, a second port TURN over TLS (``turns:``) with the configured
certificate or a self-signed one generated at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from gbmedia.orphans import dying_with_parent
from gbmedia.turn.tls import self_signed

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
# Where a relay must never lead: private, shared, link-local, documentation, benchmark and reserved ranges.
DENIED_NETWORKS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
)


def ip_range(network: str) -> str:
    """coturn's ``first-last`` form of a network."""
    net = ipaddress.ip_network(network)
    return f"{net[0]}-{net[-1]}"


def _free_port(host: str, *, udp_too: bool) -> int:
    """A port free for TCP (and UDP, when ``udp_too``) on ``host``: coturn serves both on its listening port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both UDP and TCP on {host}")


@dataclass(frozen=True)
class CoturnPlan:
    """What the child is started with: where it listens and relays, and its files."""

    directory: Path  # under the node's data directory: config (0600: it holds the secret), db, log
    advertised: str  # the node's media address, as clients reach it
    bind: str  # the local address (0.0.0.0 / :: behind NAT)
    relay_ports: tuple[int, int]
    cert: Path | None = None  # turns: certificate and key; None: self-signed, made at start
    key: Path | None = None


class EmbeddedCoturn:
    """One coturn child process; :meth:`start` returns the URLs clients are given."""

    def __init__(self, plan: CoturnPlan, executable: str = "turnserver") -> None:
        self.plan = plan
        self.executable = executable
        self.secret = secrets.token_urlsafe(32)
        self.urls: tuple[str, ...] = ()
        self._process: asyncio.subprocess.Process | None = None

    def config(self, port: int, tls_port: int, cert: Path, key: Path) -> str:
        """The ``turnserver.conf`` text for this run."""
        plan = self.plan
        low, high = plan.relay_ports
        lines = [
            f"listening-port={port}",
            f"tls-listening-port={tls_port}",
            f"min-port={low}",
            f"max-port={high}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            "realm=gbmedia",
            f"cert={cert}",
            f"pkey={key}",
            "no-dtls",
            "no-tlsv1",
            "no-tlsv1_1",
            "no-rfc5780",
            "no-tcp-relay",
            "no-multicast-peers",
            "no-cli",
            "no-software-attribute",
            "fingerprint",
            "user-quota=12",
            "total-quota=1000",
            f"db={plan.directory / 'turndb'}",
            f"pidfile={plan.directory / 'turnserver.pid'}",
            f"log-file={plan.directory / 'turnserver.log'}",
            "simple-log",
        ]
        if plan.bind not in ("0.0.0.0", "::"):
            lines += [f"listening-ip={plan.bind}", f"relay-ip={plan.bind}"]
        if plan.advertised != plan.bind:
            lines.append(f"external-ip={plan.advertised}" + ("" if plan.bind in ("0.0.0.0", "::") else f"/{plan.bind}"))
        lines += [f"denied-peer-ip={ip_range(n)}" for n in DENIED_NETWORKS]
        allowed = {plan.advertised} | ({plan.bind} if plan.bind not in ("0.0.0.0", "::") else set())
        lines += [f"allowed-peer-ip={address}" for address in sorted(allowed)]
        if any(ipaddress.ip_address(a).is_loopback for a in allowed):
            lines.append("allow-loopback-peers")  # the node itself is on loopback (a test machine)
        return "\n".join(lines) + "\n"

    async def start(self) -> tuple[str, ...]:
        plan = self.plan
        plan.directory.mkdir(parents=True, exist_ok=True)
        port = _free_port(plan.bind, udp_too=True)
        tls_port = _free_port(plan.bind, udp_too=False)
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
        host = wildcard.get(plan.bind, plan.bind)  # where this node checks that coturn listens
        if plan.cert is not None and plan.key is not None:
            cert, key = plan.cert, plan.key
        else:
            cert, key = await self_signed(plan.directory, plan.advertised)
        conf = plan.directory / "turnserver.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.config(port, tls_port, cert, key))
        self._process = await asyncio.create_subprocess_exec(
            *dying_with_parent([self.executable, "-c", str(conf)]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await self._until_listening(host, port)
        except BaseException:
            await self.stop()
            raise
        address = f"[{plan.advertised}]" if ":" in plan.advertised else plan.advertised
        self.urls = (
            f"turn:{address}:{port}?transport=udp",
            f"turn:{address}:{port}?transport=tcp",
            f"turns:{address}:{tls_port}?transport=tcp",
        )
        log.info("embedded coturn started", extra={"turn_urls": list(self.urls), "pid": self._process.pid})
        return self.urls

    async def _until_listening(self, host: str, port: int) -> None:
        """Until coturn accepts TCP on its port; OSError if it exits or takes too long."""
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            if self._process.returncode is not None:
                raise OSError(
                    f"turnserver exited with {self._process.returncode}; see {self.plan.directory / 'turnserver.log'}"
                )
            try:
                _reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise OSError(f"turnserver did not listen on {host}:{port} within {START_TIMEOUT} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("embedded coturn stopped", extra={"pid": process.pid})
