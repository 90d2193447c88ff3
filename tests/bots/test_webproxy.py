"""The guard proxy bot browsers connect through, spoken to directly: what passes, what is refused and why."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gbmedia.bots.webproxy import GuardProxy, Tenant
from gbmedia.http.guard import DestinationGuard


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.path_qs} {request.headers.get('Proxy-Authorization', 'no auth')}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server.port
    await server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[GuardProxy, str, list[str]]]:
    guard = GuardProxy()
    await guard.start()
    refused: list[str] = []
    token = guard.register(
        Tenant(DestinationGuard([ipaddress.ip_network("127.0.0.0/8")], "bots.http_allow"), refused.append)
    )
    yield guard, token, refused
    await guard.close()


async def raw(port: int, head: str) -> str:
    """Send ``head`` to the proxy; its answer's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return line.decode().strip()


def auth(token: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(f"{token}:-".encode()).decode() + "\r\n"


async def test_plain_http_passes_to_an_allowed_address_without_the_proxy_credentials(proxy, upstream: int) -> None:
    guard, token, refused = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)
    head = f"GET http://127.0.0.1:{upstream}/page?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
    writer.write(f"{head}{auth(token)}\r\n".encode())
    answer = await reader.read()  # the proxy asked the server to close: the answer ends the connection
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello /page?x=1 no auth")
    assert refused == []


async def test_connect_tunnels_to_an_allowed_address(proxy, upstream: int) -> None:
    guard, token, _ = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)
    writer.write(f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n{auth(token)}\r\n".encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await reader.readline()
    writer.write(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello /tunnel no auth")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("GET http://127.0.0.1/ HTTP/1.1\r\n\r\n", "407"),  # no credentials
        ("GET http://127.0.0.1/ HTTP/1.1\r\nProxy-Authorization: Basic bm9ib2R5Oi0=\r\n\r\n", "407"),  # unknown
        ("GET http://127.0.0.1/ HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\n", "407"),
        ("GET http://127.0.0.1/ HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n", "407"),
    ],
)
async def test_a_caller_without_a_contexts_credentials_is_refused(proxy, head: str, status: str) -> None:
    guard, _, _ = proxy
    assert (await raw(guard.port, head)).split()[1] == status


async def test_private_addresses_are_refused_and_the_reason_kept(proxy) -> None:
    guard, token, refused = proxy
    assert (await raw(guard.port, f"CONNECT 10.255.255.1:443 HTTP/1.1\r\n{auth(token)}\r\n")).split()[1] == "403"
    assert (await raw(guard.port, f"GET http://169.254.169.254/ HTTP/1.1\r\n{auth(token)}\r\n")).split()[1] == "403"
    assert (await raw(guard.port, f"GET ftp://127.0.0.1/ HTTP/1.1\r\n{auth(token)}\r\n")).split()[1] == "400"
    assert "10.255.255.1" in refused[0] and "169.254.169.254" in refused[1]
    assert all("bots.http_allow" in r for r in refused)


async def test_an_allowed_address_that_does_not_answer_is_a_bad_gateway(proxy) -> None:
    guard, token, _ = proxy
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert (await raw(guard.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{auth(token)}\r\n")).split()[1] == "502"
    guard.unregister(token)
    assert (await raw(guard.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{auth(token)}\r\n")).split()[1] == "407"
