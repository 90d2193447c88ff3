"""The participant WebSocket protocol, version 1: parsing and validating messages.

Every frame is a JSON object with a ``type``; a client may add an ``id`` (string or
integer) that the server echoes on the reply or error, so clients can match them.
``docs/protocol.md`` documents every message with an example. Bad input never
closes the socket: it gets an ``error`` message with a code.

The socket carries the room's messages (here) and chat's, which chat defines
(:mod:`gbmedia.messaging.protocol`); both are parsed as one union by the same
rules (:mod:`gbmedia.wire`), so a client sees one protocol.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from gbmedia import wire
from gbmedia.errors import ProtocolError as ProtocolError  # the socket's error, for ws.py and whip.py
from gbmedia.messaging.protocol import CHAT_TYPES, ChatMessage
from gbmedia.wire import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from gbmedia.wire import Message as _Message

TrackId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sdp = Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_BYTES)]
Source = Literal["camera", "microphone", "screen_share", "screen_share_audio", "unknown"]


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
    # The offer comes from a fresh connection replacing the publisher connection (its media path failed):
    # the tracks it sends again keep their ids and subscribers (docs/protocol.md, "Media restart").
    restart: bool = False
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


class SubscriberRestart(_Message):
    """The client's subscriber connection failed and was discarded: the server makes a fresh one and
    offers it every track the participant received (same track ids, same wishes)."""

    type: Literal["subscriber_restart"]


class MediaPath(_Message):
    """Which candidate pair one of the client's connections uses, as its WebRTC stack reports it."""

    type: Literal["media_path"]
    target: Literal["publisher", "subscriber"]
    candidate_type: Literal["host", "srflx", "prflx", "relay"]
    protocol: Literal["udp", "tcp"]
    relay_protocol: Literal["udp", "tcp", "tls"] | None = None


class IceServersRequest(_Message):
    """Fresh TURN credentials before the ones from ``joined`` expire (a long session)."""

    type: Literal["ice_servers"]


# --- chat: ChatMessage (gbmedia/messaging/protocol.py); gbmedia/messaging/socket.py handles them ---------

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
    Join
    | Publish
    | Answer
    | Candidate
    | Subscribe
    | Mute
    | TrackSettings
    | Leave
    | Ping
    | IceServersRequest
    | SubscriberRestart
    | MediaPath
    | ChatMessage
    | LiveMessage
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
    "ice_servers",
    "subscriber_restart",
    "media_path",
    *CHAT_TYPES,
    *LIVE_TYPES,
)
_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])


def parse_message(raw: str | bytes) -> ClientMessage:
    """One client frame as a typed message, or :class:`ProtocolError`."""
    return wire.parse(raw, MESSAGE_TYPES, _ADAPTER)
