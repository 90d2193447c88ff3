"""The sandbox's per-run limits and the budget a run spends against them.

A dialog is code written by a tenant's operator and run on the node's event loop,
so every run is bounded: statements executed, wall time while it runs (not while it
waits at a HEAR), the size of any one value and list, and HTTP calls and bytes. The
budget's counters travel with a suspended run's state, so a dialog cannot reset them
by asking a question.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gbmedia.bots.errors import Fault


@dataclass(frozen=True, slots=True)
class Limits:
    max_statements: int = 1_000_000
    max_seconds: float = 30.0
    max_value_bytes: int = 1024 * 1024
    max_list_items: int = 10_000
    max_http_calls: int = 20
    max_http_bytes: int = 5 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits a node's settings give (``GBMEDIA_BOT_*``)."""
        return cls(
            max_statements=settings.bot_max_statements,
            max_seconds=settings.bot_max_seconds,
            max_value_bytes=settings.bot_max_value_bytes,
            max_list_items=settings.bot_max_list_items,
            max_http_calls=settings.bot_max_http_calls,
            max_http_bytes=settings.bot_max_http_bytes,
        )


# The setting each limit comes from: what an operator's error message names.
SETTING = {
    "statements": "GBMEDIA_BOT_MAX_STATEMENTS",
    "seconds": "GBMEDIA_BOT_MAX_SECONDS",
    "value_bytes": "GBMEDIA_BOT_MAX_VALUE_BYTES",
    "list_items": "GBMEDIA_BOT_MAX_LIST_ITEMS",
    "http_calls": "GBMEDIA_BOT_MAX_HTTP_CALLS",
    "http_bytes": "GBMEDIA_BOT_MAX_HTTP_BYTES",
}


class OverLimit(Fault):
    """A limit was reached; the interpreter turns it into a LimitExceeded at the statement's line."""

    def __init__(self, limit: str, allowed: int | float) -> None:
        self.limit = SETTING[limit]
        self.allowed = allowed
        super().__init__(f"limit {self.limit} exceeded (allowed: {allowed})")


class Budget:
    """What one run has spent; ``deadline`` restarts at each resume (waiting for the user is free)."""

    def __init__(self, limits: Limits, statements: int = 0, http_calls: int = 0, http_bytes: int = 0) -> None:
        self.limits = limits
        self.statements = statements
        self.http_calls = http_calls
        self.http_bytes = http_bytes
        self.deadline = time.monotonic() + limits.max_seconds

    def restart_clock(self) -> None:
        self.deadline = time.monotonic() + self.limits.max_seconds

    def remaining_seconds(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OverLimit("seconds", self.limits.max_seconds)
        return left

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverLimit("seconds", self.limits.max_seconds)

    def http_call(self) -> None:
        if self.http_calls >= self.limits.max_http_calls:
            raise OverLimit("http_calls", self.limits.max_http_calls)
        self.http_calls += 1

    def http_received(self, n: int) -> None:
        self.http_bytes += n
        if self.http_bytes > self.limits.max_http_bytes:
            raise OverLimit("http_bytes", self.limits.max_http_bytes)

    def check_value(self, value: Any) -> Any:
        """``value`` if it is within the size limits (strings in UTF-8 bytes, lists and objects in items)."""
        if isinstance(value, str):
            if len(value) * 4 > self.limits.max_value_bytes and len(value.encode()) > self.limits.max_value_bytes:
                raise OverLimit("value_bytes", self.limits.max_value_bytes)
        elif isinstance(value, list | dict) and len(value) > self.limits.max_list_items:
            raise OverLimit("list_items", self.limits.max_list_items)
        return value

    def to_json(self) -> dict[str, int]:
        return {"statements": self.statements, "http_calls": self.http_calls, "http_bytes": self.http_bytes}
