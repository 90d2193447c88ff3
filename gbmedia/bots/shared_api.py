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
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gbmedia.bots.errors import Fault
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import FileStore
from gbmedia.bots.service import Bots
from gbmedia.bots.sharing import ROUTE, Grant
from gbmedia.errors import ApiError
from gbmedia.http.responses import json_response

SHARED_BOTS: web.AppKey[Bots] = web.AppKey("shared_bots", Bots)


async def _grant(request: web.Request) -> tuple[Grant, FileStore]:
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
    return grant, runner.files_for(grant.instance_id)


def _not_found(path: str) -> ApiError:
    return ApiError(404, "shared_file_not_found", f"no file {path} in this shared folder")


async def _listing(request: web.Request, grant: Grant, files: FileStore, below: str) -> web.Response:
    folder = f"{grant.folder}/{below}" if below else grant.folder
    entries: list[dict[str, Any]] = []
    try:
        listed = await files.listing(folder)
    except Fault:  # the folder was deleted after it was shared
        raise _not_found(below or ".") from None
    for entry in listed:
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
    try:
        kind = await files.kind(f"{grant.folder}/{below}")  # clean_name: no "..", so never outside the folder
    except Fault:
        kind = None
    if kind is None:
        raise _not_found(below)
    if kind == "folder":
        return await _listing(request, grant, files, below)
    name = PurePosixPath(below).name
    headers = {
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if isinstance(files, InstanceFiles):  # from disk, never read whole into memory
        return web.FileResponse(await asyncio.to_thread(files.path, f"{grant.folder}/{below}"), headers=headers)
    limit = request.app[SHARED_BOTS].engine.runner.limits.max_value_bytes  # what a bot may have written
    return web.Response(body=await files.read(f"{grant.folder}/{below}", limit), headers=headers)


def register(app: web.Application, bots: Bots) -> None:
    app[SHARED_BOTS] = bots
    app.router.add_get(ROUTE + "{token}", shared_folder)
    app.router.add_get(ROUTE + "{token}/{path:.+}", shared_file)
