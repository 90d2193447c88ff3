"""Built-ins over text, numbers and lists: pure functions of their arguments."""

from __future__ import annotations

import base64
import json
import random
import secrets
import string
import uuid
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import fold, kind_of, to_number, to_text

builtin = REGISTRY.builtin


def _int(value: Any, what: str) -> int:
    number = to_number(value, what)
    if isinstance(number, float) and number != int(number):
        raise Fault(f"{what} must be a whole number, not {number}")
    return int(number)


@builtin("len", "value", aliases=("COUNT",))
def len_(ctx: Context, value: Any) -> int:
    """The number of characters of a text, or of items of a list or object."""
    if isinstance(value, list | dict):
        return len(value)
    return len(to_text(value))


@builtin("ubound", "list")
def ubound(ctx: Context, value: Any) -> int:
    """The number of items of a list (as the old platform did: UBOUND of an empty list is 0)."""
    if value is None:
        return 0
    if not isinstance(value, list | dict):
        raise Fault(f"UBOUND takes a list, not {kind_of(value)}")
    return len(value)


@builtin("mid", "text, start, length?")
def mid(ctx: Context, text: Any, start: Any, length: Any = None) -> str:
    """Part of a text: from ``start`` (1 is the first character), ``length`` characters or to the end."""
    s = to_text(text)
    begin = _int(start, "MID's start") - 1
    if begin < 0:
        raise Fault("MID's start counts from 1")
    if length is None:
        return s[begin:]
    return s[begin : begin + max(0, _int(length, "MID's length"))]


@builtin("left", "text, length")
def left(ctx: Context, text: Any, length: Any) -> str:
    """The first ``length`` characters."""
    return to_text(text)[: max(0, _int(length, "LEFT's length"))]


@builtin("right", "text, length")
def right(ctx: Context, text: Any, length: Any) -> str:
    """The last ``length`` characters."""
    n = max(0, _int(length, "RIGHT's length"))
    return to_text(text)[-n:] if n else ""


@builtin("ucase", "text", aliases=("UPPER",))
def ucase(ctx: Context, text: Any) -> str:
    """The text in capitals."""
    return to_text(text).upper()


@builtin("lcase", "text", aliases=("LOWER",))
def lcase(ctx: Context, text: Any) -> str:
    """The text in small letters."""
    return to_text(text).lower()


@builtin("trim", "text")
def trim(ctx: Context, text: Any) -> str:
    """The text without spaces around it."""
    return to_text(text).strip()


@builtin("instr", "text, part")
def instr(ctx: Context, text: Any, part: Any) -> int:
    """Where ``part`` starts in ``text`` (1-based, case-insensitive); 0 when it is not there."""
    return fold(to_text(text)).find(fold(to_text(part))) + 1


@builtin("replace", "text, old, new")
def replace(ctx: Context, text: Any, old: Any, new: Any) -> str:
    """``text`` with every ``old`` replaced by ``new``."""
    old_text = to_text(old)
    if not old_text:
        raise Fault("REPLACE needs something to replace")
    return ctx.budget.check_value(to_text(text).replace(old_text, to_text(new)))


@builtin("split", "text, separator?")
def split(ctx: Context, text: Any, separator: Any = ",") -> list[str]:
    """The parts of a text between separators, trimmed."""
    sep = to_text(separator) or ","
    return ctx.budget.check_value([part.strip() for part in to_text(text).split(sep)])


@builtin("join", "list, separator?")
def join(ctx: Context, items: Any, separator: Any = ", ") -> str:
    """The items of a list as one text."""
    if not isinstance(items, list):
        raise Fault(f"JOIN takes a list, not {kind_of(items)}")
    return ctx.budget.check_value(to_text(separator).join(to_text(i) for i in items))


@builtin("val", "text", aliases=("NUMBER",))
def val(ctx: Context, text: Any) -> int | float:
    """The number a text holds."""
    return to_number(text)


@builtin("str", "value", aliases=("TEXT",))
def str_(ctx: Context, value: Any) -> str:
    """The value as text (lists and objects as JSON)."""
    return to_text(value)


@builtin("int", "number")
def int_(ctx: Context, value: Any) -> int:
    """The whole part of a number."""
    return int(to_number(value))


@builtin("abs", "number")
def abs_(ctx: Context, value: Any) -> int | float:
    """The number without its sign."""
    return abs(to_number(value))


