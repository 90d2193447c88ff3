"""JSON depth: refused past MAX_JSON_DEPTH however deep, without recursing on it."""

from __future__ import annotations

import json

import pytest

from gbmedia.jsondepth import MAX_JSON_DEPTH, JsonTooDeep, check_depth, depth_exceeds, loads


def nested(depth: int, leaf: str = "1") -> str:
    """``depth`` levels of alternating arrays and objects around ``leaf``."""
    text = leaf
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


def test_the_limit_itself_passes_and_one_more_level_is_refused():
    assert depth_exceeds(json.loads(nested(MAX_JSON_DEPTH)), MAX_JSON_DEPTH) is False
    assert depth_exceeds(json.loads(nested(MAX_JSON_DEPTH + 1)), MAX_JSON_DEPTH) is True
    assert loads(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JsonTooDeep) as refused:
        loads(nested(MAX_JSON_DEPTH + 1))
    assert refused.value.limit == MAX_JSON_DEPTH and "32 levels" in str(refused.value)
    assert refused.value.parsed == json.loads(nested(MAX_JSON_DEPTH + 1))  # a socket finds the frame's id in it


def test_what_json_loads_recurses_on_is_refused_not_a_recursion_error():
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JsonTooDeep) as refused:
        loads("[" * 100_000 + "]" * 100_000)
    assert refused.value.parsed is None
    with pytest.raises(JsonTooDeep):
        loads(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)


def test_scalars_wide_values_and_other_errors():
    assert depth_exceeds(5) is False and depth_exceeds("x", 0) is False
    assert depth_exceeds([], 0) is True  # an empty array is one level
    assert loads(json.dumps({"a": [1] * 10_000, "b": {str(n): n for n in range(1000)}}))["a"][0] == 1
    check_depth({"a": {"b": []}}, 3)
    with pytest.raises(JsonTooDeep):
        check_depth({"a": {"b": []}}, 2)
    with pytest.raises(ValueError) as bad:
        loads("{nope")
    assert not isinstance(bad.value, JsonTooDeep)
    with pytest.raises(UnicodeDecodeError):
        loads(b"\xff")
