"""What SHARE FOLDER's links serve: ``GET /shared/{token}[/{path}]``, with no credentials.

The token is the grant (gbmedia/bots/sharing.py): its signature and expiry are checked
on every request (403 ``share_link_invalid`` or ``share_link_expired``), and it reaches
only its folder of its instance's bot files: the folder's listing, a file in it (sent
from disk by aiohttp, never read whole into memory) or a subfolder's listing. A path
that leaves the folder, or names nothing, is 404 ``shared_file_not_found``. The instance must
still be active: a suspended or deleted instance's links serve nothing. Files go out
with ``Content-Security-Policy: sandbox``: an HTML file a dialog wrote runs no script
on the node's origin.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import mimetypes
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gbmedia.bots.errors import Fault
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.service import Bots
from gbmedia.bots.sharing import ROUTE, Grant
from gbmedia.errors import ApiError
from gbmedia.http.responses import json_response

SHARED_BOTS: web.AppKey[Bots] = web.AppKey("shared_bots", Bots)


async def _grant(request: web.Request) -> tuple[Grant, InstanceFiles]:
    runner = request.app[SHARED_BOTS].engine.runner
    if runner.links is None:  # pragma: no cover - a node always signs links
        raise ApiError(403, "share_link_invalid", "this node serves no share links")
    grant = runner.links.check(request.match_info["token"])
    try:
        instance = await runner.instances.get(uuid.UUID(grant.instance_id))
    except ApiError:
        instance = None
    if instance is None or instance.status != "active":
        raise ApiError(403, "share_link_invalid", "the instance that shared this folder is not active")
    return grant, InstanceFiles(runner.data_dir, grant.instance_id)


def _not_found(path: str) -> ApiError:
    return ApiError(404, "shared_file_not_found", f"no file {path} in this shared folder")


async def _listing(request: web.Request, grant: Grant, files: InstanceFiles, below: str) -> web.Response:
    folder = f"{grant.folder}/{below}" if below else grant.folder
    entries: list[dict[str, Any]] = []
    for entry in await files.listing(folder):
        inside = f"{below}/{entry['name']}" if below else entry["name"]
        entries.append({**entry, "path": inside, "url": f"{ROUTE}{request.match_info['token']}/{quote(inside)}"})
    expires = dt.datetime.fromtimestamp(grant.expires, dt.UTC)
    return json_response({"folder": grant.folder, "path": below, "expires_at": expires, "files": entries})


async def shared_folder(request: web.Request) -> web.Response:
    grant, files = await _grant(request)
    return await _listing(request, grant, files, "")


async def shared_file(request: web.Request) -> web.StreamResponse:
    grant, files = await _grant(request)
    below = request.match_info["path"].strip("/")

    def locate() -> tuple[Path, bool]:
        root = files.path(grant.folder)
        path = files.path(f"{grant.folder}/{below}")
        if not path.is_relative_to(root) or not path.exists():
            raise Fault("outside")
        return path, path.is_dir()

    try:
        path, is_folder = await asyncio.to_thread(locate)
    except Fault:
        raise _not_found(below) from None
    if is_folder:
        return await _listing(request, grant, files, below)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(
        path, headers={"Content-Type": kind, "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    )


def register(app: web.Application, bots: Bots) -> None:
    app[SHARED_BOTS] = bots
    app.router.add_get(ROUTE + "{token}", shared_folder)
    app.router.add_get(ROUTE + "{token}/{path:.+}", shared_file)
