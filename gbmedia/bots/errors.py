"""The errors a GB BASIC dialog can end with, each carrying where it happened.

Authors read these: a syntax error names the line and column (``line 3, col 9:
unclosed string``), a runtime error the dialog and line, a limit the limit's name, so
that an operator can fix the dialog without reading the interpreter.
"""

from __future__ import annotations


class BasicError(Exception):
    """Anything wrong with a dialog, at a place in its source."""

    def __init__(self, message: str, line: int, col: int | None = None, dialog: str | None = None) -> None:
        self.message = message
        self.line = line
        self.col = col
        self.dialog = dialog
        super().__init__(str(self))

    def where(self) -> str:
        place = f"line {self.line}" if self.col is None else f"line {self.line}, col {self.col}"
        return f"{self.dialog}: {place}" if self.dialog else place

    def __str__(self) -> str:
        return f"{self.where()}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {"dialog": self.dialog, "line": self.line, "col": self.col, "message": self.message}


class BasicSyntaxError(BasicError):
    """The source does not parse; nothing of it runs."""


class BasicRuntimeError(BasicError):
    """A statement failed while the dialog ran (a bad index, a refused address, ...)."""


class LimitExceeded(BasicRuntimeError):
    """A run went past one of its sandbox limits (``limit`` names the setting)."""

    def __init__(self, limit: str, allowed: int | float, line: int, dialog: str | None = None) -> None:
        self.limit = limit
        self.allowed = allowed
        super().__init__(f"limit {limit} exceeded (allowed: {allowed})", line, None, dialog)


class Fault(Exception):
    """Raised by a built-in: what went wrong, without the place (the interpreter adds dialog and line)."""


class PoliteStop(Exception):
    """A built-in ends the run on purpose with a message for the user (ALLOW ROLE refused)."""
