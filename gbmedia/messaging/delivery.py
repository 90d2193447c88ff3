"""Real-time chat delivery: committed changes reach the sockets of online members on any node.

The node that commits a change looks up the conversation's members once and
publishes one event, members included, on the bus channel every node listens to;
each node hands it to the sessions of those members that are connected to it. A
single node without Redis uses the in-process bus, so the path is the same.

Delivery is best effort by design: what is durable is the database. A client that
was away, or whose socket was too slow and got dropped, catches up with
``chat_history`` from its last seq (every message carries it, so gaps show).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gbmedia.bus import Bus, Subscription
from gbmedia.messaging.conversations import Conversations
from gbmedia.messaging.models import Conversation

log = logging.getLogger(__name__)

CHANNEL = "chat.events"


class Session(Protocol):
    """A connected chat client: who it is and how to push it an event without blocking."""

    instance_id: str
    identity: str

    def push(self, event: dict[str, Any]) -> None: ...


class ChatHub:
    def __init__(self, bus: Bus, conversations: Conversations) -> None:
        self.bus = bus
        self.conversations = conversations
        self._sessions: dict[tuple[str, str], set[Session]] = {}
        self._subscription: Subscription | None = None
        self.delivered = 0  # events pushed to local sessions (a metric)

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(CHANNEL, self._on_event)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    # --- local sessions ---------------------------------------------------------------

    def attach(self, session: Session) -> None:
        self._sessions.setdefault((session.instance_id, session.identity), set()).add(session)

    def detach(self, session: Session) -> bool:
        """Forget ``session``; True when it was the identity's last one on this node."""
        key = (session.instance_id, session.identity)
        sessions = self._sessions.get(key)
        if sessions is None:
            return True
        sessions.discard(session)
        if sessions:
            return False
        del self._sessions[key]
        return True

    def online_here(self, instance_id: str, identity: str) -> bool:
        return bool(self._sessions.get((instance_id, identity)))

    @property
    def session_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    # --- outgoing ------------------------------------------------------------------

    async def on_change(self, kind: str, event: dict[str, Any], conversation: Conversation,
                        members: list[str] | None = None) -> None:
        """A committed message or receipt (``Messages.on_change``): fan it out to members."""
        if members is None:
            members = await self.conversations.member_identities(conversation.id)
        payload = {"type": "chat_message", "message": event} if kind == "message" else {"type": "chat_receipt",
                                                                                         **event}
        await self.bus.publish(CHANNEL, {"instance_id": str(conversation.instance_id), "members": members,
                                         "event": payload})

    async def typing(self, conversation: Conversation, identity: str, active: bool) -> None:
        """Ephemeral: never stored, sent to the other members online now."""
        members = [m for m in await self.conversations.member_identities(conversation.id) if m != identity]
        await self.bus.publish(CHANNEL, {"instance_id": str(conversation.instance_id), "members": members, "event": {
            "type": "typing", "conversation_id": str(conversation.id), "identity": identity, "active": active}})

    # --- incoming ------------------------------------------------------------------

    async def _on_event(self, message: dict[str, Any]) -> None:
        instance_id = message.get("instance_id")
        event = message.get("event")
        members = message.get("members") or []
        if not isinstance(instance_id, str) or not isinstance(event, dict):
            log.warning("malformed chat event on the bus")
            return
        for identity in members:
            for session in tuple(self._sessions.get((instance_id, identity), ())):
                session.push(event)
                self.delivered += 1
