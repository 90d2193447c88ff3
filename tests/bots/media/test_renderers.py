"""What the media bot's renderers draw, checked on the pixels."""

from __future__ import annotations

import numpy as np

from gbmedia.bots.media.renderers import BACKGROUND, Chart, Clock, Slide

NOON = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def test_the_clock_shows_the_time_and_moves_within_a_second():
    clock = Clock()
    a, b, c = clock(320, 180, NOON), clock(320, 180, NOON + 0.5), clock(320, 180, NOON + 2.0)
    assert a.shape == (180, 320, 3) and a.dtype == np.uint8
    middle = a[60:120, 40:280]
    assert (middle > 200).any(), "the digits are drawn in light ink"
    assert (middle == BACKGROUND).all(axis=2).mean() > 0.5, "on the dark background"
    assert not np.array_equal(a, b), "the second's bar sweeps"
    assert not np.array_equal(a[40:140], c[40:140]), "the digits change with the time"


def test_a_slide_draws_its_title_and_lines_and_nothing_where_there_is_no_text():
    slide = Slide("Quarterly review", ["Revenue up", "Costs down"])
    image = slide(320, 240, NOON)
    bar = image[: 240 // 5]
    assert (bar.reshape(-1, 3) == BACKGROUND).all(axis=1).mean() > 0.6  # the title bar's background
    assert (bar > 200).all(axis=2).any(), "the title's light text on it"
    body_with_text = image[60:140]
    assert (body_with_text < 100).all(axis=2).any(), "dark text on the white slide"
    assert (image[200:] >= 250).all(), "no third line: the bottom is blank"
    assert np.array_equal(image, slide(320, 240, NOON + 10)), "a slide does not change"
    image[:] = 0  # callers get copies: the slide's own picture stays as drawn
    assert not np.array_equal(image, slide(320, 240, NOON))


def test_a_chart_draws_bars_in_proportion_to_the_values():
    image = Chart([1, 2, 4])(300, 200, NOON)
    accent = np.all(image == (60, 170, 250), axis=2)
    heights = []
    for x0, x1 in ((16, 102), (102, 188), (188, 274)):
        columns = accent[:, x0:x1].any(axis=1)
        heights.append(int(columns.sum()))
    assert heights[0] > 0
    assert abs(heights[1] / heights[0] - 2) < 0.25 and abs(heights[2] / heights[0] - 4) < 0.5, heights
