"""The keyword API's OpenAPI entries are the registry's: regenerate them after changing a built-in."""

from __future__ import annotations

import json

from gbmedia.bots import keywords, keywords_doc
from gbmedia.bots.library import REGISTRY


def test_the_document_is_what_the_registry_makes():
    doc = json.loads(keywords_doc.DOC_PATH.read_text(encoding="utf-8"))
    assert keywords_doc.updated(doc) == doc, "run: python -m gbmedia.bots.keywords_doc"


def test_each_served_keyword_has_its_arguments_and_answer():
    entries = keywords_doc.keyword_entries()
    mid = entries["system"]["mid"]
    assert mid["arguments"]["required"] == ["text", "start"]
    assert set(mid["arguments"]["properties"]) == {"text", "start", "length"}
    assert mid["answer"] == {"type": "string"}
    assert entries["system"]["executeSQL"]["answer"] == {"type": "array", "items": {"type": "object"}}
    assert entries["system"]["append"]["arguments"]["properties"]["items"]["type"] == "array"
    assert entries["dialog"]["talk"]["http"] == "run_token"
    assert entries["dialog"]["hear"]["http"] == "dialog_only"
    assert entries["dialog"]["getNow"]["builtin"] == "getNow"  # the note's name, BASIC's NOW an alias
    assert entries["system"]["getByHttp"]["builtin"] == "getHttp"  # two note names, one built-in
    served = sum(len(group) for group in entries.values())
    assert served == sum(len(keywords.names(g)) for g in keywords.GROUPS) - len(keywords.missing())
    for group in entries.values():
        for entry in group.values():
            assert entry["summary"], entry


def test_answer_schemas_follow_the_return_annotations():
    assert keywords_doc.schema_of(int | float) == {"type": "number"}
    assert keywords_doc.schema_of(str | None) == {"type": ["null", "string"]}
    assert keywords_doc.schema_of(dict[str, int]) == {"type": "object"}
    assert keywords_doc.schema_of(list) == {"type": "array"}
    assert keywords_doc.schema_of(list[list[int]]) == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}},
    }
    assert keywords_doc.schema_of(int | list[int]) == {}
    assert keywords_doc.answer_of(REGISTRY.entries["talk"]) == {"type": "null"}
