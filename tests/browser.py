"""Real-browser tests: Debian's Chromium, headless, with a fake camera and microphone.

Playwright's Python package drives the system Chromium (``/usr/bin/chromium``, Debian
package ``chromium``); its wheel carries its own Node driver, and it never downloads a
browser here (``playwright install`` would fail, and is not needed).

Registered as a pytest plugin from ``tests/conftest.py``, so every test can ask for:

- ``browser`` (per test): a :class:`Browser`. ``await browser.open(url)`` gives a
  :class:`Tab`, each in its own fresh browser context (own cookies and storage, like a
  separate user). Everything it opened is closed when the test ends, and each tab's
  console is printed then (pytest shows it only for a failing test).
- ``chromium_executable`` (per session): the path; when Chromium or Playwright is
  missing, the test fails in CI (``CI`` set) and skips elsewhere, with the reason.

A :class:`Tab` offers ``evaluate(js)``, ``wait_for(js, timeout=...)``, the console
messages and errors it saw (``console``, ``errors``), ``assert_no_errors()`` and the raw
Playwright ``page``.

getUserMedia needs a secure context. Plain ``http://`` is secure only on loopback, but
WebRTC on these machines runs over the interface address
(``gbmedia.config.detect_public_host()``), so pages are usually served there. ``open``
therefore starts one Chromium process per such insecure origin, launched with
``--unsafely-treat-insecure-origin-as-secure=<origin>`` (Chromium matches that flag on
the exact origin, port included, and reads it only at start); secure URLs share one
process. Every context is granted camera and microphone, which also makes Chromium put
real IP addresses in its ICE candidates instead of hiding them behind mDNS ``.local``
names, which other peers (aiortc) cannot always resolve.

Outside pytest::

    async with chromium() as browser:
        tab = await browser.open("http://192.0.2.2:8080/")
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser as PlaywrightBrowser
    from playwright.async_api import BrowserContext, ConsoleMessage, Page, Playwright

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--use-fake-device-for-media-stream",  # a 640x480 test pattern and a beeping microphone
    "--use-fake-ui-for-media-stream",  # accept getUserMedia without a prompt
    "--autoplay-policy=no-user-gesture-required",
    # This machine's network is closed: without these Chromium keeps trying Google's hosts.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # --user-data-dir: Playwright gives each process a fresh temporary profile itself
    # (and refuses the flag in args); it deletes the profile when the process closes.
)
MEDIA_PERMISSIONS = ("camera", "microphone")
IN_CI = bool(os.environ.get("CI"))


def service_missing(reason: str) -> None:
    """Fail in CI (a missing service is a broken build), skip elsewhere.

    The same rule as ``service_missing`` in tests/conftest.py, repeated here so this
    plugin does not import the conftest module.
    """
    if IN_CI:
        pytest.fail(f"required test service missing: {reason}")
    pytest.skip(reason)


def find_chromium() -> str | None:
    """``$GBMEDIA_TEST_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else ``chromium`` on PATH."""
    configured = os.environ.get("GBMEDIA_TEST_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access(DEFAULT_CHROMIUM, os.X_OK):
        return DEFAULT_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def insecure_origin(url: str) -> str | None:
    """The origin of an ``http://`` URL that Chromium would not treat as secure, else None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"http://{parts.netloc.lower()}"


