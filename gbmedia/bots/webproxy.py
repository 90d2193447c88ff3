"""The forward proxy every bot browser context connects through: the SSRF guard of web automation.

A page makes requests of its own (redirects, images, frames, fetch, WebSockets), and
Playwright's request interception sees only the first URL of a redirect chain, while
Chromium resolves names itself (a second resolution a rebinding name can move). So the
node's browser contexts reach the network only through this proxy, on loopback: it
resolves each host with :class:`gbmedia.http.guard.DestinationGuard` (the instance's
``bots.http_allow`` networks allowed), refuses anything else with 403, and connects to
exactly the address it checked. HTTPS and WebSockets come as ``CONNECT``; plain HTTP as
an absolute-form request, forwarded with ``Connection: close`` so that every request of a
reused client connection is checked again. Each context authenticates with a token of
its own (proxy Basic credentials), which tells the proxy whose allow-list applies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gbmedia.http.guard import DestinationGuard, DestinationRefused

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
HEAD_SECONDS = 30.0
CONNECT_SECONDS = 10.0
_HOP_HEADERS = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@dataclass
class Tenant:
    """A browser context as the proxy knows it: its guard, and where its refusals are told."""

    guard: DestinationGuard
    refused: Callable[[str], None]


class GuardProxy:
    """A small HTTP/CONNECT proxy on 127.0.0.1 that lets a context reach only what its guard allows."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tenants: dict[str, Tenant] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
            self.port = self.server.sockets[0].getsockname()[1]

    def register(self, tenant: Tenant) -> str:
        token = secrets.token_hex(16)
        self.tenants[token] = tenant
        return token

    def unregister(self, token: str) -> None:
        self.tenants.pop(token, None)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def _tenant(self, headers: list[str]) -> Tenant | None:
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                scheme, _, encoded = value.strip().partition(" ")
                if scheme.lower() != "basic":
                    return None
                try:
                    user = base64.b64decode(encoded.strip(), validate=True).decode().split(":")[0]
                except (binascii.Error, UnicodeDecodeError):
                    return None
                return self.tenants.get(user)
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
        lines = head.decode("latin-1").split("\r\n")[:-2]
        method, target, version = lines[0].split(" ", 2)
        headers = lines[1:]
        tenant = self._tenant(headers)
        if tenant is None:
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="gbmedia"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            path = ""
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, port_text = parts.hostname, str(parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = host.strip("[]")
        try:
            port = int(port_text)
            addresses = await tenant.guard.checked_addresses(host)
        except DestinationRefused as exc:
            tenant.refused(str(exc).replace("HTTP to", "a page's request to"))
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        upstream = None
        for address in addresses:  # exactly the checked addresses: a second resolution cannot move it
            with contextlib.suppress(OSError, TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(str(address), port), CONNECT_SECONDS)
                break
        if upstream is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        up_reader, up_writer = upstream
        try:
            if method.upper() == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                kept = [h for h in headers if h.partition(":")[0].strip().lower() not in _HOP_HEADERS]
                request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
                up_writer.write(request.encode("latin-1"))
            sending = asyncio.ensure_future(_pipe(reader, up_writer))
            try:
                await _pipe(up_reader, writer)  # the answer ends when the server closes: then so does the client's
            finally:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
        finally:
            up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()
