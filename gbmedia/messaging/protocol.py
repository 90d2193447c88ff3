"""Chat's messages on the participant WebSocket (``/rtc``), version 1.

Chat owns them; the socket (:mod:`gbmedia.signaling.protocol`) parses them together
with its own messages, by the same rules (:mod:`gbmedia.wire`), and hands every one
whose ``type`` is in :data:`CHAT_TYPES` but ``auth`` (which authenticates the socket,
so the socket answers it) to the socket's :class:`~gbmedia.messaging.socket.ChatSession`.
``docs/protocol.md`` ("Chat on the same socket") documents each with an example.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from gbmedia.wire import PROTOCOL_VERSION, Message

ConversationId = Annotated[str, StringConstraints(min_length=36, max_length=36)]


class Auth(Message):
    """Authenticate the socket for chat without joining a room (``join`` also does)."""

    type: Literal["auth"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    protocol: int = PROTOCOL_VERSION


class ChatSend(Message):
    type: Literal["chat_send"]
    conversation_id: ConversationId
    content: str
    idempotency_key: Annotated[str, StringConstraints(max_length=256)]
    kind: Literal["text", "attachment", "system"] = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatHistory(Message):
    type: Literal["chat_history"]
    conversation_id: ConversationId
    after_seq: Annotated[int, Field(ge=0)] | None = None
    before_seq: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class ChatReceipt(Message):
    type: Literal["chat_receipt"]
    conversation_id: ConversationId
    delivered_seq: Annotated[int, Field(ge=0)] | None = None
    read_seq: Annotated[int, Field(ge=0)] | None = None


class Typing(Message):
    type: Literal["typing"]
    conversation_id: ConversationId
    active: bool = True


class PresenceSet(Message):
    type: Literal["presence"]
    status: Literal["online", "away"]


class PresenceGet(Message):
    type: Literal["presence_get"]
    identities: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=500
    )


ChatMessage = Auth | ChatSend | ChatHistory | ChatReceipt | Typing | PresenceSet | PresenceGet
CHAT_TYPES = ("auth", "chat_send", "chat_history", "chat_receipt", "typing", "presence", "presence_get")
