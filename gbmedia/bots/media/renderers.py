"""Pictures a media bot draws: a clock, a slide with text, a bar chart.

A renderer is a plain callable ``(width, height, now) -> image``: a BGR ``uint8``
array of that size, ``now`` being the wall-clock time (seconds since the epoch).
Renderers are pure and cheap to hold, so a bot can swap them at any time; drawing
takes milliseconds (OpenCV's text and shapes over a whole frame), so the bot calls
them in its worker thread, never on the event loop (:mod:`gbmedia.bots.media.tracks`).
A renderer whose picture does not change (a slide) keeps the last one it drew for a
size and hands out copies.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

Image = np.ndarray
Renderer = Callable[[int, int, float], Image]

BACKGROUND = (48, 32, 24)  # BGR: a dark blue-grey
INK = (245, 245, 245)
ACCENT = (60, 170, 250)  # BGR: an orange
FONT = cv2.FONT_HERSHEY_SIMPLEX


def canvas(width: int, height: int, color: tuple[int, int, int] = BACKGROUND) -> Image:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, :] = color
    return image


def _fit_text(text: str, max_width: int, max_scale: float, thickness: int) -> float:
    """The largest font scale up to ``max_scale`` at which ``text`` fits ``max_width`` pixels."""
    (width, _), _ = cv2.getTextSize(text or " ", FONT, 1.0, thickness)
    return max(0.3, min(max_scale, max_width / max(width, 1)))


def put_text(image: Image, text: str, x: int, y: int, scale: float, color=INK, thickness: int = 2) -> None:  # type: ignore[no-untyped-def]
    cv2.putText(image, text, (x, y), FONT, scale, color, thickness, cv2.LINE_AA)


@dataclass
class Clock:
    """The time (``HH:MM:SS`` in ``tz``, default UTC), with a bar that sweeps every second.

    The bar makes consecutive frames differ even within one second, so a viewer sees
    the picture move and a test can tell two frames apart.
    """

    label: str = "UTC"
    tz: dt.tzinfo = dt.UTC

    def __call__(self, width: int, height: int, now: float) -> Image:
        image = canvas(width, height)
        moment = dt.datetime.fromtimestamp(now, self.tz)
        text = moment.strftime("%H:%M:%S")
        thickness = max(2, height // 90)
        scale = _fit_text(text, int(width * 0.8), height / 60, thickness)
        (text_width, text_height), _ = cv2.getTextSize(text, FONT, scale, thickness)
        put_text(image, text, (width - text_width) // 2, (height + text_height) // 2, scale, INK, thickness)
        label_scale = _fit_text(self.label, width // 3, height / 240, 1)
        put_text(image, self.label, width // 20, height // 8, label_scale, ACCENT, 1)
        fraction = now - math.floor(now)
        bar_top = height - max(6, height // 20)
        cv2.rectangle(image, (0, bar_top), (int(width * fraction), height - 1), ACCENT, thickness=-1)
        return image


@dataclass
class Slide:
    """A title bar and lines of text, drawn once per size.

    Lines too wide for the slide are shrunk to fit; more lines than fit are left out.
    """

    title: str
    lines: Sequence[str] = ()
    _drawn: dict[tuple[int, int], Image] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __call__(self, width: int, height: int, now: float) -> Image:
        with self._lock:
            image = self._drawn.get((width, height))
            if image is None:
                image = self._drawn[(width, height)] = self._draw(width, height)
            return image.copy()

    def _draw(self, width: int, height: int) -> Image:
        image = canvas(width, height, (250, 250, 250))
        bar = height // 5
        cv2.rectangle(image, (0, 0), (width - 1, bar), BACKGROUND, thickness=-1)
        margin = width // 20
        thickness = max(2, height // 180)  # thinner strokes blur away in a video codec
        scale = _fit_text(self.title, width - 2 * margin, height / 200, thickness + 1)
        (_, title_height), _ = cv2.getTextSize(self.title or " ", FONT, scale, thickness + 1)
        put_text(image, self.title, margin, (bar + title_height) // 2, scale, INK, thickness + 1)
        line_height = max(12, height // 9)
        y = bar + line_height
        for line in self.lines:
            if y > height - line_height // 3:
                break
            text = f"- {line}"
            line_scale = _fit_text(text, width - 2 * margin, height / 300, thickness)
            put_text(image, text, margin, y, line_scale, (40, 40, 40), thickness)
            y += line_height
        return image


@dataclass
class Chart:
    """A bar chart of ``values`` (non-negative numbers), each bar labelled with its value."""

    values: Sequence[float]
    title: str = ""
    labels: Sequence[str] = ()

    def __call__(self, width: int, height: int, now: float) -> Image:
        image = canvas(width, height, (250, 250, 250))
        margin = width // 16
        top = height // 6 if self.title else margin
        bottom = height - margin
        if self.title:
            scale = _fit_text(self.title, width - 2 * margin, height / 300, 1)
            put_text(image, self.title, margin, top * 2 // 3, scale, (40, 40, 40), 1)
        cv2.line(image, (margin, bottom), (width - margin, bottom), (40, 40, 40), 2)
        cv2.line(image, (margin, top), (margin, bottom), (40, 40, 40), 2)
        values = [max(0.0, float(v)) for v in self.values]
        if not values:
            return image
        highest = max(values) or 1.0
        slot = (width - 2 * margin) / len(values)
        for i, value in enumerate(values):
            x0 = int(margin + i * slot + slot * 0.15)
            x1 = int(margin + (i + 1) * slot - slot * 0.15)
            y0 = int(bottom - (bottom - top) * value / highest)
            cv2.rectangle(image, (x0, y0), (x1, bottom - 1), ACCENT, thickness=-1)
            label = self.labels[i] if i < len(self.labels) else f"{value:g}"
            scale = _fit_text(label, max(10, x1 - x0), height / 500, 1)
            put_text(image, label, x0, max(top, y0 - 4), scale, (40, 40, 40), 1)
        return image


RENDERERS: dict[str, Callable[..., Renderer]] = {"clock": Clock, "slide": Slide, "chart": Chart}
