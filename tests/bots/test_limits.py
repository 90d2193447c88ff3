"""The sandbox's limits: a runaway dialog is stopped with the limit named, the user gets an apology."""

from __future__ import annotations

from pathlib import Path

import pytest

from gbmedia.bots.errors import LimitExceeded
from gbmedia.bots.limits import Limits
from gbmedia.config import Settings
from tests.bots.helpers import talk_with


async def test_a_runaway_loop_is_stopped_naming_dialog_line_and_limit():
    outcome, port = await talk_with(
        'TALK "counting"\nDO WHILE TRUE\n  n = n + 1\nLOOP', dialog="runaway", limits=Limits(max_statements=500)
    )
    assert outcome.status == "failed"
    error = outcome.error
    assert isinstance(error, LimitExceeded)
    assert (error.dialog, error.limit, error.allowed) == ("runaway", "GBMEDIA_BOT_MAX_STATEMENTS", 500)
    assert error.line in (2, 3, 4)
    assert str(error) == f"runaway: line {error.line}: limit GBMEDIA_BOT_MAX_STATEMENTS exceeded (allowed: 500)"
    assert port.said[-1] == "Sorry, something went wrong on my side and I had to stop. Please try again later."
    assert port.logs == [("error", str(error))]


async def test_the_statement_budget_survives_a_hear():
    """A dialog cannot reset its budget by asking a question: the count travels in the saved state."""
    source = "FOR i = 1 TO 30\n x = i\nNEXT\nHEAR a\nFOR i = 1 TO 30\n x = i\nNEXT"
    outcome, _ = await talk_with(source, ["go"], limits=Limits(max_statements=100))
    assert outcome.status == "failed" and outcome.error.limit == "GBMEDIA_BOT_MAX_STATEMENTS"
    assert outcome.error.line >= 5  # the second loop, after the HEAR
    outcome, _ = await talk_with(source, ["go"], limits=Limits(max_statements=200))
    assert outcome.status == "done"


async def test_wall_time_is_limited():
    outcome, _ = await talk_with('TALK "a"\nWAIT 5', limits=Limits(max_seconds=0.05))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_SECONDS" and outcome.error.line == 2
    outcome, _ = await talk_with("DO\nLOOP", limits=Limits(max_seconds=0.05, max_statements=10**9))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_SECONDS"


async def test_a_value_cannot_grow_past_its_size():
    outcome, _ = await talk_with('s = "ab"\nDO\n s = s + s\nLOOP', limits=Limits(max_value_bytes=4096))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_VALUE_BYTES" and outcome.error.line == 3
    outcome, _ = await talk_with('s = "é"\nDO\n s = "${s}${s}"\nLOOP', limits=Limits(max_value_bytes=4096))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_VALUE_BYTES"


async def test_a_list_cannot_grow_past_its_items():
    outcome, _ = await talk_with("l = NEW ARRAY\nDO\n APPEND l, 1\nLOOP", limits=Limits(max_list_items=50))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_LIST_ITEMS" and outcome.error.line == 3
    outcome, _ = await talk_with("l = [1]\nDO\n l = l + l\nLOOP", limits=Limits(max_list_items=50))
    assert outcome.error.limit == "GBMEDIA_BOT_MAX_LIST_ITEMS"


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert Limits.from_settings(Settings(data_dir=tmp_path)) == Limits()
    monkeypatch.setenv("GBMEDIA_BOT_MAX_STATEMENTS", "1234")
    monkeypatch.setenv("GBMEDIA_BOT_MAX_HTTP_CALLS", "0")
    limits = Limits.from_settings(Settings(data_dir=tmp_path))
    assert (limits.max_statements, limits.max_http_calls) == (1234, 0)
