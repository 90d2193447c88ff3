"""The one registry of built-ins: what the keyword HTTP API (issue 18) will list and call."""

from __future__ import annotations

import pytest

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.parser import STATEMENTS, VALUE_FORMS
from gbmedia.bots.registry import Registry


def test_every_builtin_is_described_with_its_parameters_and_a_doc():
    described = {entry["name"]: entry for entry in REGISTRY.describe()}
    assert {"talk", "find", "save", "getHttp", "format", "dateAdd", "mid", "ubound"} <= set(described)
    assert described["mid"]["params"] == [
        {"name": "text", "optional": False, "variadic": False},
        {"name": "start", "optional": False, "variadic": False},
        {"name": "length", "optional": True, "variadic": False},
    ]
    assert described["find"]["group"] == "data" and described["find"]["params"][1]["variadic"]
    assert all(entry["doc"] for entry in described.values())


def test_every_statement_of_the_grammar_names_a_registered_builtin():
    for name, _ in [*STATEMENTS.values(), *VALUE_FORMS.values()]:
        assert REGISTRY.get(name) is not None, name


async def test_call_by_name_as_the_keyword_api_will():
    port = MemoryPort()
    ctx = Context(port=port)
    assert await REGISTRY.call("MID", ctx, ["abcdef", 2, 2]) == "bc"
    assert await REGISTRY.call("dateAdd", ctx, ["2026-01-01", "day", 1]) == "2026-01-02"
    await REGISTRY.call("talk", ctx, ["hello", "there"])
    assert port.said == ["hello there"]
    with pytest.raises(Fault, match="unknown keyword nope"):
        await REGISTRY.call("nope", ctx, [])
    with pytest.raises(Fault, match=r"mid takes 2 to 3 arguments \(text, start, length\?\), got 1"):
        await REGISTRY.call("mid", ctx, ["a"])


def test_a_name_cannot_be_registered_twice():
    registry = Registry()
    registry.builtin("x", "a")(lambda ctx, a: a)
    with pytest.raises(ValueError, match="registered twice"):
        registry.builtin("y", aliases=("X",))(lambda ctx: None)
    entry = registry.get("x")
    assert entry is not None and entry.arity_text() == "1 argument (a)" and not entry.is_async
