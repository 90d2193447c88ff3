"""An instance's dialogs in PostgreSQL (``bot_dialogs``), compiled on demand, and their schedules.

A dialog is checked when it is stored: it must parse (INCLUDEs resolved against the
instance's other dialogs) and its ``SET SCHEDULE`` line must be a cron expression,
so a run never meets a syntax error. Storing a dialog also writes its schedule
(``schedules``, one per dialog, with the next time it fires), in the same
transaction. Compiling is CPU work of milliseconds, so it runs in a thread; compiled
dialogs are cached per instance until any of its dialogs changes (an INCLUDEd one
changes the includer too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from croniter import croniter

from gbmedia.bots.compiler import Compiled, ITable, load
from gbmedia.bots.errors import BasicSyntaxError
from gbmedia.errors import ApiError, bad_request, not_found

NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,99}$")
MAX_SOURCE_BYTES = 256 * 1024
MAX_CACHED = 1000  # compiled dialogs kept per node
START_DIALOG = "start"  # what runs when a user first writes to a bot
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def dialog_name(raw: str) -> str:
    """The stored form of a dialog's name: small letters, without ``.bas`` (``Menu.bas`` is ``menu``)."""
    name = raw.strip().lower()
    return name[:-4] if name.endswith(".bas") else name


def next_firing(cron: str, after: dt.datetime) -> dt.datetime:
    """When ``cron`` fires next after ``after`` (6 fields: seconds come first, as in the old platform)."""
    fields = cron.split()
    return croniter(cron, after, second_at_beginning=len(fields) == 6).get_next(dt.datetime)


def valid_cron(cron: str) -> bool:
    return croniter.is_valid(cron, second_at_beginning=len(cron.split()) == 6)


@dataclass(frozen=True)
class Dialog:
    name: str
    source: str
    updated_at: dt.datetime
    schedule: str | None = None


class DialogMissing(LookupError):
    """A run named a dialog the instance does not have."""


