"""Built-ins that call HTTP APIs: GET, POST, PUT (JSON answers become objects)."""

from __future__ import annotations

from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.lib_web import get_by_selector, is_selector
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import to_text

builtin = REGISTRY.builtin


async def _call(ctx: Context, method: str, url: Any, body: Any = None) -> Any:
    headers = dict(ctx.settings.get("HEADERS") or {})
    user, password = ctx.settings.get("HTTP USERNAME"), ctx.settings.get("HTTP PASSWORD")
    auth = (to_text(user), to_text(password)) if user is not None else None
    answer = await ctx.need_http().request(method, to_text(url), body, headers, auth, ctx.budget)
    return ctx.budget.check_value(answer)


@builtin("getHttp", "url", group="http", bare=True)
async def get_http(ctx: Context, url: Any) -> Any:
    """GET a URL: its JSON as an object, or its text; with a web page open, GET "selector" is its element."""
    if ctx.web is not None and ctx.web.current is not None and isinstance(url, str) and is_selector(url):
        return await get_by_selector(ctx, url)
    return await _call(ctx, "GET", url)


@builtin("postHttp", "url, data", group="http", bare=True)
async def post_http(ctx: Context, url: Any, data: Any) -> Any:
    """POST data (an object goes as JSON) to a URL: the answer, like GET."""
    return await _call(ctx, "POST", url, data)


@builtin("putHttp", "url, data", group="http", bare=True)
async def put_http(ctx: Context, url: Any, data: Any) -> Any:
    """PUT data to a URL: the answer, like GET."""
    return await _call(ctx, "PUT", url, data)
