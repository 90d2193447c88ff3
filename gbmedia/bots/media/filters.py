"""What a processing bot does to a participant's video: blur, sharpen, edges, face blur.

A filter maps one BGR ``uint8`` image to another of the same size. Each takes a few
milliseconds of OpenCV on a 640x480 frame (the face detector more), so they run
only in the bot's worker thread (:mod:`gbmedia.bots.media.tracks`), one frame at a
time; a filter may keep state (the face detector loads its cascade once), and one
filter object serves one bot's thread, never several threads at once.

The face detector is OpenCV's bundled Haar cascade (``haarcascade_frontalface_default``):
opencv-python-headless 4.x ships the cascades in ``cv2.data`` (5.x dropped them, and
the classifier, from the main package, hence the pin below 5 in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

Image = np.ndarray
Filter = Callable[[Image], Image]

SHARPEN_KERNEL = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32)


def blur(image: Image) -> Image:
    """A Gaussian blur whose strength follows the picture's size (sigma: 1/100 of the width, at least 3 px)."""
    sigma = max(3.0, image.shape[1] / 100)
    return cv2.GaussianBlur(image, (0, 0), sigma)


def sharpen(image: Image) -> Image:
    """A 3x3 unsharp kernel: edges and texture stand out (and so does noise)."""
    return cv2.filter2D(image, -1, SHARPEN_KERNEL)


def edges(image: Image) -> Image:
    """Canny edges, white on black: the outlines of what moves in the picture."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 1.2)  # the codec's blocking would show as edges otherwise
    return cv2.cvtColor(cv2.Canny(gray, 60, 150), cv2.COLOR_GRAY2BGR)


def cascade_path(name: str = "haarcascade_frontalface_default.xml") -> Path:
    return Path(cv2.data.haarcascades) / name  # type: ignore[attr-defined]


@dataclass
class FaceBlur:
    """Pixelates every frontal face OpenCV's Haar cascade finds.

    Detection runs on a copy scaled to at most ``detect_width`` pixels wide (the
    cascade's cost grows with the area; faces in a call are large), then each face,
    grown by a fifth on every side, is pixelated in the full-size frame.
    """

    detect_width: int = 320
    block: int = 12
    faces_found: int = 0
    _cascade: cv2.CascadeClassifier | None = field(default=None, repr=False)

    def cascade(self) -> cv2.CascadeClassifier:
        if self._cascade is None:
            path = cascade_path()
            classifier = cv2.CascadeClassifier(str(path))
            if classifier.empty():
                raise RuntimeError(f"OpenCV's face cascade did not load from {path}")
            self._cascade = classifier
        return self._cascade

    def faces(self, image: Image) -> list[tuple[int, int, int, int]]:
        """The faces in ``image`` as (x, y, width, height) in its own pixels."""
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_width / width)
        small = cv2.resize(image, (round(width * scale), round(height * scale))) if scale < 1.0 else image
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        found = self.cascade().detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5, minSize=(24, 24))
        return [tuple(int(v / scale) for v in face) for face in found]  # type: ignore[misc]

    def __call__(self, image: Image) -> Image:
        out = image.copy()
        height, width = image.shape[:2]
        for x, y, w, h in self.faces(image):
            x0, y0 = max(0, x - w // 5), max(0, y - h // 5)
            x1, y1 = min(width, x + w + w // 5), min(height, y + h + h // 5)
            region = out[y0:y1, x0:x1]
            small = cv2.resize(
                region, (max(1, (x1 - x0) // self.block), max(1, (y1 - y0) // self.block)), interpolation=cv2.INTER_AREA
            )
            out[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
            self.faces_found += 1
        return out


# By name, for the REST API and (later) BASIC: each call gives a fresh filter (FaceBlur holds state).
FILTERS: dict[str, Callable[[], Filter]] = {
    "blur": lambda: blur,
    "sharpen": lambda: sharpen,
    "edges": lambda: edges,
    "face_blur": FaceBlur,
}
