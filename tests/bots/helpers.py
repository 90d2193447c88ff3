"""Running dialogs in tests: compile, run with an in-memory conversation, answer its HEARs."""

from __future__ import annotations

from typing import Any

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import Outcome, converse


async def talk_with(source: str, answers: list[Any] | None = None, **context: Any) -> tuple[Outcome, MemoryPort]:
    """Run ``source`` to its end (or its first unanswered HEAR): the outcome and what the bot said."""
    port = context.pop("port", None) or MemoryPort()
    ctx = Context(port=port, **context)
    outcome = await converse(load(source, context.get("dialog", "test")), ctx, answers or [])
    return outcome, port


async def said(source: str, answers: list[Any] | None = None, **context: Any) -> list[str]:
    outcome, port = await talk_with(source, answers, **context)
    assert outcome.status == "done", outcome.error
    return port.said
