"""Chat sits below the socket and the rooms: ``gbmedia/messaging`` imports none of signaling, rooms,
recording, streaming, the SFU or the node, and the wire rules it shares with signaling are core."""

from __future__ import annotations

import ast
from pathlib import Path

import gbmedia

PACKAGE = Path(gbmedia.__file__).parent
ABOVE_CHAT = ("signaling", "rooms", "recording", "streaming", "sfu", "node", "app", "server", "cli")


def gbmedia_imports(path: Path) -> set[str]:
    """Every ``gbmedia`` module a file imports, at the top, in functions or for type checking only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gbmedia")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gbmedia"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def top(name: str) -> str:
    """``gbmedia.rooms.live`` -> ``rooms``: the part of gbmedia a module belongs to."""
    return name.split(".")[1] if "." in name else ""


def test_messaging_imports_nothing_above_it():
    offending = {
        str(path.relative_to(PACKAGE)): sorted(name for name in gbmedia_imports(path) if top(name) in ABOVE_CHAT)
        for path in sorted((PACKAGE / "messaging").glob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_wire_rules_import_only_the_core_errors():
    assert gbmedia_imports(PACKAGE / "wire.py") <= {
        "gbmedia.errors",
        "gbmedia.errors.ProtocolError",
        "gbmedia.errors.validation_problems",
        "gbmedia.jsondepth",  # the depth limit on what clients send (core)
        "gbmedia.jsondepth.JsonTooDeep",
        "gbmedia.jsondepth.loads",
    }
