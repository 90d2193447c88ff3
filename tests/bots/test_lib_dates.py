"""Date built-ins: TODAY, NOW, WEEKDAY, HOUR, FORMAT, DATEADD, DATEDIFF, isValidDate/Hour."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from gbmedia.bots import lib_dates
from tests.bots.helpers import said, talk_with


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> datetime:
    moment = datetime(2026, 12, 6, 14, 5, 9)  # a Sunday
    monkeypatch.setattr(lib_dates, "now", lambda: moment)
    return moment


async def test_today_now_weekday_and_hour_read_the_clock_in_the_locale(frozen: datetime):
    assert await said("TALK TODAY\nTALK NOW\nTALK WEEKDAY()\nTALK HOUR()") == ["12/06/2026", "14:05", "1", "14"]
    assert await said("TALK TODAY", locale="pt-BR") == ["06/12/2026"]
    assert await said('SET LANGUAGE "pt"\nTALK TODAY') == ["06/12/2026"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('FORMAT("2026-03-04T05:06:07", "dd/MM/yyyy HH:mm:ss")', "04/03/2026 05:06:07"),
        ('FORMAT("2026-03-04", "d MMMM yy, dddd")', "4 March 26, Wednesday"),
        ('FORMAT("2026-03-04T15:00", "hh tt")', "03 PM"),
        ('FORMAT(1234.5, "#,##0.00")', "1,234.50"),
        ('FORMAT(3.14159, "0.00")', "3.14"),
        ('DATEADD("2026-01-31", "month", 1)', "2026-02-28"),
        ('DATEADD("2024-02-29", "year", 1)', "2025-02-28"),
        ('DATEADD("2026-12-06", "day", 30)', "2027-01-05"),
        ('DATEADD("2026-12-06T10:00", "hours", -11)', "2026-12-05T23:00:00"),
        ('DATEADD("12/31/2026", "week", 1)', "2027-01-07"),
        ('DATEDIFF("2026-01-01", "2026-12-25", "day")', "358"),
        ('DATEDIFF("2026-01-31", "2026-03-30", "month")', "1"),
        ('DATEDIFF("2020-06-01", "2026-05-31", "year")', "5"),
        ('DATEDIFF("2026-01-01T00:00", "2026-01-01T01:30", "minute")', "90"),
        ('WEEKDAY("2026-12-12")', "7"),
        ('HOUR("09:45")', "9"),
        ('HOUR("2026-01-01T23:10:00")', "23"),
        ('ISVALIDDATE("2026-02-30")', "false"),
        ('ISVALIDDATE("12/31/2026")', "true"),
        ('ISVALIDHOUR("23:59")', "true"),
        ('ISVALIDHOUR("24:00")', "false"),
    ],
)
async def test_date_builtins(expr: str, expected: str):
    assert await said(f"TALK {expr}") == [expected]


async def test_the_locale_decides_day_or_month_first_and_number_separators():
    assert await said('TALK DATEADD("01/02/2026", "day", 1)', locale="pt") == ["2026-02-02"]
    assert await said('TALK DATEADD("01/02/2026", "day", 1)') == ["2026-01-03"]
    assert await said('TALK FORMAT(1234.5, "#,##0.00")', locale="pt") == ["1.234,50"]
    assert await said('TALK FORMAT("2026-12-06", "dddd")', locale="pt") == ["domingo"]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ('FORMAT("nope", "dd")', "'nope' is not a date"),
        ('DATEADD("2026-01-01", "fortnight", 1)', "is not a date unit"),
        ('DATEADD("2026-01-01", "year", 99999)', "out of range"),
    ],
)
async def test_bad_dates_end_the_run_with_a_message(expr: str, message: str):
    outcome, _ = await talk_with(f"x = {expr}")
    assert message in outcome.error.message


async def test_now_without_a_frozen_clock_is_hh_mm():
    (text,) = await said("TALK NOW")
    assert re.fullmatch(r"\d\d:\d\d", text)