class Tab:
    """One page in its own browser context, with its console recorded."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.console: list[str] = []  # every console message, as "type: text"
        self.errors: list[str] = []  # console errors (but a missing favicon) and uncaught exceptions
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("crash", lambda _page: self.errors.append("page crashed"))

    def _on_console(self, message: ConsoleMessage) -> None:
        source = message.location.get("url") or ""
        line = f"{message.type}: {message.text}" + (f" ({source})" if source else "")
        self.console.append(line)
        # The favicon a page does not declare is fetched anyway; its 404 is no page error.
        if message.type == "error" and not urlsplit(source).path.endswith("/favicon.ico"):
            self.errors.append(line)

    def _on_page_error(self, error: Exception) -> None:
        line = f"uncaught: {error}"
        self.console.append(line)
        self.errors.append(line)

    async def evaluate(self, js: str, arg: Any = None) -> Any:
        """Value of a JS expression or function source (``"() => ..."``); promises are awaited."""
        return await self.page.evaluate(js, arg)

    async def wait_for(
        self,
        js: str,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the deadline is the point: its failure names the condition
        interval: float = 0.05,
        arg: Any = None,
    ) -> Any:
        """Evaluate ``js`` until it is truthy and return that value; AssertionError after ``timeout`` s.

        Errors while evaluating (say, mid-navigation) count as "not yet"; the last
        value or error, and the page's errors, go into the failure message.
        """
        from playwright.async_api import Error as PlaywrightError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while True:
            try:
                last = await self.page.evaluate(js, arg)
            except PlaywrightError as exc:
                last = exc
            else:
                if last:
                    return last
            if loop.time() >= deadline:
                raise AssertionError(
                    f"waited {timeout:g} s for `{js}`; last value {last!r}; page errors: {self.errors or 'none'}"
                )
            await asyncio.sleep(interval)

    def assert_no_errors(self) -> None:
        assert not self.errors, "page errors:\n" + "\n".join(self.errors)

    async def close(self) -> None:
        await self.context.close()

    async def __aenter__(self) -> Tab:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Browser:
    """Opens :class:`Tab` s in headless Chromium processes that it starts on demand."""

    def __init__(
        self,
        playwright: Playwright,
        executable: str,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.playwright = playwright
        self.executable = executable
        self.extra_args = tuple(extra_args)
        self.env = dict(env) if env is not None else None  # the processes' environment (HOME: its NSS trust store)
        self.tabs: list[Tab] = []
        self._processes: dict[str | None, PlaywrightBrowser] = {}  # insecure origin (or None) -> process
        self._launching = asyncio.Lock()

    async def _process_for(self, url: str) -> PlaywrightBrowser:
        origin = insecure_origin(url)
        async with self._launching:
            if origin not in self._processes:
                args = [*CHROMIUM_FLAGS, *self.extra_args]
                if origin:
                    args.append(f"--unsafely-treat-insecure-origin-as-secure={origin}")
                options: dict[str, Any] = {"env": self.env} if self.env is not None else {}
                self._processes[origin] = await self.playwright.chromium.launch(
                    executable_path=self.executable, headless=True, args=args, timeout=30_000, **options
                )
            return self._processes[origin]

    async def open(
        self,
        url: str,
        *,
        permissions: Sequence[str] = MEDIA_PERMISSIONS,
        timeout: float = 15.0,  # noqa: ASYNC109 - Playwright's per-page default, not an asyncio deadline
        viewport: tuple[int, int] | None = None,
        device_scale_factor: float | None = None,
        init_script: str | None = None,
    ) -> Tab:
        """Load ``url`` in a new tab with a fresh context; ``timeout`` (s) also becomes the page's default.

        ``viewport`` (CSS pixels) and ``device_scale_factor`` (devicePixelRatio) make the
        tab look like another screen, a phone's say; Playwright's defaults otherwise (1280x720, 1).
        ``init_script`` runs in the page before its own scripts (to watch what a page calls).
        """
        process = await self._process_for(url)
        options: dict[str, Any] = {"permissions": list(permissions)}
        if viewport is not None:
            options["viewport"] = {"width": viewport[0], "height": viewport[1]}
        if device_scale_factor is not None:
            options["device_scale_factor"] = device_scale_factor
        context = await process.new_context(**options)
        context.set_default_timeout(timeout * 1000)
        if init_script is not None:
            await context.add_init_script(init_script)
        tab = Tab(context, await context.new_page())
        self.tabs.append(tab)
        await tab.page.goto(url)
        return tab

    def report(self) -> str:
        """Every tab's console, for a failing test's output."""
        return "\n".join(
            f"--- tab {n}: {tab.page.url}\n" + "\n".join(tab.console or ["(no console output)"])
            for n, tab in enumerate(self.tabs, 1)
        )

    async def close(self) -> None:
        for tab in self.tabs:
            await tab.close()
        for process in self._processes.values():
            await process.close()
        self._processes.clear()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@asynccontextmanager
async def chromium(executable: str | None = None, *, extra_args: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """A :class:`Browser` with its own Playwright driver, for use outside pytest."""
    from playwright.async_api import async_playwright

    found = executable or find_chromium()
    if not found:
        raise RuntimeError(f"no Chromium at {DEFAULT_CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright, Browser(playwright, found, extra_args=extra_args) as browser:
        yield browser


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    found = find_chromium()
    if not found:
        where = os.environ.get("GBMEDIA_TEST_CHROMIUM") or DEFAULT_CHROMIUM
        service_missing(f"Chromium not found at {where} (Debian package chromium; scripts/test installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        service_missing("the playwright package is missing (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="session")
async def playwright_driver(chromium_executable: str) -> AsyncIterator[Playwright]:
    """Playwright's Node driver, started once per session (about 0.5 s)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        yield playwright


@pytest.fixture
async def browser(playwright_driver: Playwright, chromium_executable: str) -> AsyncIterator[Browser]:
    async with Browser(playwright_driver, chromium_executable) as opened:
        yield opened
        if opened.tabs:
            print(opened.report())
