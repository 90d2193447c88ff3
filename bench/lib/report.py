"""Printing results: cells, aligned tables, the JSON every benchmark ends with, the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]  # (header, the cell of a row)


def fmt(value: Any, spec: str) -> str:
    """A cell: ``-`` for no value, yes/NO for a verdict, else ``format(value, spec)``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec)


def col(header: str, key: str, spec: str = "") -> Column:
    """A column whose cell is ``fmt(row[key], spec)`` (``-`` where the row has no such key)."""
    return header, lambda row: fmt(row.get(key), spec)


def table(rows: Iterable[Row], columns: Sequence[Column]) -> list[tuple[str, ...]]:
    """The header and one line of cells per row, for ``aligned``: a table is declared once, column by column."""
    return [tuple(header for header, _ in columns), *(tuple(cell(row) for _, cell in columns) for row in rows)]


def aligned(lines: list[tuple[str, ...]] | list[list[str]]) -> list[str]:
    """Rows of cells, right-aligned in columns, the first (the header) underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def print_aligned(lines: list[tuple[str, ...]] | list[list[str]]) -> None:
    """``aligned``, printed."""
    print("\n".join(aligned(lines)))


def print_json(result: dict[str, Any], path: Path | None = None) -> None:
    """The whole result as indented JSON after a blank line, and into ``path`` if given (``--json``)."""
    text = json.dumps(result, indent=2, default=float)
    print()
    print(text)
    if path:
        path.write_text(text + "\n")


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine a result came from: cores, Python, platform, and what the caller adds (load averages, ...)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), **extra}
