"""Janus 1.1.2 as the reference forwarding peer of ``bench.forwarding``: its config, its process, its HTTP API.

``python -m bench.forwarding --servers gbmedia,janus`` runs the same load against ``gbmedia serve``
and against Janus (Debian package ``janus``, ``/usr/bin/janus``) with its VideoRoom plugin, one after
the other. This module knows only Janus; the publisher and the subscribers (the same code for both
servers, only their signaling differs) are in ``bench.lib.publisher`` and ``bench.lib.subscriber``.

The config is written to a temporary folder each run: only ``libjanus_videoroom.so`` and
``libjanus_http.so`` are loaded (the plugin and transport folders are temporary folders holding a
link to each), ICE only on the machine's own IPv4 (aioice skips loopback addresses, so 127.0.0.1
would give the aiortc peers nothing to pair with), IPv6 off, the HTTP API and the admin API (with a
random secret, only to read the packet counters) on 127.0.0.1 on free ports, warnings-only logging
(as ``gbmedia serve`` runs in the benchmark). Janus's CPU is read from ``/proc`` exactly as
gbmedia's: utime + stime of the process, all its threads.
"""

# ruff: noqa: ASYNC109, ASYNC240 - explicit timeouts; tiny file checks before starting things

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.children import tail
from bench.lib.errors import BenchError
from bench.lib.server import ChildServer
from gbmedia.orphans import dying_with_parent

JANUS_BINARY = "/usr/bin/janus"
JANUS_LIB_DIR = Path("/usr/lib/x86_64-linux-gnu/janus")  # from `dpkg -L janus`
VIDEOROOM = "janus.plugin.videoroom"
KEEPALIVE_S = 25.0  # Janus drops a session after session_timeout (60 s) without a request


def machine_ipv4() -> str:
    """The machine's own IPv4 address (the source address of its default route), not a loopback one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        with contextlib.suppress(OSError):
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2; no datagram is sent: this only picks the route
            address = probe.getsockname()[0]
            if not address.startswith("127."):
                return address
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            address = info[4][0]
            if not address.startswith("127."):
                return address
    raise BenchError("found no IPv4 address other than loopback for Janus's ICE candidates (--janus-ip)")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_config(
    folder: Path,
    *,
    ip: str,
    http_port: int,
    admin_port: int,
    admin_secret: str,
    lib_dir: Path = JANUS_LIB_DIR,
    debug_level: int = 3,
    http_ip: str = "127.0.0.1",
) -> Path:
    """A Janus config folder that loads only the VideoRoom plugin and the HTTP transport (its API on
    ``http_ip``, its admin API on 127.0.0.1)."""
    plugins, transports, empty = folder / "plugins", folder / "transports", folder / "none"
    for path in (plugins, transports, empty):
        path.mkdir(parents=True, exist_ok=True)
    for source, target in (
        (lib_dir / "plugins" / "libjanus_videoroom.so", plugins),
        (lib_dir / "transports" / "libjanus_http.so", transports),
    ):
        if not source.exists():
            raise BenchError(f"{source} is missing: is the Debian package janus installed? (dpkg -L janus)")
        link = target / source.name
        if not link.exists():
            link.symlink_to(source)
    (folder / "janus.jcfg").write_text(f"""\
general: {{
    configs_folder = "{folder}"
    plugins_folder = "{plugins}"
    transports_folder = "{transports}"
    events_folder = "{empty}"
    loggers_folder = "{empty}"
    debug_level = {debug_level}
    debug_timestamps = true
    debug_colors = false
    session_timeout = 60
    server_name = "gbmedia-bench-janus"
    admin_secret = "{admin_secret}"
}}
certificates: {{
}}
media: {{
    ipv6 = false
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{ip}"
    ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
    broadcast = false
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""\
general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "{http_ip}"
    https = false
}}
admin: {{
    admin_base_path = "/admin"
    admin_http = true
    admin_port = {admin_port}
    admin_ip = "127.0.0.1"
    admin_https = false
}}
cors: {{
}}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")  # no rooms: the bench creates its own
    return folder


