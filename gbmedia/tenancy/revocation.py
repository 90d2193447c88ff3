"""Ending the open sessions of a credential that no longer holds: a revoked API key, a suspended
(or deleted) instance, a suspended (or closed) customer, a cancelled subscription.

A token is checked once, when a session starts (a socket's ``join`` or ``auth``, a WHIP or
WHEP ``POST``); without this module a session open when its key is revoked would run on
for as long as its client liked. The change is announced on the bus, so every node of a
cluster hears it (the announcing node too, through its own subscription), and each node
ends the sessions it holds under that credential, telling their clients why.

The bus delivers at most once: a node cut off from Redis while the change was announced
never hears it, and a change made while Redis was down reaches only the node that made
it. So each node also re-checks the credentials of the sessions it holds every
``GBMEDIA_REVOCATION_CHECK_SECONDS`` (one query per distinct API key), and ends those
that no longer hold: the bus makes it seconds, the check makes it certain.

Sessions register with :meth:`Revocations.hold`, naming their credential and what ends
them. The registry holds a session weakly: one that ended on its own (left, deleted,
reaped) needs no unregistering, and ending one that already ended must do nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from gbmedia.bus import Bus, Subscription

log = logging.getLogger(__name__)

CHANNEL = "tenancy.revoked"

Reason = Literal["api_key_revoked", "instance_suspended", "customer_suspended", "subscription_cancelled"]


@dataclass(frozen=True)
class Credential:
    """What a session was let in with: its token's API key, and the tenant that key belongs to."""

    api_key: str
    instance_id: uuid.UUID
    customer_id: uuid.UUID


@dataclass(frozen=True)
class Revoked:
    """A credential that no longer holds: one field names it, ``reason`` says why (the client is told)."""

    reason: Reason
    api_key: str | None = None
    instance_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None

    def covers(self, credential: Credential) -> bool:
        return (
            credential.api_key == self.api_key
            or credential.instance_id == self.instance_id
            or credential.customer_id == self.customer_id
        )

    def to_message(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "api_key": self.api_key,
            "instance_id": None if self.instance_id is None else str(self.instance_id),
            "customer_id": None if self.customer_id is None else str(self.customer_id),
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Revoked:
        def uid(value: Any) -> uuid.UUID | None:
            return None if value is None else uuid.UUID(str(value))

        return cls(
            reason=message["reason"],
            api_key=message.get("api_key"),
            instance_id=uid(message.get("instance_id")),
            customer_id=uid(message.get("customer_id")),
        )


# Ends one session: called with the session and the revocation; must do nothing if it already ended.
End = Callable[[Any, Revoked], Awaitable[None]]
# Whether a credential still holds: None, or the revocation it is under (tenancy/auth.py).
Check = Callable[[Credential], Awaitable[Revoked | None]]


class Revocations:
    """This node's open sessions by credential, and the bus channel that ends them on every node."""

    def __init__(self) -> None:
        # (id of the session, its credential) -> (the session, weakly; what ends it). A socket may hold
        # two credentials (chat authenticated with one token, the room joined with another).
        self._sessions: dict[tuple[int, Credential], tuple[weakref.ref[Any], End]] = {}
        self._bus: Bus | None = None
        self._subscription: Subscription | None = None
        self._checker: asyncio.Task[None] | None = None
        self.ended = 0  # sessions this node ended

    async def start(self, bus: Bus, check: Check | None = None, interval: float = 30.0) -> None:
        """Hear revocations on ``bus``; with ``check``, also re-check held credentials every ``interval``."""
        self._bus = bus
        self._subscription = await bus.subscribe(CHANNEL, self._on_message)
        if check is not None:
            self._checker = asyncio.create_task(self._check_every(check, interval), name="gbmedia.revocations")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        self._bus = None

    async def check(self, check: Check) -> int:
        """Ask ``check`` about each distinct credential held; end the sessions of those that no longer hold."""
        ended = 0
        for credential in {key[1] for key in list(self._sessions)}:
            revoked = await check(credential)
            if revoked is not None:
                ended += await self.end(revoked)
        return ended

    async def _check_every(self, check: Check, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check(check)
            except Exception:  # the database away: the next round tries again
                log.warning("could not re-check the credentials of open sessions", exc_info=True)

    def hold(self, session: Any, credential: Credential, end: End) -> None:
        """Keep ``session`` (weakly) until it ends; ``end(session, revoked)`` ends it when ``credential`` goes.

        ``end`` must not hold ``session`` itself (a closure over it would keep it alive forever)."""
        key = (id(session), credential)

        def forget(ref: weakref.ref[Any], key: tuple[int, Credential] = key) -> None:
            entry = self._sessions.get(key)
            if entry is not None and entry[0] is ref:
                del self._sessions[key]

        self._sessions[key] = (weakref.ref(session, forget), end)

    def release(self, session: Any) -> None:
        """``session`` ended: forget it now (optional: a collected session is forgotten anyway)."""
        for key, (ref, _end) in list(self._sessions.items()):
            if key[0] == id(session) and ref() is session:
                del self._sessions[key]

    @property
    def held(self) -> int:
        return len(self._sessions)

    async def announce(self, revoked: Revoked) -> None:
        """Tell every node; when the bus cannot (Redis down), this node's sessions end all the same."""
        if self._bus is not None:
            try:
                await self._bus.publish(CHANNEL, revoked.to_message())
                return
            except Exception:
                log.warning(
                    "could not announce a revocation to the cluster; ending this node's sessions only",
                    extra={"reason": revoked.reason},
                    exc_info=True,
                )
        await self.end(revoked)

    async def end(self, revoked: Revoked) -> int:
        """End this node's sessions under ``revoked``; the number ended."""
        matching: dict[int, tuple[Any, End]] = {}
        for key, (ref, end) in list(self._sessions.items()):
            session = ref()
            if session is not None and revoked.covers(key[1]):
                matching[key[0]] = (session, end)
        for key in [key for key in self._sessions if key[0] in matching]:
            del self._sessions[key]  # every credential of an ended session
        for session, end in matching.values():
            try:
                await end(session, revoked)
            except Exception:  # one session failing to end must not keep the others open
                log.exception("ending a revoked session failed", extra={"reason": revoked.reason})
        self.ended += len(matching)
        if matching:
            log.info("revoked sessions ended", extra={"reason": revoked.reason, "sessions": len(matching)})
        return len(matching)

    async def _on_message(self, message: dict[str, Any]) -> None:
        try:
            revoked = Revoked.from_message(message)
        except (KeyError, ValueError, TypeError):
            log.warning("malformed revocation on the bus; ignored", extra={"bus_message": message})
            return
        await self.end(revoked)


async def nobody_listens(_revoked: Revoked) -> None:
    """What a tenancy store announces to before the node wires :meth:`Revocations.announce` in."""
