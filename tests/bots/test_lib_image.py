"""SHARPEN, BLUR and MERGE IMAGE on real pictures, checked on their pixels."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gbmedia.bots.context import Context
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.limits import Limits
from gbmedia.bots.parser import parse
from gbmedia.bots.registry import REGISTRY
from tests.bots.helpers import said, talk_with


@pytest.fixture
def files(tmp_path: Path) -> InstanceFiles:
    files = InstanceFiles(tmp_path / "data", "inst-img")
    files.root.mkdir(parents=True)
    return files


def put(files: InstanceFiles, name: str, picture: np.ndarray) -> None:
    path = files.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), picture)


def get(files: InstanceFiles, name: str) -> np.ndarray:
    picture = cv2.imread(str(files.root / name), cv2.IMREAD_COLOR)
    assert picture is not None, name
    return picture


def step_edge() -> np.ndarray:
    """A soft edge from dark grey to light grey (a blurred step), 80x80."""
    picture = np.full((80, 80, 3), 60, np.uint8)
    picture[:, 40:] = 190
    return cv2.GaussianBlur(picture, (0, 0), 3)


@functools.cache
def huge_png() -> bytes:
    """A 5000x5000 PNG of one colour: a few kilobytes, whose header is read and which is never decoded."""
    out = io.BytesIO()
    Image.new("L", (5000, 5000)).save(out, format="PNG")
    return out.getvalue()


def sharpness(picture: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


async def test_sharpen_makes_an_edge_steeper(files: InstanceFiles):
    put(files, "photos/edge.png", step_edge())
    assert await said('x = SHARPEN "photos/edge.png"\nTALK x\nSHARPEN "photos/edge.png", "out/s.png"', files=files) == [
        "photos/edge-sharp.png"
    ]
    original, sharp = step_edge(), get(files, "photos/edge-sharp.png")
    assert sharp.shape == original.shape
    # The edge is steeper, and an unsharp mask overshoots on both sides of it; flat areas keep their value.
    row, before = sharp[40, :, 0].astype(int), original[40, :, 0].astype(int)
    assert np.abs(np.diff(row)).max() > 1.3 * np.abs(np.diff(before)).max()
    assert row[:40].min() < 60 - 5 and row[40:].max() > 190 + 5
    assert row[2] == 60 and row[77] == 190
    assert sharpness(sharp) > sharpness(original)
    assert np.array_equal(get(files, "out/s.png"), sharp)


async def test_blur_smooths_a_checkerboard_to_grey(files: InstanceFiles):
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    put(files, "board.png", cv2.merge([board, board, board]))
    assert await said('x = BLUR "board.png", 3\nTALK x\nBLUR "board.png"', files=files) == ["board-blur.png"]
    blurred = get(files, "board-blur.png")
    assert blurred.shape == (64, 64, 3)
    inner = blurred[8:-8, 8:-8].astype(int)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 5  # black and white pixels became grey
    assert sharpness(blurred) < sharpness(cv2.merge([board, board, board])) / 100


async def test_merge_image_puts_pictures_side_by_side(files: InstanceFiles):
    red = np.zeros((40, 30, 3), np.uint8)
    red[:] = (0, 0, 255)
    blue = np.zeros((20, 10, 3), np.uint8)
    blue[:] = (255, 0, 0)
    put(files, "a/red.png", red)
    put(files, "blue.jpg", blue)
    assert await said('x = MERGE IMAGE "a/red.png", "blue.jpg"\nTALK x', files=files) == ["a/red-merged.png"]
    merged = get(files, "a/red-merged.png")
    assert merged.shape == (40, 30 + 20, 3)  # the blue one scaled to the red one's height: 10x20 -> 20x40
    assert (merged[:, :30] == (0, 0, 255)).all()
    assert np.abs(merged[5:-5, 35:45].astype(int) - (255, 0, 0)).max() < 8  # JPEG: nearly pure blue


async def test_a_jpeg_stays_a_jpeg(files: InstanceFiles):
    put(files, "p.jpg", step_edge())
    assert await said('TALK SHARPEN("p.jpg")', files=files) == ["p-sharp.jpg"]
    assert (files.root / "p-sharp.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('x = SHARPEN "none.png"', "no file none.png"),
        ('x = SHARPEN "notes.txt"', "notes.txt is not an image"),
        ('x = BLUR "board.png", 0', "blur radius must be a whole number from 1 to 50"),
        ('x = BLUR "board.png", 2.5', "blur radius must be a whole number from 1 to 50"),
        ('x = BLUR "board.png", "big"', "is not a blur radius"),
        ('x = MERGE IMAGE "board.png", "notes.txt"', "notes.txt is not an image"),
        (
            'x = MERGE IMAGE "board.png", "board.png", "board.png", "board.png", "board.png", "board.png", '
            '"board.png", "board.png", "board.png"',
            "at most 8 pictures",
        ),
        ('x = SHARPEN "huge.png"', "huge.png is 5000x5000: more than 1638400 pixels"),
        ('x = MERGE IMAGE "tall.png", "board.png"', "the merged picture would be"),
        ('x = SHARPEN "../x.png"', "is not a file name of this bot"),
    ],
)
async def test_bad_pictures_and_arguments_are_refused(files: InstanceFiles, source: str, message: str):
    put(files, "board.png", np.zeros((8, 8, 3), np.uint8))
    put(files, "tall.png", np.zeros((1500, 1, 3), np.uint8))
    (files.root / "notes.txt").write_text("not a picture")
    (files.root / "huge.png").write_bytes(huge_png())
    outcome, _ = await talk_with(source, files=files, limits=Limits(max_value_bytes=100 * 1024))
    assert outcome.status == "failed" and message in outcome.error.message, outcome.error


async def test_a_result_larger_than_a_value_may_be_is_refused(files: InstanceFiles):
    noise = np.random.default_rng(7).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    put(files, "noise.jpg", noise)
    limits = Limits(max_value_bytes=(files.root / "noise.jpg").stat().st_size + 10)
    outcome, _ = await talk_with('x = SHARPEN "noise.jpg", "noise.png"', files=files, limits=limits)
    assert outcome.status == "failed" and "more than" in outcome.error.message
    assert not (files.root / "noise.png").exists()


async def test_the_keyword_api_gives_what_basic_gives(files: InstanceFiles):
    put(files, "edge.png", step_edge())
    ctx = Context(files=files)
    assert await REGISTRY.call("sharpen", ctx, ["edge.png", "api.png"]) == "api.png"
    await said('SHARPEN "edge.png", "basic.png"', files=files)
    assert np.array_equal(get(files, "api.png"), get(files, "basic.png"))
    assert REGISTRY.get("mergeImage").group == REGISTRY.get("blur").group == "images"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ('MERGE IMAGE "a.png", "b.png"', "mergeImage"),
        ('x = MERGE IMAGE "a.png", "b.png"', "mergeImage"),
        ('MERGE image WITH rows BY "id"', "merge"),  # a table named image: the data MERGE, as before
        ('x = MERGE image WITH rows BY "id"', "merge"),
        ('SHARPEN "a.png"', "sharpen"),
        ('BLUR "a.png", 3', "blur"),
        ("x = data AS PDF", "asPDF"),
        ("x = data AS IMAGE", "asImage"),
        ('SHARE FOLDER "r", 5', "shareFolder"),
        ('CONVERT "a.docx"', "convert"),
        ('CHART "bar", v, "a, b"', "chart"),
    ],
)
def test_the_statements_call_their_keywords(source: str, name: str):
    (stmt,) = parse(source).body
    called = stmt.value if hasattr(stmt, "value") else stmt
    assert called.name == name, called
