"""JSON from clients, refused past a nesting depth.

``json.loads`` recurses once per level: a REST body or socket frame of a few
kilobytes of ``[`` raises ``RecursionError``, and a value a few hundred levels deep
parses but fails later wherever it is walked again (``json.dumps`` of chat
metadata, pydantic, the response encoder). No message the API defines nests
anywhere near :data:`MAX_JSON_DEPTH`, so anything deeper is refused where it comes
in (:class:`JsonTooDeep`, which the REST layer answers with ``400 json_too_deep``
and the socket with a ``json_too_deep`` protocol error).
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 32  # an object or array counts one level; the body's own object is level 1


class JsonTooDeep(ValueError):
    """A JSON value nested deeper than :data:`MAX_JSON_DEPTH`.

    ``parsed`` is the value when ``json.loads`` could still parse it (None when it
    recursed too deep): a socket answers with the frame's ``id`` from it.
    """

    def __init__(self, limit: int = MAX_JSON_DEPTH, parsed: Any = None) -> None:
        super().__init__(f"JSON nests deeper than {limit} levels")
        self.limit = limit
        self.parsed = parsed


def depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON: dicts, lists, scalars) nests deeper than ``limit``.

    Walks with its own stack, not recursion, so any depth can be measured.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonTooDeep` when ``value`` nests deeper than ``limit``."""
    if depth_exceeds(value, limit):
        raise JsonTooDeep(limit)


def loads(raw: str | bytes) -> Any:
    """``json.loads``, raising :class:`JsonTooDeep` instead of recursing past :data:`MAX_JSON_DEPTH`.

    Other malformed input raises ``ValueError`` (``UnicodeDecodeError`` among them) as ``json.loads`` does.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonTooDeep() from None
    if depth_exceeds(value):
        raise JsonTooDeep(MAX_JSON_DEPTH, value)
    return value
