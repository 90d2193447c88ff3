"""Built-ins over dates and times. Dates are ISO strings (``2026-12-06``, ``2026-12-06T10:30:00``).

``TODAY`` gives the date in the run's locale (``dd/MM/yyyy`` in Portuguese, ``MM/dd/yyyy``
in English) as the old platform did; every date built-in reads ISO, that and the
locale's form. FORMAT's patterns are .NET's (``dd/MM/yyyy HH:mm``), which the old
platform's authors wrote.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import to_number, to_text

builtin = REGISTRY.builtin

DAY_FIRST = {"pt", "es", "fr", "it", "de"}  # languages that write the day before the month
WEEKDAYS = {
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "pt": ["segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado", "domingo"],
    "es": ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"],
}
_LOCAL_DATE = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*$")


def now() -> datetime:
    """The node's local time (the one clock the date built-ins read)."""
    return datetime.now()


def parse_date(value: Any, language: str = "en") -> datetime:
    """A date from ISO text, the locale's dd/MM/yyyy or MM/dd/yyyy, or a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    text = to_text(value).strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        pass
    match = _LOCAL_DATE.match(text)
    if match:
        a, b, year = int(match[1]), int(match[2]), int(match[3])
        day, month = (a, b) if language in DAY_FIRST else (b, a)
        hour, minute, second = (int(match[i]) if match[i] else 0 for i in (4, 5, 6))
        try:
            return datetime(year, month, day, hour, minute, second)
        except ValueError:
            pass
    raise Fault(f"{text!r} is not a date")


def iso(moment: datetime) -> str:
    if moment.hour == moment.minute == moment.second == 0 and moment.microsecond == 0:
        return moment.date().isoformat()
    return moment.replace(microsecond=0).isoformat()


_TOKENS = re.compile(r"yyyy|yy|MMMM|MMM|MM|M|dddd|ddd|dd|d|HH|H|hh|h|mm|m|ss|s|tt")
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def format_date(moment: datetime, pattern: str, language: str) -> str:
    names = WEEKDAYS.get(language, WEEKDAYS["en"])

    def piece(match: re.Match[str]) -> str:
        token = match[0]
        return {
            "yyyy": f"{moment.year:04d}",
            "yy": f"{moment.year % 100:02d}",
            "MMMM": _MONTHS[moment.month - 1],
            "MMM": _MONTHS[moment.month - 1][:3],
            "MM": f"{moment.month:02d}",
            "M": str(moment.month),
            "dddd": names[moment.weekday()],
            "ddd": names[moment.weekday()][:3],
            "dd": f"{moment.day:02d}",
            "d": str(moment.day),
            "HH": f"{moment.hour:02d}",
            "H": str(moment.hour),
            "hh": f"{(moment.hour % 12) or 12:02d}",
            "h": str((moment.hour % 12) or 12),
            "mm": f"{moment.minute:02d}",
            "m": str(moment.minute),
            "ss": f"{moment.second:02d}",
            "s": str(moment.second),
            "tt": "AM" if moment.hour < 12 else "PM",
        }[token]

    return _TOKENS.sub(piece, pattern)


def local_date_pattern(language: str) -> str:
    return "dd/MM/yyyy" if language in DAY_FIRST else "MM/dd/yyyy"


@builtin("today", "")
def today(ctx: Context) -> str:
    """Today's date in the run's locale (dd/MM/yyyy or MM/dd/yyyy)."""
    return format_date(now(), local_date_pattern(ctx.language), ctx.language)


@builtin("now", "")
def now_(ctx: Context) -> str:
    """The time now, hh:mm (24 hours)."""
    return now().strftime("%H:%M")


@builtin("weekday", "date?")
def weekday(ctx: Context, value: Any = None) -> int:
    """The day of the week of a date (or today): 1 is Sunday, 7 is Saturday, as in BASIC."""
    moment = now() if value is None else parse_date(value, ctx.language)
    return (moment.weekday() + 1) % 7 + 1


@builtin("hour", "date?")
def hour(ctx: Context, value: Any = None) -> int:
    """The hour (0-23) of a date and time (or now)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,2}:\d{2}\s*", value):
        return int(value.strip().split(":")[0])
    moment = now() if value is None else parse_date(value, ctx.language)
    return moment.hour


