"""Built-ins over the instance's files: SAVE ... AS, DIR, COPY, CREATE FOLDER, UPLOAD, READ, DELETE, SHARE FOLDER.

The canonical names are the old keyword API's (saveFile, getFileContents, dirFolder,
uploadFile...); the BASIC spellings (READFILE, DIR, UPLOAD) are aliases. Documents made
from data (AS PDF, CHART, FILL, CONVERT...) are in lib_docs.py, pictures in lib_image.py.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.sharing import MAX_SECONDS
from gbmedia.bots.values import kind_of, to_number, to_text

builtin = REGISTRY.builtin


def _bytes_of(data: Any) -> bytes:
    if isinstance(data, list | dict):
        return json.dumps(data, ensure_ascii=False, indent=2).encode()
    return to_text(data).encode()


@builtin("saveFile", "data, name", group="files", statement_only=True)
async def save_file(ctx: Context, data: Any, name: Any) -> str:
    """Write text (or a list/object as JSON) to a file of the bot: SAVE data AS "name"."""
    payload = _bytes_of(data)
    if len(payload) > ctx.limits.max_value_bytes:
        raise Fault(f"the file would be larger than {ctx.limits.max_value_bytes} bytes")
    return await ctx.need_files().write(to_text(name), payload)


@builtin("getFileContents", "name", group="files", aliases=("readFile",))
async def read_file(ctx: Context, name: Any) -> str:
    """The text of a file of the bot."""
    data = await ctx.need_files().read(to_text(name), ctx.limits.max_value_bytes)
    return data.decode("utf-8", errors="replace")


@builtin("dirFolder", "folder?", group="files", bare=True, aliases=("dir",))
async def dir_(ctx: Context, folder: Any = None) -> list[dict[str, Any]]:
    """The files and folders in a folder of the bot: name, path, folder, size."""
    return ctx.budget.check_value(await ctx.need_files().listing(to_text(folder)))


@builtin("createFolder", "folder", group="files", statement_only=True)
async def create_folder(ctx: Context, folder: Any) -> str:
    """Make a folder (and its parents) among the bot's files."""
    return await ctx.need_files().make_folder(to_text(folder))


@builtin("copyFile", "source, target", group="files", statement_only=True)
async def copy_file(ctx: Context, source: Any, target: Any) -> str:
    """Copy a file of the bot (into a folder, when the target is one)."""
    return await ctx.need_files().copy(to_text(source), to_text(target))


@builtin("uploadFile", "file, folder?", group="files", bare=True, aliases=("upload",))
async def upload(ctx: Context, file: Any, folder: Any = None) -> str:
    """Store a file the user sent (HEAR x AS FILE gives {name, data: base64}) among the bot's files: its path."""
    if not isinstance(file, dict) or "name" not in file or "data" not in file:
        raise Fault(f"UPLOAD takes a file the user sent (HEAR x AS FILE), not {kind_of(file)}")
    try:
        payload = base64.b64decode(to_text(file["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise Fault("the file's data is not Base64") from None
    if len(payload) > ctx.limits.max_value_bytes:
        raise Fault(f"the file is larger than {ctx.limits.max_value_bytes} bytes")
    name = to_text(file["name"]).replace("\\", "/").split("/")[-1] or "upload"
    place = f"{to_text(folder).rstrip('/')}/{name}" if folder else f"uploads/{name}"
    return await ctx.need_files().write(place, payload)


@builtin("deleteFile", "name", group="files")
async def delete_file(ctx: Context, name: Any) -> bool:
    """Remove a file or folder of the bot: true when there was one (DELETE "file" does the same)."""
    return await ctx.need_files().delete(to_text(name))


MAX_SHARE_MINUTES = MAX_SECONDS // 60


@builtin("shareFolder", "folder, minutes?", group="files", bare=True)
async def share_folder(ctx: Context, folder: Any, minutes: Any = None) -> str:
    """A link to a folder of the bot that anyone may read until it expires (60 minutes, at most a week): its URL."""
    lifetime = 60 if minutes is None or minutes == "" else to_number(minutes, "a number of minutes")
    if not 1 <= lifetime <= MAX_SHARE_MINUTES:
        raise Fault(f"a share link lasts 1 to {MAX_SHARE_MINUTES} minutes, not {to_text(minutes)}")
    links = ctx.need_links()
    path = await ctx.need_files().make_folder(to_text(folder))
    return links.link(ctx.instance_id, path, int(lifetime * 60))
