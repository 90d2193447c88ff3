"""Web automation built-ins: OPEN, GET "selector", CLICK, HOVER, PRESS, SET, TEXT OF, SCREENSHOT, DOWNLOAD.

The names are the old platform's ``webAutomation`` keywords (``openPage``,
``getBySelector``, ``click``...). They act on the run's *current page*: the last one
``OPEN`` opened or ``getPageByHandle`` chose. A target is a CSS selector, or an element
that ``GET "selector"`` / ``getByFrame(frame, selector)`` gave (an object with a
``handle``, or the handle itself). The browser, its bounds and its guard against
private addresses are :mod:`gbmedia.bots.browser`'s.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gbmedia.bots.browser import HINT, Handle, WebRun, cyrb53
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text
from gbmedia.http.guard import DestinationGuard, DestinationRefused

builtin = REGISTRY.builtin

# PRESS ENTER and friends: BASIC's key words as Playwright names them.
KEYS = {
    "ENTER": "Enter",
    "RETURN": "Enter",
    "TAB": "Tab",
    "ESCAPE": "Escape",
    "ESC": "Escape",
    "BACKSPACE": "Backspace",
    "DELETE": "Delete",
    "SPACE": " ",
    "UP": "ArrowUp",
    "DOWN": "ArrowDown",
    "LEFT": "ArrowLeft",
    "RIGHT": "ArrowRight",
    "HOME": "Home",
    "END": "End",
    "PAGEUP": "PageUp",
    "PAGEDOWN": "PageDown",
}

_SELECTOR = re.compile(r"^[#.\[*:]|^[a-zA-Z][\w-]*([#.\[:> ~+]|$)")
_ELEMENT_INFO = """e => ({
  tag: e.tagName.toLowerCase(),
  text: (e.innerText ?? e.textContent ?? "").trim(),
  value: ("value" in e) ? e.value : null,
  href: e.href || null,
})"""


def is_selector(text: str) -> bool:
    """Whether ``text`` reads as a CSS selector rather than an address or prose (``#id``, ``.c``, ``form input``)."""
    text = text.strip()
    if not text or "://" in text or text.startswith(("/", "www.")):
        return False
    return bool(_SELECTOR.match(text))


def _web(ctx: Context) -> WebRun:
    return ctx.need_web()


def _page_handle(ctx: Context) -> Handle:
    web = _web(ctx)
    if web.current is None:
        raise Fault("no web page is open: OPEN one first")
    return web.browsers.handle(ctx.instance_id, web.current)


def _handle_of(ctx: Context, target: Any) -> Handle | None:
    """The element handle ``target`` names (an object from GET, or its handle), else None (a selector)."""
    name = target.get("handle") if isinstance(target, dict) else target
    if isinstance(name, int | float) and not isinstance(name, bool):
        name = str(int(name))
    if isinstance(name, str) and name.isdigit() and name in _web(ctx).browsers.handles:
        return _web(ctx).browsers.handle(ctx.instance_id, name)
    if isinstance(target, dict):
        raise Fault("that element's handle was closed")
    return None


def _locator(ctx: Context, target: Any) -> tuple[Handle, Any]:
    """The page and a Playwright locator of the first element ``target`` names."""
    found = _handle_of(ctx, target)
    if found is not None and found.selector is not None:
        root = found.page.frame_locator(found.frame) if found.frame else found.page
        return found, root.locator(found.selector).first
    if found is not None:
        raise Fault("that handle is a page, not an element")
    if not isinstance(target, str) or not target.strip():
        raise Fault(f"a CSS selector or an element from GET is needed, not {kind_of(target)}")
    page = _page_handle(ctx)
    return page, page.page.locator(target).first


async def _act(ctx: Context, what: str, action: Any) -> Any:
    """Run a Playwright action: its errors (a time-out, a detached element) become the dialog's errors."""
    try:
        return await action
    except Fault:
        raise
    except Exception as exc:  # playwright's Error and TimeoutError
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Fault(f"{what}: {message[:300]}") from None


async def _settle(page: Any) -> None:
    """After a click or a key: wait for a navigation it started to load (none: at once)."""
    try:
        await page.wait_for_load_state("load")
    except Exception:  # the page closed (a link to a new tab, a download): nothing to wait for
        return


@builtin("openPage", "url, session?", group="web", bare=True)
async def open_page(ctx: Context, url: Any, session: Any = None) -> str:
    """Open a URL in a new page of the run's browser session (OPEN url [AS "session"]): the page's handle."""
    web = _web(ctx)
    address = to_text(url).strip()
    web.browsers.check_url(address)
    host = urlsplit(address).hostname or ""
    try:
        await DestinationGuard(web.allow, HINT).checked_addresses(host)
    except DestinationRefused as exc:
        raise Fault(str(exc).replace("HTTP to", "OPEN")) from None
    name = to_text(session).strip().lstrip("#") if session is not None else "default"
    browser_session = await web.browsers.session(ctx.instance_id, web.owner, name or "default", web.allow)
    page = await web.browsers.new_page(browser_session)
    try:
        await page.goto(address, wait_until="load")
    except Exception as exc:
        reason = browser_session.refused[-1] if browser_session.refused else str(exc).splitlines()[0]
        raise Fault(f"OPEN {address[:200]}: {reason[:300]}") from None
    handle = web.browsers.new_handle(Handle(ctx.instance_id, web.owner, browser_session, page))
    web.current = handle
    return handle


@builtin("getPageByHandle", "handle", group="web")
async def get_page_by_handle(ctx: Context, handle: Any) -> dict[str, Any]:
    """Make a page the current one again (its handle from OPEN): its handle, URL and title."""
    name = str(int(handle)) if isinstance(handle, int | float) and not isinstance(handle, bool) else to_text(handle)
    found = _web(ctx).browsers.handle(ctx.instance_id, name)
    if found.selector is not None:
        raise Fault("that handle is an element, not a page")
    _web(ctx).current = name
    return {"handle": name, "url": found.page.url, "title": await _act(ctx, "the page", found.page.title())}


async def _element(ctx: Context, page: Handle, selector: str, frame: str | None) -> dict[str, Any] | None:
    root = page.page.frame_locator(frame) if frame else page.page
    locator = root.locator(selector).first
    if not await _act(ctx, f"GET {selector}", root.locator(selector).count()):
        return None  # the page as it is now has no such element: empty, as FIND gives when no row matches
    info = await _act(ctx, f"GET {selector}", locator.evaluate(_ELEMENT_INFO))
    handle = _web(ctx).browsers.new_handle(
        Handle(ctx.instance_id, page.owner, page.session, page.page, selector, frame)
    )
    return ctx.budget.check_value({"handle": handle, "selector": selector, **info})


@builtin("getBySelector", "selector", group="web", bare=True)
async def get_by_selector(ctx: Context, selector: Any) -> dict[str, Any] | None:
    """The first element of the current page a CSS selector matches ({handle, tag, text, value, href}), or empty."""
    return await _element(ctx, _page_handle(ctx), to_text(selector), None)


@builtin("getByFrame", "frame, selector", group="web")
async def get_by_frame(ctx: Context, frame: Any, selector: Any) -> dict[str, Any] | None:
    """The first element matching ``selector`` inside the iframe ``frame`` (a selector) names, or empty."""
    return await _element(ctx, _page_handle(ctx), to_text(selector), to_text(frame))


@builtin("click", "target", group="web", statement_only=True)
async def click(ctx: Context, target: Any) -> None:
    """Click an element (CLICK "selector"); a navigation it starts is waited for."""
    page, locator = _locator(ctx, target)
    await _act(ctx, "CLICK", locator.click())
    await _settle(page.page)


@builtin("hover", "target", group="web", statement_only=True)
async def hover(ctx: Context, target: Any) -> None:
    """Move the mouse over an element (HOVER "selector"): menus that open on hover open."""
    _, locator = _locator(ctx, target)
    await _act(ctx, "HOVER", locator.hover())


@builtin("linkByText", "text, index?", group="web", statement_only=True)
async def link_by_text(ctx: Context, text: Any, index: Any = None) -> None:
    """Click the link whose text contains ``text`` (CLICK LINK TEXT "Next"); ``index``: the n-th such link, from 1."""
    page = _page_handle(ctx)
    n = int(index) - 1 if isinstance(index, int | float) and not isinstance(index, bool) and index >= 1 else 0
    locator = page.page.locator("a", has_text=to_text(text)).nth(n)
    await _act(ctx, f"CLICK LINK TEXT {to_text(text)[:100]}", locator.click())
    await _settle(page.page)


@builtin("clickButton", "text", group="web", statement_only=True)
async def click_button(ctx: Context, text: Any) -> None:
    """Click the button whose label is ``text`` (CLICK BUTTON "Send": a <button> or a submit input)."""
    page = _page_handle(ctx)
    locator = page.page.get_by_role("button", name=to_text(text)).first
    await _act(ctx, f"CLICK BUTTON {to_text(text)[:100]}", locator.click())
    await _settle(page.page)


@builtin("pressKey", "key, target?", group="web", statement_only=True)
async def press_key(ctx: Context, key: Any, target: Any = None) -> None:
    """Press a key (PRESS ENTER, PRESS "Tab"), on an element when named, else where the focus is."""
    name = to_text(key).strip()
    name = KEYS.get(name.upper(), name)
    if not name:
        raise Fault("PRESS needs a key")
    if target is None:
        page = _page_handle(ctx)
        await _act(ctx, f"PRESS {name}", page.page.keyboard.press(name))
    else:
        page, locator = _locator(ctx, target)
        await _act(ctx, f"PRESS {name}", locator.press(name))
    await _settle(page.page)


@builtin("setElementText", "target, text", group="web", statement_only=True)
async def set_element_text(ctx: Context, target: Any, text: Any) -> None:
    """Type into a field, replacing what it held (SET "#email", "ana@example.com")."""
    _, locator = _locator(ctx, target)
    await _act(ctx, "SET", locator.fill(to_text(text)))


@builtin("getTextOf", "target", group="web", bare=True)
async def get_text_of(ctx: Context, target: Any) -> str:
    """An element's visible text, or a field's value (x = TEXT OF "#total")."""
    _, locator = _locator(ctx, target)
    text = await _act(
        ctx, "TEXT OF", locator.evaluate("e => ('value' in e && e.tagName !== 'BUTTON') ? e.value : e.innerText")
    )
    return ctx.budget.check_value(to_text(text).strip())


@builtin("screenshot", "target?, name?", group="web", bare=True)
async def screenshot(ctx: Context, target: Any = None, name: Any = None) -> str:
    """A PNG of the current page (1280x720) or of one element, saved among the bot's files: its path."""
    if target is None or target == "":
        page = _page_handle(ctx)
        data = await _act(ctx, "SCREENSHOT", page.page.screenshot(type="png"))
    else:
        page, locator = _locator(ctx, target)
        data = await _act(ctx, "SCREENSHOT", locator.screenshot(type="png"))
    if len(data) > ctx.limits.max_value_bytes:
        raise Fault(f"the screenshot is larger than {ctx.limits.max_value_bytes} bytes")
    path = to_text(name).strip() if name else f"screenshots/{_web(ctx).current}-{cyrb53(data.hex()[:4096])}.png"
    return await ctx.need_files().write(path, data)


@builtin("download", "target, folder?", group="web", bare=True)
async def download(ctx: Context, target: Any, folder: Any = None) -> str:
    """Click what starts a download (x = DOWNLOAD "a.invoice", "invoices"); the file lands among the bot's files."""
    page, locator = _locator(ctx, target)
    timeout = _web(ctx).browsers.limits.action_seconds * 1000
    try:
        async with page.page.expect_download(timeout=timeout) as started:
            await locator.click()
        done = await started.value
    except Exception as exc:
        raise Fault(f"DOWNLOAD: nothing was downloaded ({str(exc).splitlines()[0][:200]})") from None
    failure = await done.failure()
    if failure:
        raise Fault(f"DOWNLOAD failed: {failure}")
    local = Path(await done.path())
    size = (await asyncio.to_thread(local.stat)).st_size
    if size > ctx.limits.max_value_bytes:
        raise Fault(f"the download is larger than {ctx.limits.max_value_bytes} bytes")
    data = await asyncio.to_thread(local.read_bytes)
    filename = re.sub(r"[^\w.-]", "_", done.suggested_filename).lstrip(".") or "download"
    place = f"{to_text(folder).strip().rstrip('/')}/{filename}" if folder else f"downloads/{filename}"
    return await ctx.need_files().write(place, data)


@builtin("isSelector", "text", group="web")
def is_selector_(ctx: Context, text: Any) -> bool:
    """Whether a text reads as a CSS selector (#id, .class, tag, a[href]) rather than an address."""
    return is_selector(to_text(text))


@builtin("cyrb53", "text, seed?", group="web")
def cyrb53_(ctx: Context, text: Any, seed: Any = None) -> int:
    """The 53-bit cyrb53 hash of a text (the handles' hash), as JavaScript computes it."""
    if seed is not None and (not isinstance(seed, int | float) or isinstance(seed, bool)):
        raise Fault(f"cyrb53's seed is a number, not {kind_of(seed)}")
    return cyrb53(to_text(text), int(seed or 0) & 0xFFFFFFFF)


@builtin("closeHandles", "", group="web")
async def close_handles(ctx: Context) -> int:
    """Close every page and browser session of the run: how many sessions there were."""
    return await _web(ctx).release()
