"""Chat on the participant WebSocket: one :class:`ChatSession` per authenticated socket.

The socket (``gbmedia/signaling/ws.py``) parses frames and hands chat messages
here. Replies come back as dicts; events for this client (new messages, receipts,
typing) are pushed through a bounded queue drained by one writer task, so a slow
client never holds up delivery to others. A client that falls too far behind is
disconnected: it reconnects and catches up from its last seq with ``chat_history``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from gbmedia.errors import ApiError
from gbmedia.messaging.delivery import ChatHub
from gbmedia.messaging.messages import message_event
from gbmedia.messaging.models import ChatCaller
from gbmedia.messaging.presence import Presence, Status
from gbmedia.messaging.service import Chat
from gbmedia.signaling import protocol as p

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Close = Callable[[], Awaitable[None]]
MAX_PENDING = 5_000  # events queued for one socket before it is cut off
PRESENCE_TTL = 60.0  # seconds an online mark lives without a refresh
PRESENCE_REFRESH = 20.0


class ChatSession:
    def __init__(self, chat: Chat, hub: ChatHub, presence: Presence, caller: ChatCaller, send: Send,
                 close: Close) -> None:
        assert caller.instance_id is not None and caller.identity is not None
        self.chat = chat
        self.hub = hub
        self.presence = presence
        self.caller = caller
        self.instance_id = str(caller.instance_id)
        self.identity = caller.identity
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_PENDING)
        self._status: Status = "online"
        self._tasks: list[asyncio.Task[None]] = []
        self.cut_off = False

    async def start(self) -> None:
        self.hub.attach(self)
        await self.presence.set(self.instance_id, self.identity, "online", PRESENCE_TTL)
        self._tasks = [asyncio.ensure_future(self._write()), asyncio.ensure_future(self._refresh_presence())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.hub.detach(self):
            with contextlib.suppress(Exception):  # presence expires by itself if this fails
                await self.presence.clear(self.instance_id, self.identity)

    # --- events to the client ------------------------------------------------------------

    def push(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            if not self.cut_off:
                self.cut_off = True
                log.warning("chat client too slow; disconnecting it", extra={"identity": self.identity})
                self._tasks.append(asyncio.ensure_future(self._close()))

    async def _write(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            except ConnectionError:
                return

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            with contextlib.suppress(Exception):
                await self.presence.set(self.instance_id, self.identity, self._status, PRESENCE_TTL)

    # --- messages from the client ----------------------------------------------------------

    async def handle(self, message: p.ChatMessage) -> dict[str, Any]:
        if isinstance(message, p.ChatSend):
            return await self._send_message(message)
        if isinstance(message, p.ChatHistory):
            return await self._history(message)
        if isinstance(message, p.ChatReceipt):
            receipt = await self.chat.messages.receipt(self.caller, _conversation(message.conversation_id),
                                                       delivered_seq=message.delivered_seq,
                                                       read_seq=message.read_seq)
            return {"type": "chat_receipt_ack", "conversation_id": message.conversation_id,
                    "delivered_seq": receipt.delivered_seq, "read_seq": receipt.read_seq}
        if isinstance(message, p.Typing):
            conversation = await self.chat.conversations.access(self.caller, _conversation(message.conversation_id))
            await self.hub.typing(conversation, self.identity, message.active)
            return {"type": "ack"}
        if isinstance(message, p.PresenceSet):
            self._status = message.status
            await self.presence.set(self.instance_id, self.identity, message.status, PRESENCE_TTL)
            return {"type": "ack"}
        assert isinstance(message, p.PresenceGet)
        statuses = await self.presence.get(self.instance_id, message.identities)
        return {"type": "presence", "statuses": statuses}

    async def _send_message(self, message: p.ChatSend) -> dict[str, Any]:
        await self.chat.check_rate(self.caller)
        result = await self.chat.messages.send(self.caller, _conversation(message.conversation_id), message.content,
                                               message.idempotency_key, kind=message.kind,
                                               metadata=message.metadata)
        stored = result.message
        return {"type": "chat_ack", "conversation_id": message.conversation_id, "message_id": str(stored.id),
                "seq": stored.seq, "created_at": stored.created_at.isoformat(), "duplicate": not result.created}

    async def _history(self, message: p.ChatHistory) -> dict[str, Any]:
        if message.after_seq is not None and message.before_seq is not None:
            raise p.ProtocolError("invalid_message", "give after_seq or before_seq, not both")
        messages, more = await self.chat.messages.history(
            self.caller, _conversation(message.conversation_id), after_seq=message.after_seq,
            before_seq=message.before_seq, limit=message.limit)
        return {"type": "chat_history", "conversation_id": message.conversation_id,
                "messages": [message_event(m) for m in messages], "has_more": more}


def _conversation(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_id", f"conversation_id must be a UUID, got {raw!r}") from None
