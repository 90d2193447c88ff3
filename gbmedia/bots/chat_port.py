"""The conversation port of a run in a chat: TALK is a chat message from the bot, sent durably.

Every TALK goes through :meth:`Messages.send`, the send path people's messages take
(acknowledged after its commit), with an idempotency key made of the message the
run answers and the TALK's place in that answer (``bot.<seq>.<n>``). A turn that is
run again after a crash (its state was not saved yet) says the same things under
the same keys, and the chat stores none of them twice; if a replay words a reply
differently (``TALK NOW``), the stored one stands.

A run with no conversation (a scheduled dialog) uses :class:`LogPort`: what it says
goes to the instance's log. Both write LOG lines and the channels that do not exist
on a node (SMS, e-mail, TALK TO another person) to ``instance_logs``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gbmedia.bots.errors import Fault
from gbmedia.bots.host import UserInfo
from gbmedia.bots.login import PgLogins
from gbmedia.errors import ApiError
from gbmedia.messaging.messages import Messages
from gbmedia.messaging.models import ChatCaller

log = logging.getLogger(__name__)

MAX_LOG_CHARS = 4000


async def write_log(pool: asyncpg.Pool, instance_id: uuid.UUID, level: str, text: str, details: dict[str, Any]) -> None:
    """A line of the instance's log (``instance_logs``), for its operator."""
    await pool.execute(
        "INSERT INTO instance_logs (instance_id, level, message, details) VALUES ($1, $2, $3, $4::jsonb)",
        instance_id,
        level if level in ("debug", "info", "warning", "error") else "info",
        text[:MAX_LOG_CHARS].replace("\x00", ""),
        details,  # the pool's codec encodes jsonb
    )


@dataclass
class InstancePeople:
    """USER OF and SET PARAM over the instance's ``bot_users``."""

    pool: asyncpg.Pool
    instance_id: uuid.UUID

    async def user_of(self, name: str) -> dict[str, Any] | None:
        wanted = name.strip().lower()
        row = await self.pool.fetchrow(
            """SELECT display_name, system_id, email FROM bot_users
                WHERE instance_id = $1 AND (lower(system_id) = $2 OR lower(display_name) = $2 OR lower(email) = $2)
                ORDER BY created_at LIMIT 1""",
            self.instance_id,
            wanted,
        )
        if row is None:
            return None
        return {"name": row["display_name"] or "", "mobile": row["system_id"], "email": row["email"] or ""}

    async def set_param(self, user: str, name: str, value: Any) -> None:
        await self.pool.execute(
            """INSERT INTO bot_users (instance_id, system_id, params)
               VALUES ($1, $2, jsonb_build_object($3::text, $4::jsonb))
               ON CONFLICT (instance_id, system_id)
               DO UPDATE SET params = bot_users.params || EXCLUDED.params, updated_at = now()""",
            self.instance_id,
            user[:200],
            name,
            value,
        )


@dataclass
class ChatPort:
    """A run's conversation: one chat conversation, one user, replies as the bot."""

    pool: asyncpg.Pool
    messages: Messages
    instance_id: uuid.UUID
    conversation_id: uuid.UUID
    bot: str
    user: UserInfo | None
    answering: int  # the seq of the message this turn answers: the replies' keys start with it
    dialog: str = ""
    said: list[str] = field(default_factory=list)
    transferred: tuple[str | None] | None = None  # (to,) once the run said TRANSFER TO
    key: str = ""  # the replies' key prefix when the turn answers no message (a run the operator starts)

    def __post_init__(self) -> None:
        self.people = InstancePeople(self.pool, self.instance_id)

    async def talk(self, text: str) -> None:
        key = f"{self.key or f'bot.{self.answering}'}.{len(self.said)}"
        self.said.append(text)
        if not text.strip():
            return  # an empty TALK says nothing (chat refuses empty messages); its key stays used
        content = (
            text[: self.messages.max_content_bytes // 4]
            if len(text.encode()) > self.messages.max_content_bytes
            else text
        )
        caller = ChatCaller(self.instance_id, self.bot)
        try:
            await self.messages.send(caller, self.conversation_id, content, key)
        except ApiError as exc:
            if exc.code == "idempotency_key_reused":
                return  # a replayed turn worded this reply differently: the one already stored stands
            if exc.status >= 500:
                raise  # the database is away: the turn is handled again later, its replies under the same keys
            # Chat refused it for good (the bot left the conversation, the instance was suspended): the
            # operator reads why; the run goes on, so one refused reply cannot block the conversation.
            await self.log("warning", f"a reply was not sent: {exc}")

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        await self.log("warning", f"not sent: the instance has no {channel} channel (to {to or 'the user'})")

    async def transfer(self, to: str | None) -> None:
        self.transferred = (to,)

    def _logins(self) -> PgLogins:
        if self.user is None:  # pragma: no cover - a chat run always has its user
            raise Fault("HEAR AS LOGIN needs a user")
        return PgLogins(self.pool, self.instance_id, self.conversation_id, self.user.id)

    async def login_start(self) -> str:
        return await self._logins().start()

    async def login_result(self) -> dict[str, Any] | None:
        return await self._logins().result()

    async def log(self, level: str, text: str) -> None:
        details = {"dialog": self.dialog, "conversation_id": str(self.conversation_id)}
        await write_log(self.pool, self.instance_id, level, text, details)

    async def user_of(self, name: str) -> dict[str, Any] | None:
        return await self.people.user_of(name)

    async def set_param(self, name: str, value: Any) -> None:
        if self.user is not None:
            await self.people.set_param(self.user.id, name, value)


@dataclass
class LogPort:
    """A run with nobody to talk to (a scheduled dialog): TALK and the rest go to the instance's log."""

    pool: asyncpg.Pool
    instance_id: uuid.UUID
    dialog: str
    user: UserInfo | None = None
    said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.people = InstancePeople(self.pool, self.instance_id)

    async def talk(self, text: str) -> None:
        self.said.append(text)
        await self.log("info", f"TALK {text}")

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        await self.log("warning", f"not sent: the instance has no {channel} channel (to {to})")

    async def transfer(self, to: str | None) -> None:
        await self.log("warning", "TRANSFER TO in a dialog with no conversation: nothing to hand over")

    async def log(self, level: str, text: str) -> None:
        await write_log(self.pool, self.instance_id, level, text, {"dialog": self.dialog, "scheduled": True})

    async def user_of(self, name: str) -> dict[str, Any] | None:
        return await self.people.user_of(name)

    async def set_param(self, name: str, value: Any) -> None:
        await self.log("warning", "SET PARAM in a dialog with no user: nothing remembered")