class JanusServer(ChildServer):
    """``janus -F <config folder>`` as a child process; read and stopped like ``bench.lib.server.Server``."""

    name = "janus"
    label = "janus"
    stop_signal = signal.SIGINT  # Janus's own clean shutdown

    def __init__(
        self,
        workdir: Path,
        startup_timeout: float,
        ip: str | None = None,
        binary: str = JANUS_BINARY,
        lib_dir: Path = JANUS_LIB_DIR,
        http_ip: str = "127.0.0.1",
    ) -> None:
        super().__init__(workdir, startup_timeout, workdir / "janus.log")
        self.http_ip = http_ip  # where its API listens: subscribers on another host reach it there
        self.data_dir = workdir / "config"  # its config folder
        self.ip = ip
        self.binary = binary
        self.lib_dir = lib_dir
        self.admin_url = ""
        self.admin_secret = secrets.token_hex(12)
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        if not Path(self.binary).exists():
            raise BenchError(f"{self.binary} is missing: install the Debian package janus")
        self.ip = self.ip or machine_ipv4()
        port, admin_port = free_tcp_port(), free_tcp_port()
        self.admin_url = f"http://127.0.0.1:{admin_port}/admin"
        write_config(
            self.data_dir,
            ip=self.ip,
            http_port=port,
            admin_port=admin_port,
            admin_secret=self.admin_secret,
            lib_dir=self.lib_dir,
            http_ip=self.http_ip,
        )
        log = self.open_log()
        self.proc = await asyncio.create_subprocess_exec(
            *dying_with_parent([self.binary, "-F", str(self.data_dir)]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://{self.http_ip}:{port}/janus"
        deadline = time.monotonic() + self.startup_timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise BenchError(
                        f"janus exited with status {self.proc.returncode} before answering; "
                        f"log {self.log_path}:\n{tail(self.log_path)}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{url}/info", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        info = await resp.json(content_type=None)
                        if resp.status == 200 and info.get("janus") == "server_info":
                            self.info = info
                            break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"janus did not answer on {url} within {self.startup_timeout:.0f} s; "
                        f"log {self.log_path}:\n{tail(self.log_path)}"
                    )
                await asyncio.sleep(0.1)
        if VIDEOROOM not in info.get("plugins", {}):
            raise BenchError(f"janus runs without {VIDEOROOM}: {sorted(info.get('plugins', {}))}")
        self.url = url

    @property
    def version(self) -> str:
        return str(self.info.get("version_string", "?"))

    async def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        await self._terminate(timeout)
        return self.proc.returncode


# --- the HTTP API -----------------------------------------------------------------------

_transactions = itertools.count(1)


class JanusSession:
    """One Janus session over the HTTP API: requests, a long-poll reader for the events, keepalives.

    ``message`` sends a plugin request; a synchronous plugin reply (``success``) comes back at once, an
    asynchronous one (``ack``) is the event with the same transaction, which the long poll delivers.
    Events without a pending transaction (``webrtcup``, ``media``, ``hangup``, ...) go to ``on_event``.
    """

    def __init__(
        self, http: aiohttp.ClientSession, url: str, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.on_event = on_event
        self.id: int | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        transaction = body.setdefault("transaction", f"t{os.getpid()}-{next(_transactions)}")
        async with self.http.post(f"{self.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            reply = await resp.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise BenchError(
                f"janus refused {body.get('janus')} ({transaction}): {error.get('code')}: {error.get('reason')}"
            )
        return reply

    async def create(self, timeout: float = 30.0) -> None:
        reply = await self._post("", {"janus": "create"}, timeout)
        self.id = int(reply["data"]["id"])
        self._tasks = [asyncio.ensure_future(self._poll()), asyncio.ensure_future(self._keepalive())]

    async def attach(self, plugin: str = VIDEOROOM, timeout: float = 30.0) -> int:
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": plugin}, timeout)
        return int(reply["data"]["id"])

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """A plugin request; its reply (``success``) or its event: the whole Janus message, plugindata and
        jsep included. A plugin error (``error_code`` in the data) raises."""
        transaction = f"t{os.getpid()}-{next(_transactions)}"
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            reply = await self._post(f"/{self.id}/{handle}", request, timeout)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(transaction, None)
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data or reply.get("janus") == "error":
            raise BenchError(
                f"videoroom refused {body.get('request')}: {data.get('error_code')}: "
                f"{data.get('error') or reply.get('error')}"
            )
        return reply

    async def ping(self, timeout: float = 10.0) -> None:
        await self._post("", {"janus": "ping"}, timeout)

    async def _poll(self) -> None:
        """The long poll: Janus holds each GET up to 30 s, then answers with a keepalive."""
        while not self.closed:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}", params={"maxev": "20"}, timeout=aiohttp.ClientTimeout(total=65)
                ) as resp:
                    events = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if self.closed:
                    return
                print(f"janus long poll of session {self.id}: {exc!r}", file=sys.stderr)
                await asyncio.sleep(0.5)
                continue
            for event in events if isinstance(events, list) else [events]:
                self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        if event.get("janus") == "keepalive":
            return
        future = self._pending.get(str(event.get("transaction")))
        if future is not None and not future.done() and event.get("janus") in ("event", "success", "error"):
            future.set_result(event)
        elif self.on_event is not None:
            self.on_event(event)

    async def _keepalive(self) -> None:
        while not self.closed:
            await asyncio.sleep(KEEPALIVE_S)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, BenchError):
                await self._post(f"/{self.id}", {"janus": "keepalive"}, 10)

    async def destroy(self) -> None:
        self.closed = True
        if self.id is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, BenchError):
                await self._post(f"/{self.id}", {"janus": "destroy"}, 5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("janus session destroyed"))


