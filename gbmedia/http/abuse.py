"""Abuse limits counted per source address: failed authentications, joins and new media sessions.

The REST budget counts an authenticated caller (an API key and its token's identity);
what comes before authentication has no caller yet, so it is counted against the
address it came from. A failed authentication costs database queries and a decrypt,
so an address that fails too often is refused (429 ``rate_limited``) before any of
that work; the failure bucket is only looked at (``peek``) on each attempt and
charged on failures, so a client that authenticates never spends it. Joining a room
(``/rtc`` ``join`` and ``auth``) and creating a WHIP or WHEP session build peer
connections and rooms, so they have a per-address budget of their own.

The source address is the TCP peer, or, when that peer is a trusted proxy
(``GBMEDIA_TRUSTED_PROXIES``, e.g. deploy/'s haproxy with ``option forwardfor``),
the right-most ``X-Forwarded-For`` address that is not itself a trusted proxy: the
left-most entries are whatever the client chose to send and are never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from gbmedia.errors import ApiError
from gbmedia.ratelimit import Decision, RateLimiter

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose ``X-Forwarded-For`` is believed (none by default)."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """``"10.0.0.0/8, 192.168.1.7"`` (addresses or CIDR networks, comma-separated); ValueError if not."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        return cls(tuple(ipaddress.ip_network(item, strict=False) for item in items))

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def source_address(request: web.Request, trusted: TrustedProxies) -> str:
    """Who sent ``request``: the peer, or the client a trusted proxy names (see the module docstring)."""
    peer = request.remote or "unknown"
    if not trusted.trusts(peer):
        return peer
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", ()) for hop in header.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage from before a trusted hop: the last address known is the proxy's
        if not trusted.trusts(hop):
            return hop
    return peer


def rate_limited(decision: Decision, limit: str) -> ApiError:
    """The 429 for a spent budget; the API middleware and WHIP turn ``retry_after`` into ``Retry-After``."""
    return ApiError(
        429,
        "rate_limited",
        "too many requests; retry later",
        {"retry_after": round(decision.retry_after, 3), "limit": limit},
    )


@dataclass(frozen=True)
class AbuseLimits:
    """The per-address budgets of one node (shared through Redis in a cluster)."""

    auth_failures: RateLimiter  # GBMEDIA_AUTH_FAILURE_RATE / _BURST
    joins: RateLimiter  # GBMEDIA_JOIN_RATE_LIMIT / _BURST
    trusted_proxies: TrustedProxies = TrustedProxies()

    def source(self, request: web.Request) -> str:
        return source_address(request, self.trusted_proxies)

    async def authenticate(self, address: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``'s credential check, refused before it runs once ``address`` failed too often."""
        key = f"authfail:{address}"
        decision = await self.auth_failures.peek(key)
        if not decision.allowed:
            raise rate_limited(decision, "auth_failures")
        try:
            return await attempt()
        except ApiError as exc:
            if exc.status in (401, 403):
                await self.auth_failures.take(key)
            raise

    async def join(self, address: str) -> None:
        """One join or new media session from ``address``; 429 once its budget is spent."""
        decision = await self.joins.take(f"join:{address}")
        if not decision.allowed:
            raise rate_limited(decision, "joins")
