"""Outgoing HTTP to addresses a tenant chose, guarded against server-side request forgery.

Bots' dialogs (``GET``/``POST`` in GB BASIC) and webhooks both send requests to URLs a
tenant wrote. Such a request must not reach the node's own services, the cluster's
private network or a cloud's metadata address. So the host is resolved here, every
address checked (anything not globally routable is refused: loopback, private,
link-local, 169.254.169.254, unique-local, CGNAT, multicast...), and the connection
then made to exactly those checked addresses through :class:`PinnedResolver`, which
answers only with them: a name that resolves differently a moment later (DNS
rebinding) cannot move the connection. Networks an operator or a tenant allows on
purpose (a service of their own on a private network) pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(ValueError):
    """The host cannot be resolved, or resolves to an address that is neither public nor allowed."""


def parse_networks(entries: Iterable[object]) -> list[Network]:
    """CIDRs (or single addresses) as networks; raises ValueError naming the first bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return networks


def is_public(address: Address) -> bool:
    """Globally routable unicast (an IPv4-mapped IPv6 address is judged as its IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class PinnedResolver(AbstractResolver):
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


class DestinationGuard:
    """Which addresses outgoing requests may reach: public ones, plus ``allow``."""

    def __init__(self, allow: list[Network] | None = None, hint: str = "") -> None:
        self.allow = allow or []
        self.hint = hint  # how an operator allows more, for the refusal's message

    def allowed(self, address: Address) -> bool:
        return is_public(address) or any(address in net for net in self.allow if net.version == address.version)

    def literal_refusal(self, host: str) -> str | None:
        """Why ``host`` is refused without resolving it (an IP literal or a localhost name), else None."""
        name = host.strip("[]").rstrip(".").lower()
        try:
            address = ipaddress.ip_address(name.split("%")[0])
        except ValueError:
            if name == "localhost" or name.endswith(".localhost"):
                address = ipaddress.ip_address("127.0.0.1")
            else:
                return None
        return None if self.allowed(address) else self._refusal(host, address)

    async def checked_addresses(self, host: str) -> list[Address]:
        """Every address ``host`` resolves to, if all are allowed; else :class:`DestinationRefused`."""
        try:
            addresses: list[Address] = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise DestinationRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:
            if not self.allowed(address):
                raise DestinationRefused(self._refusal(host, address))
        return addresses

    def _refusal(self, host: str, address: Address) -> str:
        hint = f" (an operator may allow it with {self.hint})" if self.hint else ""
        return f"HTTP to {host} ({address}) is refused: not a public address{hint}"


def pinned_session(resolver: PinnedResolver, *, limit: int = 4) -> aiohttp.ClientSession:
    """A client session that connects only to the addresses pinned in ``resolver``."""
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=limit)
    return aiohttp.ClientSession(connector=connector)