def jsep(kind: str, sdp: str) -> dict[str, Any]:
    """A JSEP for Janus: aiortc gathers every candidate before it sets a description, so no trickle."""
    return {"type": kind, "sdp": sdp, "trickle": False}


async def create_room(session: JanusSession, room: int, *, bitrate: int = 10_000_000) -> int:
    """A VideoRoom for one VP8 publisher: the REMB cap ``bitrate`` far above the stream (the publisher's
    encoder is pinned anyway), no periodic keyframe requests (``fir_freq`` 0, as gbmedia sends none)."""
    handle = await session.attach()
    await session.message(
        handle,
        {
            "request": "create",
            "room": room,
            "description": "gbmedia bench",
            "publishers": 1,
            "bitrate": bitrate,
            "fir_freq": 0,
            "videocodec": "vp8",
            "audiocodec": "opus",
            "record": False,
            "notify_joining": False,
            "permanent": False,
        },
    )
    return handle


def strip_rtx(sdp: str) -> tuple[str, int]:
    """``sdp`` without its RTX payload types (and their FID ssrc groups): (new sdp, how many were removed).

    The subscribers count RTP through ``tap_receiver``, which skips RTX packets (gbmedia offers no RTX to
    its subscribers): answering without RTX makes Janus resend lost packets as themselves too, so both
    servers' repairs reach the counters the same way."""
    lines = sdp.split("\r\n")
    rtx = {
        line.split(":", 1)[1].split()[0]
        for line in lines
        if line.startswith("a=rtpmap:") and line.split()[1].lower().startswith("rtx/")
    }
    if not rtx:
        return sdp, 0
    rtx_ssrcs: set[str] = set()
    for line in lines:
        if line.startswith("a=ssrc-group:FID "):
            rtx_ssrcs.update(line.split()[2:])
    kept = []
    for line in lines:
        if line.startswith("m="):
            fields = line.split()
            line = " ".join(fields[:3] + [pt for pt in fields[3:] if pt not in rtx])
        elif any(
            line.startswith(f"{p}{pt} ") or line == f"{p}{pt}"
            for pt in rtx
            for p in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
        ):
            continue
        elif line.startswith("a=ssrc-group:FID "):
            continue
        elif line.startswith("a=ssrc:") and line.split()[0][7:] in rtx_ssrcs:
            continue
        kept.append(line)
    return "\r\n".join(kept), len(rtx)


async def admin(
    http: aiohttp.ClientSession, server: JanusServer, path: str, body: dict[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """One Janus admin API request (on 127.0.0.1, with this run's random admin secret)."""
    request = {**body, "transaction": f"a{next(_transactions)}", "admin_secret": server.admin_secret}
    async with http.post(
        f"{server.admin_url}{path}", json=request, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        reply = await resp.json(content_type=None)
    if reply.get("janus") != "success":
        raise BenchError(f"janus admin {body.get('janus')} {path}: {reply.get('error')}")
    return reply


async def sent_packets(
    http: aiohttp.ClientSession, server: JanusServer, handles: list[tuple[int, int]], concurrency: int = 8
) -> int:
    """RTP packets Janus sent on these (session, handle) pairs so far: ``handle_info``'s
    ``webrtc.media.*.stats.out.packets``, summed."""
    gate = asyncio.Semaphore(concurrency)

    async def one(session_id: int, handle_id: int) -> int:
        async with gate:
            reply = await admin(http, server, f"/{session_id}/{handle_id}", {"janus": "handle_info"})
        media = reply.get("info", {}).get("webrtc", {}).get("media", {})
        return sum(int(m.get("stats", {}).get("out", {}).get("packets", 0)) for m in media.values())

    return sum(await asyncio.gather(*(one(s, h) for s, h in handles)))
