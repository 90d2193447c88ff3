"""The one registry of GB BASIC built-ins: name, parameters, what they do.

The interpreter calls built-ins through it (``TALK``, ``FIND``, ``FORMAT``...), the parser
checks argument counts against it, and the keyword HTTP API (issue 18) will serve the
same entries, listing them with :meth:`Registry.describe` and calling them with
:meth:`Registry.call`, so a keyword behaves the same from a dialog and from HTTP.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gbmedia.bots.errors import Fault

if TYPE_CHECKING:
    from gbmedia.bots.context import Context


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    optional: bool = False
    variadic: bool = False


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str  # the canonical name, as the keyword API knows it (camelCase)
    params: tuple[Param, ...]
    fn: Callable[..., Any]  # fn(ctx, *args): a plain function (pure) or a coroutine function
    group: str  # text, math, lists, dates, conversation, data, files, http, settings
    doc: str
    bare: bool  # may be written without parentheses on the right of "=" (x = FORMAT v, "dd")
    is_async: bool
    statement_only: bool = False  # TALK, SAVE...: no value to give in an expression

    @property
    def min_args(self) -> int:
        return sum(1 for p in self.params if not p.optional and not p.variadic)

    @property
    def max_args(self) -> int | None:
        return None if any(p.variadic for p in self.params) else len(self.params)

    def accepts(self, n: int) -> bool:
        return n >= self.min_args and (self.max_args is None or n <= self.max_args)

    def arity_text(self) -> str:
        names = ", ".join(p.name + ("..." if p.variadic else "") + ("?" if p.optional else "") for p in self.params)
        low, high = self.min_args, self.max_args
        if high is None:
            count = f"at least {low} argument{'s' if low != 1 else ''}"
        elif low == high:
            count = f"{low} argument{'s' if low != 1 else ''}"
        else:
            count = f"{low} to {high} arguments"
        return f"{count} ({names})" if names else count

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "params": [{"name": p.name, "optional": p.optional, "variadic": p.variadic} for p in self.params],
            "doc": self.doc,
        }


@dataclass
class Registry:
    entries: dict[str, Builtin] = field(default_factory=dict)
    by_key: dict[str, Builtin] = field(default_factory=dict)  # upper-cased names and aliases

    def builtin(
        self,
        name: str,
        params: str = "",
        group: str = "text",
        aliases: tuple[str, ...] = (),
        bare: bool = False,
        statement_only: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(ctx, *args)`` as ``name``; ``params`` is "a, b?, c..." (optional ?, variadic ...)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            parsed = []
            for raw in filter(None, (p.strip() for p in params.split(","))):
                variadic = raw.endswith("...")
                optional = raw.endswith("?")
                parsed.append(Param(raw.rstrip("?.").strip(), optional, variadic))
            doc = inspect.getdoc(fn) or ""
            entry = Builtin(name, tuple(parsed), fn, group, doc, bare, inspect.iscoroutinefunction(fn), statement_only)
            for key in (name, *aliases):
                if key.upper() in self.by_key:
                    raise ValueError(f"built-in {key} registered twice")
                self.by_key[key.upper()] = entry
            self.entries[name] = entry
            return fn

        return add

    def alias(self, name: str, *aliases: str) -> None:
        """More names for a registered built-in (the keyword API's camelCase names of BASIC's built-ins)."""
        entry = self.entries[name]
        for key in aliases:
            if key.upper() in self.by_key:
                raise ValueError(f"built-in {key} registered twice")
            self.by_key[key.upper()] = entry

    def rename(self, name: str, canonical: str) -> None:
        """Make ``canonical`` a built-in's name (the keyword API's), keeping every name it had as an alias."""
        entry = self.entries.pop(name)
        if canonical.upper() in self.by_key and self.by_key[canonical.upper()] is not entry:
            raise ValueError(f"built-in {canonical} registered twice")
        renamed = dataclasses.replace(entry, name=canonical)
        for key, value in list(self.by_key.items()):
            if value is entry:
                self.by_key[key] = renamed
        self.by_key[canonical.upper()] = renamed
        self.entries[canonical] = renamed

    def get(self, name: str) -> Builtin | None:
        return self.by_key.get(name.upper())

    def describe(self) -> list[dict[str, Any]]:
        return [self.entries[name].describe() for name in sorted(self.entries)]

    async def call(self, name: str, ctx: Context, args: list[Any]) -> Any:
        """Call a built-in by name with already evaluated arguments (the keyword API's way in)."""
        entry = self.get(name)
        if entry is None:
            raise Fault(f"unknown keyword {name}")
        if not entry.accepts(len(args)):
            raise Fault(f"{entry.name} takes {entry.arity_text()}, got {len(args)}")
        result = entry.fn(ctx, *args)
        if entry.is_async:
            result = await result
        return result


REGISTRY = Registry()
