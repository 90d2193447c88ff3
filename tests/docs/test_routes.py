"""Every route the README and docs/ name in prose (`POST /api/v1/rooms`) is a route the server has.

The shell sessions run (tests/docs/test_shell_sessions.py); the routes mentioned between them
are checked against gbmedia/http/openapi.json, which tests/docs/test_openapi.py keeps equal
to the server's router.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
METHODS = "GET|POST|PUT|PATCH|DELETE|OPTIONS|HEAD"
ROUTE = re.compile(rf"`(?P<methods>(?:{METHODS})(?:,\s*(?:{METHODS}))*)\s+(?P<path>(?:/|\.\.\./)[^`\s?]*)[^`]*`")


def named_routes(markdown: str) -> list[tuple[str, str]]:
    """(method, path) of every route written as `METHOD /path` (query strings dropped)."""
    return [
        (method.strip(), match["path"]) for match in ROUTE.finditer(markdown) for method in match["methods"].split(",")
    ]


def is_placeholder(segment: str) -> bool:
    return segment.startswith("{") or "<" in segment


def matches(documented: str, route: str) -> bool:
    """``documented`` (maybe ``.../tail``, with ``{x}`` or ``<x>`` placeholders) names ``route``."""
    doc = documented.removeprefix("...").strip("/").split("/")
    real = route.strip("/").split("/")
    if documented.startswith("..."):
        real = real[-len(doc) :] if len(doc) <= len(real) else []
    if len(doc) != len(real):
        return False
    return all(r.startswith("{") or (d == r and not is_placeholder(d)) for d, r in zip(doc, real, strict=True))


def unknown_routes(named: list[tuple[str, str]], paths: dict[str, dict]) -> list[str]:
    return [
        f"{method} {path}"
        for method, path in named
        if not any(matches(path, route) and method.lower() in ops for route, ops in paths.items())
    ]


def test_every_route_the_docs_name_exists():
    paths = json.loads((REPO / "gbmedia/http/openapi.json").read_text(encoding="utf-8"))["paths"]
    problems = []
    named_anywhere = 0
    for document in DOCUMENTS:
        named = named_routes(document.read_text(encoding="utf-8"))
        named_anywhere += len(named)
        problems += [f"{document.relative_to(REPO)}: {route}" for route in unknown_routes(named, paths)]
    assert named_anywhere > 50
    assert not problems, problems


def test_a_route_the_server_does_not_have_is_caught():
    paths = {"/api/v1/rooms/{room_id}": {"get": {}, "delete": {}}, "/web/{path}": {"get": {}}}
    text = "`GET /api/v1/rooms/{id}`, `DELETE .../rooms/{room_id}`, `GET /web/room`, `POST /api/v1/rooms/{room_id}`"
    text += ", `GET /api/v1/room/{room_id}`, `GET /api/v1/rooms/standup`, `GET, PATCH /api/v1/rooms/{x}?a=1`"
    assert unknown_routes(named_routes(text), paths) == [
        "POST /api/v1/rooms/{room_id}",
        "GET /api/v1/room/{room_id}",
        "PATCH /api/v1/rooms/{x}",
    ]
