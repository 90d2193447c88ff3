"""The processing bot's filters on known pictures: what each does to high frequencies and edges."""

from __future__ import annotations

import cv2
import numpy as np

from gbmedia.bots.media.filters import FILTERS, FaceBlur, blur, edges, sharpen


def laplacian_variance(image: np.ndarray) -> float:
    """High-frequency energy: the variance of the Laplacian of the grey picture."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def checkerboard(width: int = 320, height: int = 240, square: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    board = (((xx // square) + (yy // square)) % 2 * 200 + 28).astype(np.uint8)
    return cv2.cvtColor(board, cv2.COLOR_GRAY2BGR)


def soft_pattern(width: int = 320, height: int = 240) -> np.ndarray:
    """A checkerboard whose borders are a few pixels soft (what a camera sees of one)."""
    return cv2.GaussianBlur(checkerboard(width, height), (0, 0), 1.5)


def test_blur_lowers_and_sharpen_raises_the_high_frequency_energy():
    board = checkerboard()
    assert laplacian_variance(blur(board)) < laplacian_variance(board) / 10
    soft = soft_pattern()
    assert laplacian_variance(sharpen(soft)) > laplacian_variance(soft) * 1.5
    assert blur(board).shape == sharpen(board).shape == board.shape


def test_edges_are_white_on_the_squares_borders_and_black_inside_them():
    out = edges(checkerboard(square=40))
    gray = out[:, :, 0]
    assert (out[:, :, 0] == out[:, :, 2]).all()  # white on black
    assert gray[60, 40 - 2 : 40 + 2].max() == 255  # a border between two squares (x = 40)
    assert gray[20, 20] == 0 and gray[60, 60] == 0  # the middle of squares
    assert 0.01 < (gray > 0).mean() < 0.2


def test_face_blur_loads_the_bundled_cascade_and_leaves_a_faceless_picture_alone():
    face_blur = FaceBlur()
    assert not face_blur.cascade().empty()
    board = checkerboard()
    assert np.array_equal(face_blur(board), board)
    assert face_blur.faces_found == 0


def test_every_named_filter_keeps_the_size_and_type():
    picture = soft_pattern(160, 120)
    for name, make in FILTERS.items():
        out = make()(picture)
        assert out.shape == picture.shape and out.dtype == np.uint8, name


def drawn_face(width: int = 320, height: int = 240) -> np.ndarray:
    """A schematic frontal face (skin, hair, eye sockets and eyes, brows, a lit nose, a mouth) on a grey wall.

    No photograph ships with OpenCV's wheel; this drawing has the light-and-shadow layout the
    Haar cascade looks for, and the cascade finds it (checked below, against a faceless picture).
    """
    img = np.full((height, width, 3), (90, 110, 130), np.uint8)
    cx, cy = width // 2, height // 2
    cv2.ellipse(img, (cx, cy), (70, 92), 0, 0, 360, (150, 180, 220), -1)
    cv2.ellipse(img, (cx, cy - 82), (74, 40), 0, 180, 360, (30, 40, 50), -1)
    for dx in (-28, 28):
        cv2.ellipse(img, (cx + dx, cy - 22), (16, 6), 0, 0, 360, (110, 130, 160), -1)
        cv2.ellipse(img, (cx + dx, cy - 20), (11, 5), 0, 0, 360, (40, 40, 40), -1)
        cv2.line(img, (cx + dx - 16, cy - 36), (cx + dx + 16, cy - 38), (50, 60, 70), 4)
    cv2.line(img, (cx, cy - 15), (cx, cy + 20), (175, 205, 240), 8)
    cv2.ellipse(img, (cx, cy + 24), (12, 5), 0, 0, 360, (120, 140, 170), -1)
    cv2.ellipse(img, (cx, cy + 50), (24, 7), 0, 0, 360, (70, 70, 140), -1)
    return img


def test_face_blur_pixelates_the_face_it_finds_and_nothing_else():
    face = drawn_face()
    face_blur = FaceBlur()
    ((x, y, w, h),) = face_blur.faces(face)
    assert x < 160 < x + w and y < 120 < y + h, "the face is found where it was drawn"
    out = face_blur(face)
    assert face_blur.faces_found == 1
    eyes = (slice(95, 105), slice(120, 200))  # both eyes' row
    assert laplacian_variance(out[eyes]) < laplacian_variance(face[eyes]) / 3, "the eyes are pixelated away"
    assert np.array_equal(out[:, :20], face[:, :20]) and np.array_equal(out[:, -20:], face[:, -20:]), "the wall is not"
