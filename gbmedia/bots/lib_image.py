"""Image keywords over the bot's files: SHARPEN, BLUR, MERGE IMAGE (the old ``imageProcessing`` API).

Each reads pictures from the instance's files, filters them with OpenCV in a worker
thread, stores the result as a new file next to the first picture (or where the
dialog says) and gives its name, so ``x = SHARPEN "a.png"`` then ``SEND FILE x`` works.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gbmedia.bots import images
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import to_number, to_text

builtin = REGISTRY.builtin
MAX_RADIUS = 50
MAX_MERGED = 8


async def read_picture_bytes(ctx: Context, name: Any) -> bytes:
    return await ctx.need_files().read(to_text(name), ctx.limits.max_value_bytes)


async def store(ctx: Context, name: str, data: bytes) -> str:
    """Write a keyword's result among the bot's files, within the size any one value may have."""
    if len(data) > ctx.limits.max_value_bytes:
        raise Fault(f"the result would be {len(data)} bytes, more than {ctx.limits.max_value_bytes}")
    return await ctx.need_files().write(name, data)


async def _filtered(ctx: Context, file: Any, target: Any, suffix: str, step: Any) -> str:
    data = await read_picture_bytes(ctx, file)
    name = to_text(target) if target else images.suffixed(to_text(file), suffix)
    limit = images.pixel_limit(ctx.limits.max_value_bytes)

    def work() -> bytes:
        return images.encode(step(images.decode(data, limit, to_text(file))), name)

    return await store(ctx, name, await asyncio.to_thread(work))


@builtin("sharpen", "file, target?", group="images", bare=True, aliases=("sharpenImage",))
async def sharpen(ctx: Context, file: Any, target: Any = None) -> str:
    """A sharpened copy of a picture of the bot (an unsharp mask): the new file's name (``a-sharp.png``)."""
    return await _filtered(ctx, file, target, "sharp", images.sharpen)


@builtin("blur", "file, radius?, target?", group="images", bare=True, aliases=("blurImage",))
async def blur(ctx: Context, file: Any, radius: Any = None, target: Any = None) -> str:
    """A blurred copy of a picture of the bot (Gaussian, ``radius`` 1-50 pixels, 5 by default): the new file's name."""
    reach = 5 if radius is None or radius == "" else to_number(radius, "a blur radius")
    if reach != int(reach) or not 1 <= reach <= MAX_RADIUS:
        raise Fault(f"the blur radius must be a whole number from 1 to {MAX_RADIUS}, not {to_text(radius)}")
    return await _filtered(ctx, file, target, "blur", lambda p: images.blur(p, int(reach)))


@builtin("mergeImage", "first, second, more...", group="images", bare=True)
async def merge_image(ctx: Context, first: Any, second: Any, *more: Any) -> str:
    """Pictures side by side (scaled to the tallest one's height) in a new file next to the first: its name."""
    names = [first, second, *more]
    if len(names) > MAX_MERGED:
        raise Fault(f"MERGE IMAGE joins at most {MAX_MERGED} pictures, got {len(names)}")
    datas = [await read_picture_bytes(ctx, n) for n in names]
    name = images.suffixed(to_text(first), "merged")
    limit = images.pixel_limit(ctx.limits.max_value_bytes)

    def work() -> bytes:
        pictures = [images.decode(d, limit, to_text(n)) for d, n in zip(datas, names, strict=True)]
        return images.encode(images.merge(pictures, limit), name)

    return await store(ctx, name, await asyncio.to_thread(work))
