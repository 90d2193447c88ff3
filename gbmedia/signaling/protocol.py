"""The participant WebSocket protocol, version 1: parsing and validating messages.

Every frame is a JSON object with a ``type``; a client may add an ``id`` (string or
integer) that the server echoes on the reply or error, so clients can match them.
``docs/protocol.md`` documents every message with an example. Bad input never
closes the socket: it gets an ``error`` message with a code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from gbmedia.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024  # an SDP with dozens of m-lines stays far below this

TrackId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sdp = Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_BYTES)]
Source = Literal["camera", "microphone", "screen_share", "screen_share_audio", "unknown"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(max_length=64)] | int | None = None


class Join(_Message):
    type: Literal["join"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    protocol: int = PROTOCOL_VERSION
    auto_subscribe: bool = True
    resume: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    kind: Literal["meeting", "live"] = "meeting"  # the kind of a room this join opens (an existing one keeps its own)


class TrackInfoIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: Source = "unknown"
    name: Annotated[str, StringConstraints(max_length=200)] = ""


class Publish(_Message):
    """The publisher connection's offer; its m-lines are the participant's tracks."""

    type: Literal["publish"]
    sdp: Sdp
    tracks: dict[Annotated[str, StringConstraints(min_length=1, max_length=32)], TrackInfoIn] = Field(
        default_factory=dict
    )


class Answer(_Message):
    """The answer to the server's subscriber offer."""

    type: Literal["answer"]
    sdp: Sdp


class IceCandidate(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    candidate: Annotated[str, StringConstraints(max_length=2048)]
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None


class Candidate(_Message):
    type: Literal["candidate"]
    target: Literal["publisher", "subscriber"]
    candidate: IceCandidate | None = None  # null: end of candidates


class Subscribe(_Message):
    type: Literal["subscribe"]
    track_ids: list[TrackId] = Field(min_length=1, max_length=500)
    subscribe: bool = True


class Mute(_Message):
    type: Literal["mute"]
    track_id: TrackId
    muted: bool


class TrackSettings(_Message):
    """A subscriber's wishes for one track it receives: what to send it, or nothing."""

    type: Literal["track_settings"]
    track_id: TrackId
    paused: bool | None = None  # true: the video is hidden, send nothing
    quality: Literal["low", "medium", "high"] | None = None
    width: int | None = Field(default=None, ge=1, le=16384)  # the video element's size
    height: int | None = Field(default=None, ge=1, le=16384)


class Leave(_Message):
    type: Literal["leave"]


class Ping(_Message):
    type: Literal["ping"]


# --- chat (gbmedia/messaging/socket.py handles these) ----------------------------------

ConversationId = Annotated[str, StringConstraints(min_length=36, max_length=36)]


class Auth(_Message):
    """Authenticate the socket for chat without joining a room (``join`` also does)."""

    type: Literal["auth"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    protocol: int = PROTOCOL_VERSION


class ChatSend(_Message):
    type: Literal["chat_send"]
    conversation_id: ConversationId
    content: str
    idempotency_key: Annotated[str, StringConstraints(max_length=256)]
    kind: Literal["text", "attachment", "system"] = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatHistory(_Message):
    type: Literal["chat_history"]
    conversation_id: ConversationId
    after_seq: Annotated[int, Field(ge=0)] | None = None
    before_seq: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class ChatReceipt(_Message):
    type: Literal["chat_receipt"]
    conversation_id: ConversationId
    delivered_seq: Annotated[int, Field(ge=0)] | None = None
    read_seq: Annotated[int, Field(ge=0)] | None = None


class Typing(_Message):
    type: Literal["typing"]
    conversation_id: ConversationId
    active: bool = True


class PresenceSet(_Message):
    type: Literal["presence"]
    status: Literal["online", "away"]


class PresenceGet(_Message):
    type: Literal["presence_get"]
    identities: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=500
    )


ChatMessage = Auth | ChatSend | ChatHistory | ChatReceipt | Typing | PresenceSet | PresenceGet
CHAT_TYPES = ("auth", "chat_send", "chat_history", "chat_receipt", "typing", "presence", "presence_get")

# --- live rooms (gbmedia/rooms/audience.py handles these) ----------------------------

ReactionKind = Literal["heart", "like", "laugh", "wow", "clap", "fire"]


class Reaction(_Message):
    """A reaction (a heart) that floats over the video for everyone in a live room."""

    type: Literal["reaction"]
    kind: ReactionKind = "heart"


class CohostInvite(_Message):
    """A host (or a room_admin) invites a viewer on stage."""

    type: Literal["cohost_invite"]
    participant_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class CohostAnswer(_Message):
    """The invited viewer accepts (it may publish from then on) or declines."""

    type: Literal["cohost_answer"]
    accept: bool


LiveMessage = Reaction | CohostInvite | CohostAnswer
LIVE_TYPES = ("reaction", "cohost_invite", "cohost_answer")

ClientMessage = (
    Join | Publish | Answer | Candidate | Subscribe | Mute | TrackSettings | Leave | Ping | ChatMessage | LiveMessage
)
MESSAGE_TYPES = (
    "join",
    "publish",
    "answer",
    "candidate",
    "subscribe",
    "mute",
    "track_settings",
    "leave",
    "ping",
    *CHAT_TYPES,
    *LIVE_TYPES,
)
_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])


def parse_message(raw: str | bytes) -> ClientMessage:
    """One client frame as a typed message, or :class:`ProtocolError`."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    request_id = data.get("id") if isinstance(data.get("id"), str | int) else None
    kind = data.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}", request_id, {"types": list(MESSAGE_TYPES)}
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "(message)", "message": e["msg"]} for e in exc.errors()
        ]
        raise ProtocolError(
            "invalid_message",
            f"invalid {kind} message: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
            request_id,
            {"problems": problems},
        ) from None
