"""GB BASIC values and how they behave: text, truth, comparison, arithmetic.

Values are JSON's: null, booleans, numbers, strings, lists and objects (dicts), so a
suspended run's variables serialize as they are. Dates are ISO strings. Like BASIC,
an unset variable is empty, "+" joins text when either side is text, and comparing
text ignores case.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from gbmedia.bots.errors import Fault


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no")
    return bool(value)


def to_number(value: Any, what: str = "a number") -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        text = value.strip().replace(",", ".") if value.count(",") == 1 and "." not in value else value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise Fault(f"{value!r} is not {what}") from None
            return number
    raise Fault(f"a {kind_of(value)} is not {what}")


def kind_of(value: Any) -> str:
    return {
        type(None): "empty",
        bool: "boolean",
        int: "number",
        float: "number",
        str: "text",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def fold(text: str) -> str:
    """Text for accent- and case-insensitive comparison (FIND, menus, comparisons)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    if isinstance(a, int | float) and not isinstance(a, bool) and isinstance(b, str):
        try:
            return a, to_number(b)
        except Fault:
            return to_text(a), fold(b)
    if isinstance(b, int | float) and not isinstance(b, bool) and isinstance(a, str):
        try:
            return to_number(a), b
        except Fault:
            return fold(a), to_text(b)
    if isinstance(a, str) and isinstance(b, str):
        return fold(a), fold(b)
    if a is None and isinstance(b, str):
        return "", fold(b)
    if b is None and isinstance(a, str):
        return fold(a), ""
    return a, b


def equal(a: Any, b: Any) -> bool:
    x, y = _comparable(a, b)
    return bool(x == y)


def compare(op: str, a: Any, b: Any) -> bool:
    if op == "=":
        return equal(a, b)
    if op == "<>":
        return not equal(a, b)
    x, y = _comparable(a, b)
    if x is None or y is None:
        x, y = (0 if x is None else x), (0 if y is None else y)
    try:
        if op == "<":
            return bool(x < y)
        if op == ">":
            return bool(x > y)
        if op == "<=":
            return bool(x <= y)
        return bool(x >= y)
    except TypeError:
        raise Fault(f"cannot compare {kind_of(a)} with {kind_of(b)}") from None


MAX_INT_BITS = 1024  # a whole number past this becomes a float: x = x * x in a loop cannot eat the CPU


def _bounded(result: Any) -> Any:
    """Numbers stay JSON's: a whole number too long becomes a float, and no float is infinite (jsonb refuses it)."""
    if type(result) is int and result.bit_length() > MAX_INT_BITS:
        try:
            return float(result)
        except OverflowError:
            raise Fault("number too large") from None
    if type(result) is float and not math.isfinite(result):
        raise Fault("number too large")
    return result


def arithmetic(op: str, a: Any, b: Any) -> Any:
    return _bounded(_arithmetic(op, a, b))


def _arithmetic(op: str, a: Any, b: Any) -> Any:
    if op == "+":
        if isinstance(a, list):
            return [*a, *(b if isinstance(b, list) else [b])]
        if isinstance(a, str) or isinstance(b, str):
            if isinstance(a, str) and isinstance(b, str):
                return a + b
            try:
                return to_number(a) + to_number(b)
            except Fault:
                return to_text(a) + to_text(b)
        return to_number(a) + to_number(b)
    x, y = to_number(a), to_number(b)
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "^":
        try:
            if isinstance(y, int) and abs(y) > 64 and abs(x) > 1:
                x = float(x)  # a big power is computed as a float, never as a huge whole number
            result = x**y
        except (OverflowError, ZeroDivisionError):
            raise Fault("number too large") from None
        if isinstance(result, complex):
            raise Fault("no real result")
        return result
    if y == 0:
        raise Fault("division by zero")
    if op == "/":
        result = x / y
        return int(result) if result == int(result) and isinstance(x, int) and isinstance(y, int) else result
    if op == "\\":
        return int(x // y)
    return x % y  # MOD
