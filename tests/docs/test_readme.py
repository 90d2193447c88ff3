"""The README's feature table is a promise: every test it names as proof exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def named_tests(readme: str) -> list[str]:
    """``path::name`` of every test a feature row cites; ``::name`` alone is in the file named before it."""
    found: list[str] = []
    for line in readme.splitlines():
        if not (line.startswith("| ") and "`tests/" in line):
            continue
        current = None
        for ref in re.findall(r"`([^`]+)`", line.rsplit("|", 2)[-2]):
            if ref.startswith("tests/"):
                current, _, name = ref.partition("::")
            elif ref.startswith("::") and current is not None:
                name = ref[2:]
            else:
                continue
            found.append(f"{current}::{name}" if name else current)
    return found


def test_every_test_the_feature_table_cites_exists():
    cited = named_tests((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(cited) > 50
    missing = []
    for ref in cited:
        path, _, name = ref.partition("::")
        file = REPO / path
        if not file.exists() or (name and not re.search(rf"\bdef {re.escape(name)}\(", file.read_text("utf-8"))):
            missing.append(ref)
    assert not missing, missing


def test_a_row_citing_a_missing_test_is_caught():
    row = "| x | works | `tests/test_app.py::test_no_such_thing`, `::test_other` |"
    assert named_tests(row) == ["tests/test_app.py::test_no_such_thing", "tests/test_app.py::test_other"]