class Dialogs:
    def __init__(self, pool: asyncpg.Pool, clock: Clock = utc_now) -> None:
        self.pool = pool
        self.clock = clock
        self._compiled: dict[tuple[uuid.UUID, str], tuple[Any, Compiled]] = {}

    async def _sources(self, instance_id: uuid.UUID, conn: asyncpg.Connection | None = None) -> dict[str, str]:
        rows = await (conn or self.pool).fetch(
            "SELECT name, source FROM bot_dialogs WHERE instance_id = $1", instance_id
        )
        return {r["name"]: r["source"] for r in rows}

    @staticmethod
    def _compile(name: str, source: str, sources: dict[str, str]) -> Compiled:
        def loader(included: str) -> str:
            return sources[dialog_name(included)]  # KeyError: the parser says the dialog is missing

        return load(source, name, loader)

    async def save(self, instance_id: uuid.UUID, raw_name: str, source: str) -> tuple[Dialog, bool]:
        """Store a dialog after checking it: (dialog, created). 400 ``bot_syntax_error`` names line and column."""
        name = dialog_name(raw_name)
        if not NAME.fullmatch(name):
            raise bad_request(
                "invalid_dialog_name",
                "a dialog name is 1-100 letters, digits, '_', '.' or '-' (not starting with . or -)",
            )
        size = len(source.encode("utf-8"))
        if size > MAX_SOURCE_BYTES:
            raise ApiError(
                413,
                "dialog_too_large",
                f"a dialog is at most {MAX_SOURCE_BYTES} bytes ({size} given)",
                {"max_bytes": MAX_SOURCE_BYTES},
            )
        if "\x00" in source:
            raise bad_request("invalid_content", "a dialog cannot contain the NUL character (U+0000)")
        async with self.pool.acquire() as conn, conn.transaction():
            # One writer of an instance's dialogs at a time: an INCLUDE is checked against what is stored.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"bot_dialogs:{instance_id}")
            sources = await self._sources(instance_id, conn)
            sources[name] = source
            try:
                compiled = await asyncio.to_thread(self._compile, name, source, sources)
            except BasicSyntaxError as exc:
                raise ApiError(400, "bot_syntax_error", str(exc), exc.to_json()) from None
            cron = compiled.schedules[-1] if compiled.schedules else None
            if cron is not None and not valid_cron(cron):
                raise bad_request("bot_invalid_schedule", f"SET SCHEDULE {cron!r} is not a valid cron expression")
            row = await conn.fetchrow(
                """INSERT INTO bot_dialogs (instance_id, name, source) VALUES ($1, $2, $3)
                   ON CONFLICT (instance_id, name) DO UPDATE SET source = EXCLUDED.source, updated_at = now()
                   RETURNING updated_at, (xmax = 0) AS created""",
                instance_id,
                name,
                source,
            )
            await conn.execute("DELETE FROM schedules WHERE instance_id = $1 AND dialog_name = $2", instance_id, name)
            await self._declare_tables(conn, instance_id, compiled)
            if cron is not None:
                await conn.execute(
                    """INSERT INTO schedules (instance_id, dialog_name, cron, next_at) VALUES ($1, $2, $3, $4)""",
                    instance_id,
                    name,
                    cron,
                    next_firing(cron, self.clock()),
                )
        return Dialog(name, source, row["updated_at"], cron), bool(row["created"])

    @staticmethod
    async def _declare_tables(conn: asyncpg.Connection, instance_id: uuid.UUID, compiled: Compiled) -> None:
        """The dialog's TABLE declarations take effect when it is stored, so the keyword API finds its tables.

        (Running the dialog declares them again, the same way: gbmedia/bots/tables.py.)
        """
        for unit in compiled.units.values():
            for ins in unit.code:
                if isinstance(ins, ITable):
                    await conn.execute(
                        """INSERT INTO bot_tables (instance_id, name, fields) VALUES ($1, $2, $3::jsonb)
                           ON CONFLICT (instance_id, name)
                           DO UPDATE SET fields = EXCLUDED.fields, updated_at = now()""",
                        instance_id,
                        ins.name,
                        ins.fields,
                    )

    async def list(self, instance_id: uuid.UUID) -> list[Dialog]:
        rows = await self.pool.fetch(
            """SELECT d.name, d.source, d.updated_at, s.cron FROM bot_dialogs d
                 LEFT JOIN schedules s ON s.instance_id = d.instance_id AND s.dialog_name = d.name
                WHERE d.instance_id = $1 ORDER BY d.name""",
            instance_id,
        )
        return [Dialog(r["name"], r["source"], r["updated_at"], r["cron"]) for r in rows]

    async def get(self, instance_id: uuid.UUID, raw_name: str) -> Dialog:
        name = dialog_name(raw_name)
        row = await self.pool.fetchrow(
            """SELECT d.name, d.source, d.updated_at, s.cron FROM bot_dialogs d
                 LEFT JOIN schedules s ON s.instance_id = d.instance_id AND s.dialog_name = d.name
                WHERE d.instance_id = $1 AND d.name = $2""",
            instance_id,
            name,
        )
        if row is None:
            raise not_found("dialog", name)
        return Dialog(row["name"], row["source"], row["updated_at"], row["cron"])

    async def delete(self, instance_id: uuid.UUID, raw_name: str) -> None:
        name = dialog_name(raw_name)
        async with self.pool.acquire() as conn, conn.transaction():
            result = await conn.execute(
                "DELETE FROM bot_dialogs WHERE instance_id = $1 AND name = $2", instance_id, name
            )
            if result == "DELETE 0":
                raise not_found("dialog", name)
            await conn.execute("DELETE FROM schedules WHERE instance_id = $1 AND dialog_name = $2", instance_id, name)

    async def names(self, instance_id: uuid.UUID) -> set[str]:
        rows = await self.pool.fetch("SELECT name FROM bot_dialogs WHERE instance_id = $1", instance_id)
        return {r["name"] for r in rows}

    async def compiled(self, instance_id: uuid.UUID, raw_name: str) -> Compiled:
        """The dialog ready to run (DialogMissing when the instance has none of that name)."""
        name = dialog_name(raw_name)
        version = tuple(
            await self.pool.fetchrow(
                "SELECT max(updated_at), count(*) FROM bot_dialogs WHERE instance_id = $1", instance_id
            )
        )
        cached = self._compiled.get((instance_id, name))
        if cached is not None and cached[0] == version:
            return cached[1]
        sources = await self._sources(instance_id)
        if name not in sources:
            raise DialogMissing(name)
        compiled = await asyncio.to_thread(self._compile, name, sources[name], sources)
        if len(self._compiled) >= MAX_CACHED:
            self._compiled.clear()  # simplest bound: dialogs recompile in milliseconds
        self._compiled[(instance_id, name)] = (version, compiled)
        return compiled
