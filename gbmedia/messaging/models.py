"""Plain data of chat: conversations, members with their receipt cursors, messages; the check its metadata passes."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gbmedia.errors import bad_request
from gbmedia.jsondepth import MAX_JSON_DEPTH, depth_exceeds

if TYPE_CHECKING:
    from gbmedia.tenancy.tokens import Grants

CONVERSATION_KINDS = ("room", "direct", "group", "bot")
MEMBER_ROLES = ("owner", "member", "bot")
MESSAGE_KINDS = ("text", "attachment", "system")


@dataclass(frozen=True)
class Conversation:
    id: uuid.UUID
    customer_id: uuid.UUID
    instance_id: uuid.UUID
    kind: str
    title: str | None
    room_id: uuid.UUID | None
    created_by: str | None
    metadata: dict[str, Any]
    last_seq: int
    created_at: dt.datetime
    shard_key: int = field(repr=False, default=0)


@dataclass(frozen=True)
class Member:
    """A member and how far its receipts reach: every seq up to ``read_seq`` is read."""

    identity: str
    role: str
    joined_at: dt.datetime
    delivered_seq: int
    delivered_at: dt.datetime | None
    read_seq: int
    read_at: dt.datetime | None


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender: str
    kind: str
    content: str  # empty once deleted (a tombstone keeps its place in the sequence)
    metadata: dict[str, Any]
    idempotency_key: str | None
    created_at: dt.datetime
    edited_at: dt.datetime | None
    deleted_at: dt.datetime | None


@dataclass(frozen=True)
class SendResult:
    message: Message
    created: bool  # False: a retry of a send that was already stored


@dataclass(frozen=True)
class Receipt:
    """A member's cursors after a receipt moved them."""

    conversation_id: uuid.UUID
    identity: str
    delivered_seq: int
    read_seq: int


@dataclass(frozen=True)
class ChatCaller:
    """Who acts in chat: an identity of an instance, or an administrator of it.

    ``admin`` (the operator, or a token with ``instance_admin``) reads every
    conversation of the instance and may send as a named sender (bots, backends);
    everyone else reaches only conversations it is a member of.
    ``room`` is the room a participant (or its moderator) joins: the conversation of
    the open room of that name is open to it without an explicit membership, and
    never a closed meeting's of the same name. ``moderator``: the caller moderates
    that room (``room_admin``), so it may remove others' messages in its chat.
    """

    instance_id: uuid.UUID | None  # None: the operator, before it names an instance
    identity: str | None
    admin: bool = False
    room: str | None = None
    moderator: bool = False

    @classmethod
    def with_grants(cls, instance_id: uuid.UUID | None, identity: str | None, grants: Grants) -> ChatCaller:
        """An instance's identity acting with its access token's grants (REST and the socket alike)."""
        in_room = grants.room is not None and (grants.room_join or grants.room_admin)
        return cls(
            instance_id,
            identity,
            admin=grants.instance_admin,
            room=grants.room if in_room else None,
            moderator=in_room and grants.room_admin,
        )


def check_metadata(metadata: dict[str, Any] | None) -> None:
    """400 ``json_too_deep`` for metadata nested past :data:`~gbmedia.jsondepth.MAX_JSON_DEPTH`.

    JSON from a client is refused at that depth when it is parsed; this keeps a
    caller that builds metadata itself (a bot) from storing what ``json.dumps`` and
    every reader would recurse on.
    """
    if metadata and depth_exceeds(metadata):
        raise bad_request(
            "json_too_deep", f"metadata nests deeper than {MAX_JSON_DEPTH} levels", max_depth=MAX_JSON_DEPTH
        )
