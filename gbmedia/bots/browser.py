"""Web automation for dialogs: one Chromium per node, a bounded pool of contexts per instance.

A dialog's ``OPEN url`` drives a real browser (Playwright for Python on Debian's
``/usr/bin/chromium``; nothing is downloaded). The node starts one browser process, the
first time a dialog needs it, and gives each run its own browser *contexts* (cookies,
storage and downloads of their own): one per named session (``OPEN url AS "shop"``), so
the steps of a dialog share a session and two runs never see each other's pages.

Bounds (``GBMEDIA_BOT_BROWSER_*``, :class:`BrowserLimits`): contexts open at once per
instance, pages per context, how long a context may live (it is closed when that time
is up, whatever the dialog is doing), each action's time limit, and the JavaScript heap
of the browser's renderers. A run's contexts close when the run ends or stops at a HEAR:
its state is JSON that may resume on another node, where the pages would not exist.

Server-side request forgery: a page is a way to make the node send requests. So each
context reaches the network only through the node's guard proxy
(:mod:`gbmedia.bots.webproxy`): the navigation, each redirect, and every image, script,
frame, fetch, download and WebSocket a page asks for is resolved and checked by
:mod:`gbmedia.http.guard` with the instance's ``bots.http_allow`` networks, and
connected to exactly the address checked; loopback, private, link-local and metadata
addresses are refused (403), DNS rebinding included. ``OPEN`` takes only http and https.

Handles are cyrb53 hashes (the old platform's 53-bit string hash) of a random nonce:
numbers as text, known only to the instance that made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gbmedia.bots.errors import Fault
from gbmedia.bots.webproxy import GuardProxy, Tenant
from gbmedia.http.guard import DestinationGuard, Network

log = logging.getLogger(__name__)

DEFAULT_CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 720}
HINT = "the instance config key bots.http_allow"


def cyrb53(text: str, seed: int = 0) -> int:
    """The 53-bit cyrb53 hash of ``text`` (UTF-16 code units, as JavaScript's charCodeAt sees them)."""
    mask = 0xFFFFFFFF
    h1 = (0xDEADBEEF ^ seed) & mask
    h2 = (0x41C6CE57 ^ seed) & mask
    units = text.encode("utf-16-le")
    for i in range(0, len(units), 2):
        ch = units[i] | (units[i + 1] << 8)
        h1 = ((h1 ^ ch) * 2654435761) & mask
        h2 = ((h2 ^ ch) * 1597334677) & mask
    h1 = ((h1 ^ (h1 >> 16)) * 2246822507) & mask
    h1 ^= ((h2 ^ (h2 >> 13)) * 3266489909) & mask
    h2 = ((h2 ^ (h2 >> 16)) * 2246822507) & mask
    h2 ^= ((h1 ^ (h1 >> 13)) * 3266489909) & mask
    return 4294967296 * (2097151 & h2) + h1


@dataclass(frozen=True, slots=True)
class BrowserLimits:
    """What one node's browser gives dialogs (``GBMEDIA_BOT_BROWSER_*``)."""

    contexts_per_instance: int = 4
    pages_per_context: int = 4
    context_seconds: float = 300.0
    action_seconds: float = 10.0
    memory_mb: int = 256  # the V8 heap of each renderer (--max-old-space-size)
    executable: str = DEFAULT_CHROMIUM

    @classmethod
    def from_settings(cls, settings: Any) -> BrowserLimits:
        return cls(
            contexts_per_instance=settings.bot_browser_contexts,
            pages_per_context=settings.bot_browser_pages,
            context_seconds=settings.bot_browser_seconds,
            action_seconds=settings.bot_browser_action_seconds,
            memory_mb=settings.bot_browser_memory_mb,
            executable=settings.bot_browser_executable,
        )


@dataclass
class Session:
    """One browser context of one run: its pages and when it must close."""

    instance_id: str
    owner: str
    name: str
    context: Any
    deadline: float
    pages: list[Any] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # requests the guard aborted: what a refusal says
    expiry: asyncio.TimerHandle | None = None
    token: str = ""  # its credentials at the guard proxy


@dataclass(slots=True)
class Handle:
    """What a handle names: a page, or an element (a selector, maybe inside a frame) of a page."""

    instance_id: str
    owner: str
    session: Session
    page: Any
    selector: str | None = None
    frame: str | None = None


class Browsers:
    """The node's browser and the contexts dialogs hold in it."""

    def __init__(self, limits: BrowserLimits | None = None) -> None:
        self.limits = limits or BrowserLimits()
        self._playwright: Any = None
        self._browser: Any = None
        self._starting = asyncio.Lock()
        self._opening = asyncio.Lock()
        self.sessions: dict[tuple[str, str, str], Session] = {}
        self.handles: dict[str, Handle] = {}
        self.currents: dict[tuple[str, str], str] = {}  # (instance, owner) -> its current page's handle
        self.closed = False
        self.proxy = GuardProxy()

    @property
    def started(self) -> bool:
        return self._browser is not None

    async def _browser_process(self) -> Any:
        async with self._starting:
            if self.closed:
                raise Fault("the node is shutting down: web automation is not available")
            if self._browser is None or not self._browser.is_connected():
                from playwright.async_api import async_playwright

                await self.proxy.start()
                if self._playwright is None:
                    self._playwright = await async_playwright().start()
                try:
                    self._browser = await self._playwright.chromium.launch(
                        executable_path=self.limits.executable,
                        headless=True,
                        args=[
                            "--no-sandbox",
                            "--disable-dev-shm-usage",
                            "--dns-prefetch-disable",
                            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
                            f"--js-flags=--max-old-space-size={self.limits.memory_mb}",
                        ],
                        timeout=30_000,
                    )
                except Exception as exc:
                    raise Fault(f"the browser cannot start ({type(exc).__name__})") from None
            return self._browser

    # --- sessions ----------------------------------------------------------------------

    def _count(self, instance_id: str) -> int:
        return sum(1 for s in self.sessions.values() if s.instance_id == instance_id)

    async def session(self, instance_id: str, owner: str, name: str, allow: list[Network]) -> Session:
        """The run's context named ``name``, opened when it has none; at most ``contexts_per_instance`` at once."""
        key = (instance_id, owner, name)
        async with self._opening:
            found = self.sessions.get(key)
            if found is not None:
                return found
            if self._count(instance_id) >= self.limits.contexts_per_instance:
                raise Fault(
                    f"the instance has {self.limits.contexts_per_instance} browser sessions open already "
                    "(GBMEDIA_BOT_BROWSER_CONTEXTS)"
                )
            browser = await self._browser_process()
            session = Session(instance_id, owner, name, None, time.monotonic() + self.limits.context_seconds)
            tenant = Tenant(DestinationGuard(allow, HINT), session.refused.append)
            session.token = self.proxy.register(tenant)
            proxy = {
                "server": f"http://127.0.0.1:{self.proxy.port}",
                "username": session.token,
                "password": "-",
                "bypass": "<-loopback>",  # Chromium sends loopback around a proxy unless told not to
            }
            try:
                context = await browser.new_context(
                    viewport=VIEWPORT, accept_downloads=True, service_workers="block", proxy=proxy
                )
            except BaseException:
                self.proxy.unregister(session.token)
                raise
            session.context = context
            context.set_default_timeout(self.limits.action_seconds * 1000)
            context.set_default_navigation_timeout(self.limits.action_seconds * 1000)
            loop = asyncio.get_running_loop()
            session.expiry = loop.call_later(
                self.limits.context_seconds, lambda: asyncio.ensure_future(self._expire(session))
            )
            self.sessions[key] = session
            return session

    async def _expire(self, session: Session) -> None:
        log.info("a bot's browser session reached GBMEDIA_BOT_BROWSER_SECONDS", extra={"session": session.name})
        await self._close_session(session)

    async def _close_session(self, session: Session) -> None:
        if self.sessions.get((session.instance_id, session.owner, session.name)) is session:
            del self.sessions[(session.instance_id, session.owner, session.name)]
        if session.expiry is not None:
            session.expiry.cancel()
        for key in [k for k, h in self.handles.items() if h.session is session]:
            del self.handles[key]
        self.proxy.unregister(session.token)
        with contextlib.suppress(Exception):  # a context the browser already lost
            await session.context.close()

    async def close_owner(self, instance_id: str, owner: str) -> int:
        """Close every context of a run (when it ends or suspends): how many there were."""
        self.currents.pop((instance_id, owner), None)
        mine = [s for s in list(self.sessions.values()) if s.instance_id == instance_id and s.owner == owner]
        for session in mine:
            await self._close_session(session)
        return len(mine)

    async def close(self) -> None:
        """The node stops: every context, the browser, the Playwright driver."""
        self.closed = True
        for session in list(self.sessions.values()):
            await self._close_session(session)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None
        await self.proxy.close()

    # --- handles -----------------------------------------------------------------------

    def new_handle(self, handle: Handle) -> str:
        name = str(cyrb53(f"{handle.instance_id}:{handle.owner}:{secrets.token_hex(16)}"))
        self.handles[name] = handle
        return name

    def handle(self, instance_id: str, name: str) -> Handle:
        found = self.handles.get(name)
        if found is None or found.instance_id != instance_id:
            raise Fault(f"no web page or element {name}: it was closed, or never opened")
        return found

    async def new_page(self, session: Session) -> Any:
        session.pages = [p for p in session.pages if not p.is_closed()]
        if len(session.pages) >= self.limits.pages_per_context:
            raise Fault(
                f"a browser session holds at most {self.limits.pages_per_context} pages (GBMEDIA_BOT_BROWSER_PAGES)"
            )
        page = await session.context.new_page()
        session.pages.append(page)
        return page

    def check_url(self, url: str) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise Fault(f"OPEN takes an http or https address, not {url[:100]!r}")


@dataclass
class WebRun:
    """What one run holds of the browser: its sessions (by name), its current page, its allowed networks.

    ``owner`` tells this run's contexts from other runs' of the same instance. A dialog's
    run has its own, and :meth:`release` closes them when the run ends or waits. The
    keyword API names each caller's owner (:meth:`keep_for`), so a caller's pages and
    current page last from one call to the next until ``closeHandles`` or
    ``GBMEDIA_BOT_BROWSER_SECONDS``.
    """

    browsers: Browsers
    instance_id: str
    allow: list[Network] = field(default_factory=list)
    owner: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def current(self) -> str | None:
        """The handle of the page the statements act on (the last opened or chosen)."""
        handle = self.browsers.currents.get((self.instance_id, self.owner))
        return handle if handle in self.browsers.handles else None

    @current.setter
    def current(self, handle: str | None) -> None:
        if handle is None:
            self.browsers.currents.pop((self.instance_id, self.owner), None)
        else:
            self.browsers.currents[(self.instance_id, self.owner)] = handle

    def keep_for(self, caller: str) -> None:
        """Act as ``caller`` (a keyword API credential): its sessions and current page, kept between calls."""
        self.owner = f"http:{caller}"

    async def release(self) -> int:
        self.current = None
        return await self.browsers.close_owner(self.instance_id, self.owner)
