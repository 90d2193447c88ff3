"""docs/dependencies.md maps every dependency of the older platform (issue 18, part 7) to what gbmedia uses."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIST = REPO / "tests" / "docs" / "gb-dependencies.txt"  # the older server's package.json, one package a line
DOC = REPO / "docs" / "dependencies.md"


def packages() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in LIST.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif line.strip() and not line.startswith("#"):
            name, version = line.rsplit(" ", 1)
            sections[current].append((name, version))
    return sections


def rows() -> dict[str, list[tuple[str, str, str]]]:
    sections: dict[str, list[tuple[str, str, str]]] = {}
    current = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        match = re.match(r"^\| `([^`]+)` \| ([^|]+) \| (.+) \|$", line)
        if match:
            sections[current].append((match[1], match[2].strip(), match[3].strip()))
    return sections


def test_every_package_of_the_old_platform_has_exactly_one_row_saying_what_replaces_it():
    listed, documented = packages(), rows()
    assert set(listed) == {"dependencies", "devDependencies"} == set(documented)
    for section, entries in listed.items():
        assert [(name, version) for name, version, _ in documented[section]] == entries, section
        for name, _, replacement in documented[section]:
            assert len(replacement) > 20, name  # a real answer, not a placeholder
            assert "TODO" not in replacement, name
    assert sum(len(entries) for entries in listed.values()) > 180


def test_the_modules_the_map_names_exist():
    text = DOC.read_text(encoding="utf-8")
    for path in set(re.findall(r"`((?:gbmedia|tests|deploy|scripts|web)/[\w./-]*)`", text)):
        assert (REPO / path.rstrip("/")).exists(), path
