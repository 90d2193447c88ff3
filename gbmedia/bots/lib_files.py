"""Built-ins over the instance's files: SAVE ... AS, DIR, COPY, CREATE FOLDER, FILL, UPLOAD, READ."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_data import field_of
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import kind_of, to_text

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


@builtin("readFile", "name", group="files")
async def read_file(ctx: Context, name: Any) -> str:
    """The text of a file of the bot."""
    data = await ctx.need_files().read(to_text(name), ctx.limits.max_value_bytes)
    return data.decode("utf-8", errors="replace")


@builtin("dir", "folder?", group="files", bare=True)
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


@builtin("upload", "file, folder?", group="files", bare=True)
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


_PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


@builtin("fill", "template, data", group="files", bare=True)
async def fill(ctx: Context, template: Any, data: Any) -> str:
    """A text template file of the bot with each {{field}} replaced by the data's field (a.b for nested ones)."""
    text = (await ctx.need_files().read(to_text(template), ctx.limits.max_value_bytes)).decode(
        "utf-8", errors="replace"
    )

    def value(match: re.Match[str]) -> str:
        current: Any = data
        for part in match[1].split("."):
            current = field_of(current, part)
        return to_text(current)

    return ctx.budget.check_value(_PLACEHOLDER.sub(value, text))
