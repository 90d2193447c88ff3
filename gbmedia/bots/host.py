"""What a dialog needs from the outside world, as interfaces the runtime's users implement.

The interpreter never talks to chat, a database or the network itself: TALK and HEAR go
through a :class:`ConversationPort` (the dialog engine implements it with the chat
module; :class:`MemoryPort` implements it in memory for ``gbmedia bot run`` style use and
tests), tables through a :class:`TableStore`, files through a :class:`FileStore`, HTTP
through an :class:`HttpFetcher`. Each is scoped to one instance when it is built, so a
built-in cannot name another tenant's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class UserInfo:
    """The person a run talks to (none for a scheduled run)."""

    id: str
    name: str = ""
    mobile: str = ""
    email: str = ""
    locale: str = ""  # empty: the instance's locale
    roles: tuple[str, ...] = ()


class ConversationPort(Protocol):
    """The conversation a run belongs to. HEAR is not here: a run suspends at HEAR and is resumed with the answer."""

    user: UserInfo | None

    async def talk(self, text: str) -> None:
        """Say ``text`` to the user (TALK, PRINT)."""

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        """Send to someone outside this conversation: channel "sms", "mail", "file" or "talk"."""

    async def transfer(self, to: str | None) -> None:
        """Hand the conversation to a human member of the instance (TRANSFER TO)."""

    async def log(self, level: str, text: str) -> None:
        """A line for the operator (LOG, DEBUG)."""

    async def user_of(self, name: str) -> dict[str, Any] | None:
        """Another person of the instance, by name, mobile or e-mail (USER OF)."""

    async def set_param(self, name: str, value: Any) -> None:
        """Remember a per-user setting across runs (SET PARAM)."""


@dataclass
class MemoryPort:
    """A conversation held in memory: what the bot said, sent, logged, in order."""

    user: UserInfo | None = field(default_factory=lambda: UserInfo("user"))
    said: list[str] = field(default_factory=list)
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    transferred_to: list[str | None] = field(default_factory=list)
    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    logins: dict[str, str | None] = field(default_factory=dict)  # HEAR AS LOGIN: code -> who signed in with it

    async def talk(self, text: str) -> None:
        self.said.append(text)

    async def login_start(self) -> str:
        from gbmedia.bots.login import new_code

        self.logins = {new_code(): None}
        return next(iter(self.logins))

    def sign_in(self, code: str, identity: str) -> bool:
        """What ``POST /api/v1/bots/login`` does on a node: the person with ``code`` is ``identity``."""
        if code not in self.logins or self.logins[code] is not None:
            return False
        self.logins[code] = identity
        return True

    async def login_result(self) -> dict[str, Any] | None:
        for code, identity in self.logins.items():
            if identity is not None:
                del self.logins[code]
                person = self.people.get(identity) or {}
                return {"identity": identity, "name": person.get("name", ""), "email": person.get("email", "")}
        return None

    async def send(self, channel: str, to: str, payload: dict[str, Any]) -> None:
        self.sent.append((channel, to, payload))

    async def transfer(self, to: str | None) -> None:
        self.transferred_to.append(to)

    async def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))

    async def user_of(self, name: str) -> dict[str, Any] | None:
        wanted = name.strip().lower()
        for person in self.people.values():
            if wanted in {str(v).strip().lower() for v in person.values()}:
                return dict(person)
        return None

    async def set_param(self, name: str, value: Any) -> None:
        self.params[name] = value


class TableStore(Protocol):
    """An instance's tables (TABLE, SAVE, FIND, MERGE, DELETE)."""

    async def declare(self, name: str, fields: list[dict[str, Any]]) -> None: ...

    async def fields(self, name: str) -> list[dict[str, Any]]: ...

    async def insert(self, name: str, row: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
        """Add a row: number its ``auto`` fields and check its ``unique`` ones atomically."""

    async def rows(self, name: str, limit: int) -> list[tuple[int, dict[str, Any]]]: ...

    async def replace(self, name: str, row_id: int, row: dict[str, Any], fields: list[dict[str, Any]]) -> None:
        """Change a row, checking its ``unique`` fields atomically."""

    async def remove(self, name: str, row_ids: list[int]) -> int: ...


class FileStore(Protocol):
    """An instance's files (SAVE AS, DIR, COPY, DELETE, CREATE FOLDER, FILL, UPLOAD): on disk or in S3."""

    async def kind(self, path: str) -> str | None:
        """``file``, ``folder``, or None when nothing is there."""

    async def write(self, path: str, data: bytes) -> str: ...

    async def read(self, path: str, limit: int) -> bytes: ...

    async def listing(self, path: str) -> list[dict[str, Any]]: ...

    async def delete(self, path: str) -> bool: ...

    async def make_folder(self, path: str) -> str: ...

    async def copy(self, source: str, target: str) -> str: ...


class HttpFetcher(Protocol):
    """HTTP for a run: refuses private addresses unless the instance allows them."""

    async def request(
        self, method: str, url: str, body: Any, headers: dict[str, str], auth: tuple[str, str] | None, budget: Any
    ) -> Any: ...