@builtin("round", "number, decimals?")
def round_(ctx: Context, value: Any, decimals: Any = 0) -> int | float:
    """The number rounded to ``decimals`` places (half away from zero, as people round money)."""
    from decimal import ROUND_HALF_UP, Decimal

    places = _int(decimals, "ROUND's decimals")
    if not -15 <= places <= 15:
        raise Fault("ROUND keeps from -15 to 15 decimal places")
    result = Decimal(str(to_number(value))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return int(result) if places <= 0 else float(result)


@builtin("isArray", "value")
def is_array(ctx: Context, value: Any) -> bool:
    """Whether the value is a list."""
    return isinstance(value, list)


@builtin("isEmpty", "value")
def is_empty(ctx: Context, value: Any) -> bool:
    """Whether the value is empty: nothing, "", an empty list or object."""
    return value is None or value == "" or value == [] or value == {}


@builtin("isNumber", "value", aliases=("ISVALIDNUMBER",))
def is_number(ctx: Context, value: Any) -> bool:
    """Whether the value is or reads as a number."""
    try:
        to_number(value)
    except Fault:
        return False
    return value is not None and value != ""


@builtin("uuid", "")
def uuid_(ctx: Context) -> str:
    """A new random UUID."""
    return str(uuid.uuid4())


@builtin("random", "low?, high?")
def random_(ctx: Context, low: Any = None, high: Any = None) -> int | float:
    """A random number: in [0, 1) with no arguments, a whole number from ``low`` to ``high`` with two."""
    if low is None:
        return random.random()
    if high is None:
        low, high = 1, low
    return random.randint(_int(low, "RANDOM's low"), _int(high, "RANDOM's high"))


@builtin("getRandomId", "length?")
def get_random_id(ctx: Context, length: Any = 8) -> str:
    """A short readable id: capitals and digits without look-alikes (0/O, 1/I)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    n = _int(length, "the id's length")
    if not 1 <= n <= 64:
        raise Fault("an id has 1 to 64 characters")
    return "".join(secrets.choice(alphabet) for _ in range(n))


@builtin("generatePassword", "length?")
def generate_password(ctx: Context, length: Any = 12) -> str:
    """A random password with letters, digits and symbols."""
    n = _int(length, "the password's length")
    if not 8 <= n <= 128:
        raise Fault("a password has 8 to 128 characters")
    alphabet = string.ascii_letters + string.digits + "!@#$%&*-_"
    return "".join(secrets.choice(alphabet) for _ in range(n))


@builtin("base64", "text")
def base64_(ctx: Context, text: Any) -> str:
    """The text's UTF-8 bytes in Base64."""
    return base64.b64encode(to_text(text).encode()).decode()


@builtin("numberOnly", "text")
def number_only(ctx: Context, text: Any) -> str:
    """The text's digits only (a phone number without its punctuation)."""
    return "".join(c for c in to_text(text) if c.isdigit())


@builtin("numberToLetters", "number")
def number_to_letters(ctx: Context, number: Any) -> str:
    """A spreadsheet column name: 0 is A, 25 is Z, 26 is AA."""
    n = _int(number, "the column number")
    if n < 0:
        raise Fault("column numbers start at 0")
    letters = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


@builtin("flattenJSON", "object")
def flatten_json(ctx: Context, value: Any) -> dict[str, Any]:
    """An object whose nested fields are joined with "_" (a.b becomes a_b)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, item: Any) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                walk(f"{prefix}_{key}" if prefix else str(key), inner)
        elif isinstance(item, list):
            for i, inner in enumerate(item):
                walk(f"{prefix}_{i}" if prefix else str(i), inner)
        else:
            flat[prefix] = item

    walk("", value)
    return ctx.budget.check_value(flat)


@builtin("json", "value")
def json_(ctx: Context, value: Any) -> str:
    """The value as JSON text."""
    return ctx.budget.check_value(json.dumps(value, ensure_ascii=False))


@builtin("parseJSON", "text")
def parse_json(ctx: Context, text: Any) -> Any:
    """The value a JSON text holds."""
    try:
        return ctx.budget.check_value(json.loads(to_text(text)))
    except ValueError as exc:
        raise Fault(f"not JSON: {exc}") from None


@builtin("newObject", "")
def new_object(ctx: Context) -> dict[str, Any]:
    """A new empty object (NEW OBJECT)."""
    return {}


@builtin("toList", "list, member?")
def to_list(ctx: Context, items: Any, member: Any = None) -> str:
    """A list as one line of text: each item, or each item's ``member``, joined with ", "."""
    if not isinstance(items, list):
        raise Fault(f"TOLIST takes a list, not {kind_of(items)}")
    if member is not None:
        items = [_member(item, to_text(member)) for item in items]
    return ctx.budget.check_value(", ".join(to_text(i) for i in items))


def _member(item: Any, name: str) -> Any:
    if not isinstance(item, dict):
        return None
    if name in item:
        return item[name]
    wanted = name.casefold()
    return next((v for k, v in item.items() if str(k).casefold() == wanted), None)


@builtin("sortBy", "list, member", bare=True)
def sort_by(ctx: Context, items: Any, member: Any) -> list[Any]:
    """The list sorted by each item's ``member`` (text case-insensitively; empties first)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise Fault(f"SORT takes a list, not {kind_of(items)}")
    name = to_text(member)

    def key(item: Any) -> tuple[int, Any]:
        value = _member(item, name)
        if value is None:
            return (0, "")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (1, value)
        return (2, fold(to_text(value)))

    return sorted(items, key=key)


@builtin("append", "list, items...")
def append(ctx: Context, items: Any, *more: Any) -> list[Any]:
    """The list with the items added at its end."""
    if items is None:
        items = []
    if not isinstance(items, list):
        raise Fault(f"APPEND adds to a list, not to {kind_of(items)}")
    result = list(items)
    for item in more:
        result.extend(item if isinstance(item, list) else [item])
    return ctx.budget.check_value(result)
