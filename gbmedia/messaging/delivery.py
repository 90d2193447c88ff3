"""Real-time chat delivery: committed changes reach the sockets of online members on any node.

The node that commits a change publishes one event, with the conversation's
members (read under the send's lock), on the bus channel every node listens to;
each node hands it to the sessions of those members that are connected to it. A
single node without Redis hands its sessions every event directly and publishes
nothing: its in-process bus would bring the event back only to this hub.

Cost per event, not per recipient: the event's JSON text is encoded once, on the
committing node, and every member's socket gets that same frame. The committing
node hands its own sessions the event at once; the other nodes get it through the
bus, where events committed together (a group-committed batch of sends) travel in
one message, so a batch costs one publish, not one per message; their order (the
commit order) is kept.

Delivery is best effort by design: what is durable is the database. A client that
was away, or whose socket was too slow and got dropped, catches up with
``chat_history`` from its last seq (every message carries it, so gaps show).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from gbmedia.bus import Bus, Subscription
from gbmedia.http.ws_output import text_frame
from gbmedia.messaging.conversations import Conversations
from gbmedia.messaging.models import Conversation
from gbmedia.metrics import Sample

log = logging.getLogger(__name__)

CHANNEL = "chat.events"


class Session(Protocol):
    """A connected chat client: who it is and how to push it an event (a ready frame) without blocking."""

    instance_id: str
    identity: str

    def push(self, frame: bytes) -> None: ...


def encode(event: dict[str, Any]) -> str:
    """An event as the JSON text every recipient's socket gets."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class ChatHub:
    def __init__(
        self, bus: Bus, conversations: Conversations, delivery_latency: Callable[[float], None] | None = None
    ) -> None:
        self.bus = bus
        # Told, per recipient socket, the seconds from a message's commit to its push here (a histogram).
        self.delivery_latency = delivery_latency
        self.conversations = conversations
        self._sessions: dict[tuple[str, str], set[Session]] = {}
        self._subscription: Subscription | None = None
        self._outgoing: list[dict[str, Any]] = []  # events waiting for the next bus message, in commit order
        self._publisher: asyncio.Task[None] | None = None
        # This hub's bus messages come back to it too (the bus delivers to the publisher); it already
        # delivered those events locally when it queued them, so it skips them by this mark.
        self.origin = uuid.uuid4().hex
        self.delivered = 0  # events pushed to local sessions (a metric)
        self.published = 0  # bus messages sent (each carries one or more events)

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(CHANNEL, self._on_event)

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._publisher
            self._publisher = None
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

    def samples(self) -> list[Sample]:
        """The fan-out's figures for ``node.metrics.watch``."""
        return [
            Sample(
                "gbmedia_chat_events_delivered_total",
                "Chat events pushed to this node's sockets",
                self.delivered,
                counter=True,
            ),
            Sample(
                "gbmedia_chat_bus_messages_total",
                "Bus messages of chat events published by this node",
                self.published,
                counter=True,
            ),
            Sample("gbmedia_chat_sessions", "Chat sessions connected to this node", self.session_count),
        ]

    # --- outgoing ------------------------------------------------------------------

    async def on_change(
        self, kind: str, event: dict[str, Any], conversation: Conversation, members: list[str] | None = None
    ) -> None:
        """A committed message or receipt (``Messages.on_change``): fan it out to members."""
        if members is None:
            members = await self.conversations.member_identities(conversation.id)
        payload = {"type": "chat_message", "message": event} if kind == "message" else {"type": "chat_receipt", **event}
        committed = _committed_at(event) if kind == "message" else None
        self._queue(str(conversation.instance_id), members, payload, committed)

    async def typing(self, conversation: Conversation, identity: str, active: bool) -> None:
        """Ephemeral: never stored, sent to the other members online now."""
        members = [m for m in await self.conversations.member_identities(conversation.id) if m != identity]
        self._queue(
            str(conversation.instance_id),
            members,
            {"type": "typing", "conversation_id": str(conversation.id), "identity": identity, "active": active},
        )

    def _queue(
        self, instance_id: str, members: list[str], event: dict[str, Any], committed: float | None = None
    ) -> None:
        """To this node's sessions now, and into the next bus message for the other nodes.

        ``committed`` (a message's commit time, epoch seconds) travels along so every node can
        measure its delivery latency.
        """
        text = encode(event)
        self._push(instance_id, members, text_frame(text), committed)
        if not self.bus.spans_nodes:
            return  # a single node: its sessions have it; publishing would reach only this hub, which skips it
        entry: dict[str, Any] = {"instance_id": instance_id, "members": members, "frame": text}
        if committed is not None:
            entry["committed"] = committed
        self._outgoing.append(entry)
        if self._publisher is None:
            self._publisher = asyncio.ensure_future(self._publish())

    def _push(self, instance_id: str, members: Any, frame: bytes, committed: float | None = None) -> None:
        sessions = self._sessions
        pushed = 0
        for identity in members:
            for session in tuple(sessions.get((instance_id, identity), ())):
                session.push(frame)
                pushed += 1
        self.delivered += pushed
        if pushed and committed is not None and self.delivery_latency is not None:
            latency = max(0.0, time.time() - committed)  # wall clocks: nodes' clocks are NTP-synchronised
            for _ in range(pushed):
                self.delivery_latency(latency)

    async def _publish(self) -> None:
        try:
            while self._outgoing:
                events, self._outgoing = self._outgoing, []
                try:
                    await self.bus.publish(CHANNEL, {"origin": self.origin, "events": events})
                    self.published += 1
                except Exception:  # delivery is best effort; the stored messages are what counts
                    log.exception("chat events could not be published", extra={"events": len(events)})
        finally:
            self._publisher = None  # no await between the empty check and here

    # --- incoming ------------------------------------------------------------------

    async def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("origin") == self.origin:
            return  # ours: delivered to this node's sessions when it was queued
        events = message.get("events")
        if events is None and "event" in message:  # one event, as a node before batching published it
            events = [message]
        if not isinstance(events, list):
            log.warning("malformed chat event on the bus")
            return
        for entry in events:
            if not isinstance(entry, dict):
                log.warning("malformed chat event on the bus")
                continue
            instance_id = entry.get("instance_id")
            text = entry.get("frame")
            if text is None and isinstance(entry.get("event"), dict):
                text = encode(entry["event"])
            if not isinstance(instance_id, str) or not isinstance(text, str):
                log.warning("malformed chat event on the bus")
                continue
            committed = entry.get("committed")
            committed = float(committed) if isinstance(committed, int | float) else None
            self._push(instance_id, entry.get("members") or (), text_frame(text), committed)  # one frame, every member


def _committed_at(message: dict[str, Any]) -> float | None:
    """A message event's commit time, epoch seconds: its latest of created, edited, deleted (an edit
    is delivered when it commits, not when the message was first sent); None if it has none."""
    times = []
    for key in ("created_at", "edited_at", "deleted_at"):
        value = message.get(key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                times.append(dt.datetime.fromisoformat(value).timestamp())
    return max(times) if times else None
