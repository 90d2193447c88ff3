"""HTTP for dialogs, guarded against server-side request forgery.

A dialog's GET must not reach the node's own services, the cluster's private network
or a cloud's metadata address. So every hop (the first request and each redirect) is
resolved here, every address checked (anything not globally routable is refused:
loopback, private, link-local, 169.254.169.254, unique-local, CGNAT...), and the
connection then made to exactly those checked addresses through a resolver that
answers only with them. A name that resolves differently a moment later (DNS
rebinding) therefore cannot move the connection. An instance's operator may allow
networks with the instance config key ``bots.http_allow`` (a list of CIDRs), for a
service of their own on a private network. The checks themselves are
:mod:`gbmedia.http.guard`'s, shared with webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from gbmedia.bots.errors import Fault
from gbmedia.bots.limits import Budget
from gbmedia.http.guard import (
    Address,
    DestinationGuard,
    DestinationRefused,
    Network,
    PinnedResolver,
    is_public,  # noqa: F401  (re-exported: the bots' callers and tests import it from here)
    parse_networks,
    pinned_session,
)

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
            networks.extend(parse_networks([entry]))
        except ValueError:
            raise Fault(f"the instance's bots.http_allow has {entry!r}, which is not a CIDR") from None
    return networks


# The guard is shared with webhooks (gbmedia/http/guard.py); these names stay for the bots' callers.
_PinnedResolver = PinnedResolver


class GuardedFetcher:
    """The HttpFetcher of one instance: public addresses, plus the networks it allows."""

    def __init__(self, allow: list[Network] | None = None, user_agent: str = "gbmedia-bot") -> None:
        self.allow = allow or []
        self.user_agent = user_agent
        self.guard = DestinationGuard(self.allow, hint="bots.http_allow")

    async def checked_addresses(self, host: str) -> list[Address]:
        """Every address ``host`` resolves to, if all are allowed; else a Fault naming the refused one."""
        try:
            return await self.guard.checked_addresses(host)
        except DestinationRefused as exc:
            raise Fault(str(exc)) from None

    async def request(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str],
        auth: tuple[str, str] | None,
        budget: Budget,
    ) -> Any:
        resolver = PinnedResolver()
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
        async with pinned_session(resolver) as session:
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
