"""Chat on the participant WebSocket: one :class:`ChatSession` per authenticated socket.

The socket (``gbmedia/signaling/ws.py``) parses frames, chat's among them (defined in
:mod:`gbmedia.messaging.protocol`), authenticates (``auth`` or ``join``), opens the
session (:meth:`ChatSession.open`) and hands it every other chat message. Replies
come back as dicts; events for this client (new messages, receipts, typing) arrive
as ready WebSocket frames (encoded once for all recipients, see
:mod:`gbmedia.messaging.delivery`). They go out through the socket's
:class:`~gbmedia.http.ws_output.SocketOutput`, shared with the signaling on the same
socket: what a socket gets during one turn of the event loop, its ``chat_ack``
replies included, leaves in one write at the end of the turn, so on a busy node a
socket costs one system call per turn, not one per event; nothing ever waits on a
socket, so a slow client never holds up delivery to others. A client whose unsent
output grows past the socket's limit (``GBMEDIA_SOCKET_MAX_BUFFERED_BYTES``) is cut
off: it reconnects and catches up from its last seq with ``chat_history``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from gbmedia.errors import ApiError, ProtocolError, RequestId
from gbmedia.http.ws_output import SocketOutput, text_frame
from gbmedia.messaging import protocol as p
from gbmedia.messaging.delivery import ChatHub
from gbmedia.messaging.messages import message_event
from gbmedia.messaging.models import ChatCaller, SendResult
from gbmedia.messaging.presence import Presence, Status
from gbmedia.messaging.service import Chat

log = logging.getLogger(__name__)

PRESENCE_TTL = 60.0  # seconds an online mark lives without a refresh
PRESENCE_REFRESH = 20.0
MAX_SENDS_IN_FLIGHT = 64  # chat sends of one socket waiting for their commits at once

# How a session reports the error of a request it answers later (a pipelined send's), with its id:
# the socket's own error path, so the client gets the same error message as for any request.
Report = Callable[[Exception, RequestId], None]


class ChatSession:
    def __init__(
        self, chat: Chat, hub: ChatHub, presence: Presence, caller: ChatCaller, output: SocketOutput, report: Report
    ) -> None:
        assert caller.instance_id is not None and caller.identity is not None
        self.chat = chat
        self.hub = hub
        self.presence = presence
        self.caller = caller
        self.instance_id = str(caller.instance_id)
        self.identity = caller.identity
        self.output = output
        self._report = report
        self._sends: set[asyncio.Future[None]] = set()  # sends waiting for their commits
        self._status: Status = "online"
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls, chat: Chat, hub: ChatHub, presence: Presence, caller: ChatCaller, output: SocketOutput, report: Report
    ) -> ChatSession:
        """The socket's chat, started: ``caller`` is online and gets its conversations' events on ``output``."""
        session = cls(chat, hub, presence, caller, output, report)
        await session._start()
        return session

    async def _start(self) -> None:
        self.hub.attach(self)
        await self.presence.set(self.instance_id, self.identity, "online", PRESENCE_TTL)
        self._tasks = [asyncio.ensure_future(self._refresh_presence())]

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

    @property
    def cut_off(self) -> bool:
        """Whether the socket was cut off for not reading (it gets nothing more; it is closing)."""
        return self.output.cut_off

    def push(self, frame: bytes) -> None:
        """Queue a ready frame; it leaves with the others of this turn and the next (one write)."""
        self.output.push(frame)

    def reply(self, message: dict[str, Any]) -> None:
        """A reply of this socket's, sent with the turn's events (acks ride along with deliveries)."""
        self.push(text_frame(json.dumps(message, separators=(",", ":"), ensure_ascii=False)))

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            with contextlib.suppress(Exception):
                await self.presence.set(self.instance_id, self.identity, self._status, PRESENCE_TTL)

    # --- messages from the client ----------------------------------------------------------

    async def handle(self, message: p.ChatMessage) -> dict[str, Any] | None:
        """A chat request's reply; none for ``chat_send``, whose ack follows its commit (:meth:`_send`).

        ``auth`` is the socket's own (it opens the session) and never reaches here.
        """
        if isinstance(message, p.ChatSend):
            await self._send(message)
            return None
        if isinstance(message, p.ChatHistory):
            return await self._history(message)
        if isinstance(message, p.ChatReceipt):
            receipt = await self.chat.messages.receipt(
                self.caller,
                _conversation(message.conversation_id),
                delivered_seq=message.delivered_seq,
                read_seq=message.read_seq,
            )
            return {
                "type": "chat_receipt_ack",
                "conversation_id": message.conversation_id,
                "delivered_seq": receipt.delivered_seq,
                "read_seq": receipt.read_seq,
            }
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

    async def _send(self, message: p.ChatSend) -> None:
        """Check a send now, in the socket's order; let its commit happen while the socket reads on.

        Waiting for each commit before reading the next message would cap a socket at
        one send per commit round trip, however fast the node commits batches. The
        send is queued for its batch before the next message is read (so one socket's
        sends are numbered in the order it sent them); its ack, or its error, follows
        the commit. At most :data:`MAX_SENDS_IN_FLIGHT` wait at once; then the socket
        stops reading until one is answered.
        """
        await self.chat.check_rate(self.caller)
        request = await self.chat.messages.prepare(
            self.caller,
            _conversation(message.conversation_id),
            message.content,
            message.idempotency_key,
            kind=message.kind,
            metadata=message.metadata,
        )
        pending = self.chat.messages.submit(self.caller, request, lambda result: self._answer(message, result))
        self._sends.add(pending)
        pending.add_done_callback(self._sends.discard)
        if len(self._sends) >= MAX_SENDS_IN_FLIGHT:
            await asyncio.wait(self._sends, return_when=asyncio.FIRST_COMPLETED)

    def _answer(self, message: p.ChatSend, result: SendResult | BaseException) -> None:
        """A committed send's ack, or its error through the socket's error path."""
        try:
            if isinstance(result, BaseException):
                raise result
            self._ack(message, result)
        except Exception as exc:
            self._report(exc, message.id)

    def _ack(self, message: p.ChatSend, result: SendResult) -> None:
        stored = result.message
        ack: dict[str, Any] = {
            "type": "chat_ack",
            "conversation_id": message.conversation_id,
            "message_id": str(stored.id),
            "seq": stored.seq,
            "created_at": stored.created_at.isoformat(),
            "duplicate": not result.created,
        }
        if message.id is not None:
            ack["id"] = message.id
        self.reply(ack)  # here, not through the socket's reply path: it joins the turn's single write

    async def _history(self, message: p.ChatHistory) -> dict[str, Any]:
        if message.after_seq is not None and message.before_seq is not None:
            raise ProtocolError("invalid_message", "give after_seq or before_seq, not both")
        messages, more = await self.chat.messages.history(
            self.caller,
            _conversation(message.conversation_id),
            after_seq=message.after_seq,
            before_seq=message.before_seq,
            limit=message.limit,
        )
        return {
            "type": "chat_history",
            "conversation_id": message.conversation_id,
            "messages": [message_event(m) for m in messages],
            "has_more": more,
        }


async def room_chat(
    chat: Chat, instance_id: uuid.UUID, room_id: uuid.UUID, room_name: str, identity: str
) -> dict[str, Any]:
    """A room's conversation with ``identity`` a member of it: the ``chat`` of a ``joined`` message.

    All chat knows of a room: its id and its name (the conversation's title, which a
    participant token's ``room`` grant names, see ``Messages._may_join``).
    """
    conversation = await chat.conversations.for_room(instance_id, room_id, room_name)
    member = await chat.conversations.add_member(conversation, identity)
    return {
        "conversation_id": str(conversation.id),
        "last_seq": conversation.last_seq,
        "delivered_seq": member.delivered_seq,
        "read_seq": member.read_seq,
    }


def _conversation(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_id", f"conversation_id must be a UUID, got {raw!r}") from None
