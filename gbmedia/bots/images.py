"""Image work for the bot keywords (SHARPEN, BLUR, MERGE IMAGE, AS IMAGE...): pure functions on bytes.

Each function takes encoded image bytes and gives encoded bytes, so the keywords run
them whole in a worker thread (``asyncio.to_thread``): decoding, filtering and
encoding are milliseconds to seconds of CPU, never on the event loop. The size of a
picture is read from its header *before* it is decoded (Pillow reads headers lazily),
so a small file that declares a huge picture (a decompression bomb) is refused
without allocating it.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from gbmedia.bots.errors import Fault

ENCODINGS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp", ".bmp": ".bmp"}


def pixel_limit(max_value_bytes: int) -> int:
    """The most pixels a keyword decodes: 16 per byte a value may hold (16.7 million at the default 1 MiB)."""
    return max_value_bytes * 16


def decode(data: bytes, max_pixels: int, what: str = "the file") -> np.ndarray:
    """A BGR picture from encoded bytes (PNG, JPEG, WebP, BMP...), or a Fault saying why not."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise Fault(f"{what} is not an image") from None
    if width * height > max_pixels:
        raise Fault(f"{what} is {width}x{height}: more than {max_pixels} pixels")
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if picture is None:
        raise Fault(f"{what} is not an image this server decodes")
    return picture


def encode(picture: np.ndarray, name: str) -> bytes:
    """``picture`` encoded as the file name's extension says (PNG for anything else)."""
    extension = ENCODINGS.get(PurePosixPath(name).suffix.lower(), ".png")
    ok, buffer = cv2.imencode(extension, picture)
    if not ok:  # pragma: no cover - OpenCV encodes every 8-bit BGR picture in these formats
        raise Fault(f"the picture cannot be encoded as {extension}")
    return buffer.tobytes()


def sharpen(picture: np.ndarray, amount: float = 1.5) -> np.ndarray:
    """An unsharp mask: the picture plus ``amount`` times its difference from a blurred copy."""
    blurred = cv2.GaussianBlur(picture, (0, 0), sigmaX=3.0)
    return cv2.addWeighted(picture, 1.0 + amount, blurred, -amount, 0)


def blur(picture: np.ndarray, radius: int = 5) -> np.ndarray:
    """A Gaussian blur whose kernel reaches ``radius`` pixels each way."""
    size = 2 * radius + 1
    return cv2.GaussianBlur(picture, (size, size), 0)


def merge(pictures: list[np.ndarray], max_pixels: int) -> np.ndarray:
    """The pictures side by side, left to right, each scaled to the tallest one's height."""
    height = max(p.shape[0] for p in pictures)
    widths = [max(1, round(p.shape[1] * height / p.shape[0])) for p in pictures]
    if height * sum(widths) > max_pixels:
        raise Fault(f"the merged picture would be {sum(widths)}x{height}: more than {max_pixels} pixels")
    return np.hstack(
        [p if p.shape[0] == height else cv2.resize(p, (w, height)) for p, w in zip(pictures, widths, strict=True)]
    )


def suffixed(name: str, suffix: str) -> str:
    """``photos/a.jpg`` with ``-sharp`` → ``photos/a-sharp.jpg``: a new file next to the first."""
    path = PurePosixPath(name.replace("\\", "/"))
    extension = path.suffix if path.suffix.lower() in ENCODINGS else ".png"
    return str(path.with_name(f"{path.stem}-{suffix}{extension}"))
