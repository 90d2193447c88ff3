"""Chat's socket messages (gbmedia/messaging/protocol.py) parse on /rtc exactly as they did when the
socket's module defined them: same strict rules (gbmedia/wire.py), same error codes and messages, and
``unknown_type`` lists every type of the socket in the same order."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import Field, TypeAdapter

from gbmedia import wire
from gbmedia.errors import ProtocolError
from gbmedia.messaging import protocol as chat
from gbmedia.signaling.protocol import parse_message

CID = "6f1c2a4e-0d7b-4c7e-9a51-3f0e8b6d2c11"
SOCKET_TYPES = [
    "join",
    "publish",
    "answer",
    "candidate",
    "subscribe",
    "mute",
    "track_settings",
    "leave",
    "ping",
    "ice_servers",
    "subscriber_restart",
    "media_path",
    "auth",
    "chat_send",
    "chat_history",
    "chat_receipt",
    "typing",
    "presence",
    "presence_get",
    "reaction",
    "cohost_invite",
    "cohost_answer",
]


def refusal(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as refused:
        parse_message(raw)
    return refused.value


def test_chat_frames_parse_as_chats_own_messages():
    send = parse_message(
        json.dumps({"type": "chat_send", "id": 7, "conversation_id": CID, "content": "hi", "idempotency_key": "k"})
    )
    assert isinstance(send, chat.ChatSend)
    assert (send.id, send.kind, send.metadata) == (7, "text", {})
    history = parse_message(json.dumps({"type": "chat_history", "conversation_id": CID}))
    assert isinstance(history, chat.ChatHistory) and history.limit == 50
    auth = parse_message(b'{"type": "auth", "token": "t"}')
    assert isinstance(auth, chat.Auth) and auth.protocol == wire.PROTOCOL_VERSION
    assert tuple(t for t in SOCKET_TYPES if t in chat.CHAT_TYPES) == chat.CHAT_TYPES


def test_unknown_types_list_every_type_of_the_socket_in_order():
    refused = refusal('{"type": "teleport", "id": "x"}')
    assert (refused.code, refused.request_id) == ("unknown_type", "x")
    assert refused.message == "unknown message type 'teleport'"
    assert refused.details == {"types": SOCKET_TYPES}


def test_bad_chat_frames_get_the_same_errors():
    refused = refusal(json.dumps({"type": "chat_send", "id": 3, "conversation_id": CID, "content": 5}))
    assert (refused.code, refused.request_id) == ("invalid_message", 3)
    assert refused.message == (
        "invalid chat_send message: content: Input should be a valid string; idempotency_key: Field required"
    )
    assert refused.details == {
        "problems": [
            {"field": "content", "message": "Input should be a valid string"},
            {"field": "idempotency_key", "message": "Field required"},
        ]
    }
    refused = refusal(json.dumps({"type": "presence", "status": "away", "mood": "sunny"}))
    assert refused.details == {"problems": [{"field": "mood", "message": "Extra inputs are not permitted"}]}
    refused = refusal(json.dumps({"type": "typing", "conversation_id": "short", "active": 1}))
    assert [p["field"] for p in refused.details["problems"]] == ["conversation_id", "active"]
    assert refusal(json.dumps({"type": "auth", "token": "t", "pad": "x" * wire.MAX_MESSAGE_BYTES})).code == (
        "message_too_large"
    )
    assert refusal('{"type": "auth",').code == "invalid_json"
    assert refusal("[]").code == "invalid_message"


def test_the_wire_rules_parse_any_package_s_messages():
    """gbmedia/wire.py is the one parse step: chat's messages alone parse with it too."""
    adapter: TypeAdapter[chat.ChatMessage] = TypeAdapter(Annotated[chat.ChatMessage, Field(discriminator="type")])
    typing = wire.parse(json.dumps({"type": "typing", "conversation_id": CID}), chat.CHAT_TYPES, adapter)
    assert isinstance(typing, chat.Typing) and typing.active
    with pytest.raises(ProtocolError) as refused:
        wire.parse('{"type": "ping"}', chat.CHAT_TYPES, adapter)
    assert refused.value.details == {"types": list(chat.CHAT_TYPES)}
