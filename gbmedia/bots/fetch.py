"""HTTP for dialogs, guarded against server-side request forgery.

A dialog's GET must not reach the node's own services, the cluster's private network
or a cloud's metadata address. So every hop (the first request and each redirect) is
resolved here, every address checked (anything not globally routable is refused:
loopback, private, link-local, 169.254.169.254, unique-local, CGNAT...), and the
connection then made to exactly those checked addresses through a resolver that
answers only with them. A name that resolves differently a moment later (DNS
rebinding) therefore cannot move the connection. An instance's operator may allow
networks with the instance config key ``bots.http_allow`` (a list of CIDRs), for a
service of their own on a private network.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gbmedia.bots.errors import Fault
from gbmedia.bots.limits import Budget

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 5
RETRY_STATUSES = {429, 503}
RETRIES = 2
MAX_RETRY_WAIT = 2.0  # seconds: a Retry-After longer than this is cut to it


def allowed_networks(config: dict[str, Any]) -> list[Network]:
    """The networks an instance allows its dialogs to reach (``bots.http_allow``); bad entries are a Fault."""
    raw = (config.get("bots") or {}).get("http_allow") or []
    if not isinstance(raw, list):
        raise Fault("the instance's bots.http_allow must be a list of CIDRs")
    networks = []
    for entry in raw:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise Fault(f"the instance's bots.http_allow has {entry!r}, which is not a CIDR") from None
    return networks


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _PinnedResolver(AbstractResolver):
    """Answers a host with the addresses checked for it, and nothing else."""

    def __init__(self) -> None:
        self.pins: dict[str, list[Address]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.pins.get(host)
        if not addresses:
            raise OSError(f"{host} was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        return None


class GuardedFetcher:
    """The HttpFetcher of one instance: public addresses, plus the networks it allows."""

    def __init__(self, allow: list[Network] | None = None, user_agent: str = "gbmedia-bot") -> None:
        self.allow = allow or []
        self.user_agent = user_agent

    async def checked_addresses(self, host: str) -> list[Address]:
        """Every address ``host`` resolves to, if all are allowed; else a Fault naming the refused one."""
        try:
            addresses: list[Address] = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise Fault(f"cannot resolve {host}: {exc.strerror or exc}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:
            if not is_public(address) and not any(
                address in net for net in self.allow if net.version == address.version
            ):
                raise Fault(
                    f"HTTP to {host} ({address}) is refused: not a public address"
                    " (an operator may allow it with bots.http_allow)"
                )
        return addresses

    async def request(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str],
        auth: tuple[str, str] | None,
        budget: Budget,
    ) -> Any:
        resolver = _PinnedResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=4)
        data: bytes | None = None
        sent_headers = {"User-Agent": self.user_agent, **headers}
        if body is not None:
            if isinstance(body, dict | list):
                data = json.dumps(body).encode()
                sent_headers.setdefault("Content-Type", "application/json")
            else:
                data = str(body).encode()
                sent_headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        if auth is not None:
            sent_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        async with aiohttp.ClientSession(connector=connector) as session:
            current = url
            for _hop in range(MAX_REDIRECTS + 1):
                parts = urlsplit(current)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise Fault(f"{current!r} is not an http(s) URL")
                resolver.pins[parts.hostname] = await self.checked_addresses(parts.hostname)
                status, answer_headers, payload = await self._send(session, method, current, data, sent_headers, budget)
                if status in (301, 302, 303, 307, 308) and "Location" in answer_headers:
                    current = urljoin(current, answer_headers["Location"])
                    if status == 303 or (status in (301, 302) and method != "GET"):
                        method, data = "GET", None
                    if urlsplit(current).hostname != parts.hostname:
                        sent_headers.pop("Authorization", None)  # credentials never follow a redirect to another host
                    continue
                return self._decode(status, answer_headers, payload, method, url)
            raise Fault(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
        budget: Budget,
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(RETRIES + 1):
            budget.http_call()
            timeout = aiohttp.ClientTimeout(total=budget.remaining_seconds())
            try:
                async with session.request(
                    method, url, data=data, headers=headers, allow_redirects=False, timeout=timeout
                ) as response:
                    chunks = []
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        budget.http_received(len(chunk))
                        chunks.append(chunk)
                    status, answer_headers = response.status, dict(response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                budget.check_time()
                raise Fault(f"{method} {url} failed: {exc.__class__.__name__} {exc}") from None
            if status in RETRY_STATUSES and attempt < RETRIES:
                await asyncio.sleep(min(_retry_after(answer_headers), MAX_RETRY_WAIT, budget.remaining_seconds()))
                continue
            return status, answer_headers, b"".join(chunks)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _decode(status: int, headers: dict[str, str], payload: bytes, method: str, url: str) -> Any:
        if status >= 400:
            raise Fault(f"{method} {url} answered {status}")
        text = payload.decode("utf-8", errors="replace")
        if "json" in headers.get("Content-Type", "").lower():
            try:
                return json.loads(text)
            except ValueError:
                raise Fault(f"{method} {url} answered invalid JSON") from None
        return text


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", "0.5")))
    except ValueError:
        return 0.5