@builtin("format", "value, pattern", bare=True)
def format_(ctx: Context, value: Any, pattern: Any) -> str:
    """A date with a pattern (dd/MM/yyyy HH:mm), or a number with one (0.00, #,##0.00)."""
    pattern_text = to_text(pattern)
    if (isinstance(value, int | float) and not isinstance(value, bool)) or re.fullmatch(r"[#0,.]+", pattern_text):
        number = to_number(value)
        decimals = len(pattern_text.split(".")[1]) if "." in pattern_text else 0
        grouped = "," in pattern_text.split(".")[0]
        text = f"{number:,.{decimals}f}" if grouped else f"{number:.{decimals}f}"
        if ctx.language in DAY_FIRST:  # 1.234,56
            text = text.replace(",", "\0").replace(".", ",").replace("\0", ".")
        return text
    return format_date(parse_date(value, ctx.language), pattern_text, ctx.language)


_UNITS = {
    "second": "seconds",
    "minute": "minutes",
    "hour": "hours",
    "day": "days",
    "week": "weeks",
}


def _unit(value: Any) -> str:
    unit = to_text(value).strip().lower().rstrip("s")
    aliases = {
        "d": "day",
        "h": "hour",
        "n": "minute",
        "s": "second",
        "w": "week",
        "m": "month",
        "y": "year",
        "yyyy": "year",
        "ww": "week",
    }
    unit = aliases.get(unit, unit)
    if unit not in (*_UNITS, "month", "year"):
        raise Fault(f"{to_text(value)!r} is not a date unit (second, minute, hour, day, week, month, year)")
    return unit


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    days = [
        31,
        29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28,
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ]
    return moment.replace(year=year, month=month, day=min(moment.day, days[month - 1]))


@builtin("dateAdd", "date, unit, amount", bare=True)
def date_add(ctx: Context, value: Any, unit: Any, amount: Any) -> str:
    """The date moved by ``amount`` units (day, week, month, year, hour, minute, second), as ISO."""
    moment = parse_date(value, ctx.language)
    n = to_number(amount)
    which = _unit(unit)
    try:
        if which in ("month", "year"):
            moment = _add_months(moment, int(n) * (12 if which == "year" else 1))
        else:
            moment = moment + timedelta(**{_UNITS[which]: n})
    except (OverflowError, ValueError):
        raise Fault("the date is out of range") from None
    return iso(moment)


@builtin("dateDiff", "date1, date2, unit", bare=True)
def date_diff(ctx: Context, first: Any, second: Any, unit: Any) -> int:
    """How many whole units go from ``date1`` to ``date2`` (negative when it is earlier)."""
    a, b = parse_date(first, ctx.language), parse_date(second, ctx.language)
    which = _unit(unit)
    if which in ("month", "year"):
        months = (b.year - a.year) * 12 + b.month - a.month
        if months > 0 and b.day < a.day:
            months -= 1
        elif months < 0 and b.day > a.day:
            months += 1
        return months // 12 if which == "year" and months >= 0 else (-((-months) // 12) if which == "year" else months)
    seconds = (b - a).total_seconds()
    size = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}[which]
    return int(seconds / size)


@builtin("isValidDate", "text")
def is_valid_date(ctx: Context, value: Any) -> bool:
    """Whether the text is a date (ISO or the locale's form)."""
    try:
        parse_date(value, ctx.language)
    except Fault:
        return False
    return True


@builtin("isValidHour", "text")
def is_valid_hour(ctx: Context, value: Any) -> bool:
    """Whether the text is a time hh:mm."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", to_text(value))
    return bool(match) and int(match[1]) < 24 and int(match[2]) < 60
