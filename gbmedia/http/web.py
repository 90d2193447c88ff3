"""``/web/``: the browser clients, plain static files from the repository's ``web/`` folder.

No build step: what is in ``web/`` is what the browser gets (ES modules, CSS, HTML).
Every answer carries ``Cache-Control: no-cache`` (browsers revalidate, so a deploy is
seen at once) and an explicit content type (``text/javascript`` for modules, which
browsers require). A directory answers with its ``index.html``; asked for without the
trailing slash it redirects, so relative module imports resolve. Anything missing,
hidden (a name starting with a dot) or outside ``web/`` is the API's JSON 404.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

import gbmedia
from gbmedia.errors import ApiError


def find_web_root() -> Path:
    """The repository's ``web/`` in a checkout (editable install), else the installed copy.

    ``pip install .`` puts ``web/`` under ``<prefix>/share/gbmedia/web`` (pyproject's
    data-files), which is where a container image finds it.
    """
    checkout = Path(gbmedia.__file__).resolve().parent.parent / "web"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "gbmedia" / "web"


WEB_ROOT = find_web_root()

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
}
DEFAULT_TYPE = "application/octet-stream"

# Pages may load only what this server serves; media comes over WebRTC, not URLs.
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
)


def _not_found(path: str) -> ApiError:
    return ApiError(404, "not_found", f"no file /web/{path}")


def resolve(root: Path, relative: str) -> Path | None:
    """The file or directory ``relative`` (already percent-decoded) names inside ``root``, else None.

    Refuses ``..``, hidden names, backslashes and NUL anywhere in the path, then checks
    the resolved path (symlinks followed) still lies inside ``root``.
    """
    parts = [part for part in relative.split("/") if part]
    for part in parts:
        if part.startswith(".") or "\\" in part or "\x00" in part:
            return None
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if resolved != root and root not in resolved.parents:
        return None
    return resolved


async def _serve(request: web.Request, relative: str, root: Path) -> web.StreamResponse:
    found = resolve(root, relative)
    if found is None:
        raise _not_found(relative)
    if found.is_dir():
        if not request.path.endswith("/"):
            return _slash_redirect(request)
        found = found / "index.html"
        if not found.is_file():
            raise _not_found(relative)
    elif not found.is_file() or relative.endswith("/"):
        raise _not_found(relative)
    headers = {
        "Content-Type": CONTENT_TYPES.get(found.suffix.lower(), DEFAULT_TYPE),
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if found.suffix.lower() == ".html":
        headers["Content-Security-Policy"] = PAGE_POLICY
        headers["Referrer-Policy"] = "no-referrer"  # join links carry a token in the query
    return web.FileResponse(found, headers=headers)


def _slash_redirect(request: web.Request) -> web.Response:
    """The same URL with a trailing slash, query kept (a join link's token is in it).

    Relative module imports (``./room.js``) resolve against the directory only then.
    """
    raw = request.rel_url
    query = f"?{raw.raw_query_string}" if raw.raw_query_string else ""
    return web.Response(status=302, headers={"Location": f"{raw.raw_path}/{query}", "Cache-Control": "no-cache"})


def static_handler(root: Path = WEB_ROOT) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler serving ``root`` for the route's ``{path}``."""
    resolved_root = root.resolve()

    async def static(request: web.Request) -> web.StreamResponse:
        return await _serve(request, request.match_info["path"], resolved_root)

    return static


async def home(request: web.Request) -> web.StreamResponse:
    """``/``: the URL ``gbmedia serve`` prints leads people to the meeting page."""
    raise web.HTTPFound("/web/room/")


def register(app: web.Application, root: Path = WEB_ROOT) -> None:
    """``GET /`` (a redirect) and ``GET /web/{path}`` (and HEAD): the files under ``root``."""
    app.router.add_get("/", home)
    app.router.add_get("/web/{path:.*}", static_handler(root))
