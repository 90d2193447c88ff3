"""REST routes of chat under ``/api/v1/conversations`` and ``/api/v1/messages/search``.

Any access token of an instance acts as its identity (the token's ``sub``): it
reaches the conversations it is a member of, and the room conversation of the
room its token joins (the open room of that name, never a closed meeting's chat).
``instance_admin`` and the operator administer: they read every conversation of the
instance and may send as a named ``sender`` (bots, backends). A room's moderator
(``room_admin``) deletes others' messages in its room's chat, and administers nothing
else here. Another instance's conversation is 404 like a missing one. Sends are
rate limited per sender (429 ``chat_rate_limited`` with ``Retry-After``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import ApiError, bad_request
from gbmedia.http.responses import json_response, path_uuid, query_int, query_uuid, read_model
from gbmedia.messaging.models import ChatCaller, Conversation, Member
from gbmedia.messaging.service import Chat
from gbmedia.tenancy.auth import principal_of
from gbmedia.tenancy.models import Principal


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["direct", "group", "bot"] = "group"
    members: list[str] = Field(default_factory=list, max_length=1000)
    title: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    instance_id: uuid.UUID | None = Field(default=None, strict=False)


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    identity: str = Field(min_length=1, max_length=256)
    role: Literal["member", "bot"] = "member"


class MessageSend(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str
    idempotency_key: str
    kind: Literal["text", "attachment", "system"] = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)
    sender: str | None = Field(default=None, min_length=1, max_length=256)


class MessageEdit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str


class ReceiptUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    delivered_seq: int | None = Field(default=None, ge=0)
    read_seq: int | None = Field(default=None, ge=0)
    identity: str | None = Field(default=None, min_length=1, max_length=256)


CHAT: web.AppKey[Chat] = web.AppKey("chat", Chat)


def chat_of(request: web.Request) -> Chat:
    return request.app[CHAT]


def caller_of(principal: Principal, instance_id: uuid.UUID | None = None) -> ChatCaller:
    """The chat view of an authenticated REST caller."""
    if principal.is_operator:
        return ChatCaller(instance_id, None, admin=True)
    if instance_id is not None and instance_id != principal.instance_id:
        raise ApiError(404, "instance_not_found", "no such instance")
    return ChatCaller.with_grants(principal.instance_id, principal.identity, principal.grants)


def conversation_json(
    conversation: Conversation, member: Member | None = None, members: list[Member] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": conversation.id,
        "instance_id": conversation.instance_id,
        "kind": conversation.kind,
        "title": conversation.title,
        "room_id": conversation.room_id,
        "created_by": conversation.created_by,
        "metadata": conversation.metadata,
        "last_seq": conversation.last_seq,
        "created_at": conversation.created_at,
    }
    if member is not None:
        body["unread"] = max(0, conversation.last_seq - member.read_seq)
        body["read_seq"] = member.read_seq
    if members is not None:
        body["members"] = members
    return body


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not raw.isdigit() or not 1 <= int(raw) <= 2**62:
        raise bad_request("invalid_seq", f"seq must be a positive integer, got {raw!r}")
    return int(raw)


def _query_time(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request("invalid_query", f"{name} must be an ISO 8601 time") from None
    if value.tzinfo is None:
        raise bad_request("invalid_query", f"{name} needs a UTC offset, e.g. 2026-12-01T10:00:00+00:00")
    return value


# --- conversations ---------------------------------------------------------------------


async def create_conversation(request: web.Request) -> web.Response:
    body = await read_model(request, ConversationCreate)
    caller = caller_of(principal_of(request), body.instance_id)
    conversation, created = await chat_of(request).conversations.create(
        caller, body.kind, body.members, title=body.title, metadata=body.metadata
    )
    members = await chat_of(request).conversations.members(conversation)
    return json_response(conversation_json(conversation, members=members), status=201 if created else 200)


async def list_conversations(request: web.Request) -> web.Response:
    principal = principal_of(request)
    caller = caller_of(principal, query_uuid(request, "instance_id"))
    limit = query_int(request, "limit", 100, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    found = await chat_of(request).conversations.list_for(
        caller, request.query.get("identity"), limit=limit, offset=offset
    )
    return json_response({"conversations": [conversation_json(c, m) for c, m in found]})


async def get_conversation(request: web.Request) -> web.Response:
    chat = chat_of(request)
    conversation = await chat.conversations.access(
        caller_of(principal_of(request)), path_uuid(request, "conversation_id")
    )
    return json_response(conversation_json(conversation, members=await chat.conversations.members(conversation)))


async def add_member(request: web.Request) -> web.Response:
    chat = chat_of(request)
    caller = caller_of(principal_of(request))
    body = await read_model(request, MemberAdd)
    conversation = await chat.conversations.access(caller, path_uuid(request, "conversation_id"))
    member = await chat.conversations.add_member(conversation, body.identity, body.role)
    return json_response(member, status=201)


async def remove_member(request: web.Request) -> web.Response:
    chat = chat_of(request)
    caller = caller_of(principal_of(request))
    conversation = await chat.conversations.access(caller, path_uuid(request, "conversation_id"))
    identity = request.match_info["identity"]
    if not caller.admin and identity != caller.identity:
        raise ApiError(
            403, "grant_missing", "only an administrator removes others (anyone may leave)", {"grant": "instance_admin"}
        )
    await chat.conversations.remove_member(conversation, identity)
    return json_response({"removed": identity})


# --- messages --------------------------------------------------------------------------


async def send_message(request: web.Request) -> web.Response:
    chat = chat_of(request)
    caller = caller_of(principal_of(request))
    body = await read_model(request, MessageSend)
    await chat.check_rate(caller, body.sender)
    result = await chat.messages.send(
        caller,
        path_uuid(request, "conversation_id"),
        body.content,
        body.idempotency_key,
        kind=body.kind,
        metadata=body.metadata,
        sender=body.sender,
    )
    return json_response(result.message, status=201 if result.created else 200)


async def list_messages(request: web.Request) -> web.Response:
    after = request.query.get("after_seq")
    before = request.query.get("before_seq")
    if after is not None and before is not None:
        raise bad_request("invalid_query", "give after_seq or before_seq, not both")
    after_seq = query_int(request, "after_seq", 0, low=0, high=2**62) if after is not None else None
    before_seq = query_int(request, "before_seq", 0, low=1, high=2**62) if before is not None else None
    limit = query_int(request, "limit", 50, low=1, high=500)
    messages, more = await chat_of(request).messages.history(
        caller_of(principal_of(request)),
        path_uuid(request, "conversation_id"),
        after_seq=after_seq,
        before_seq=before_seq,
        limit=limit,
    )
    return json_response({"messages": messages, "has_more": more})


async def get_message(request: web.Request) -> web.Response:
    message = await chat_of(request).messages.get(
        caller_of(principal_of(request)), path_uuid(request, "conversation_id"), _seq(request)
    )
    return json_response(message)


async def edit_message(request: web.Request) -> web.Response:
    body = await read_model(request, MessageEdit)
    message = await chat_of(request).messages.edit(
        caller_of(principal_of(request)), path_uuid(request, "conversation_id"), _seq(request), body.content
    )
    return json_response(message)


async def delete_message(request: web.Request) -> web.Response:
    message = await chat_of(request).messages.delete(
        caller_of(principal_of(request)), path_uuid(request, "conversation_id"), _seq(request)
    )
    return json_response(message)


async def post_receipt(request: web.Request) -> web.Response:
    body = await read_model(request, ReceiptUpdate)
    caller = caller_of(principal_of(request))
    if body.identity is not None:  # a bot backend reports for its bot
        if not caller.admin:
            raise ApiError(
                403, "grant_missing", "reporting for another identity needs instance_admin", {"grant": "instance_admin"}
            )
        caller = ChatCaller(caller.instance_id, body.identity, admin=True)
    receipt = await chat_of(request).messages.receipt(
        caller, path_uuid(request, "conversation_id"), delivered_seq=body.delivered_seq, read_seq=body.read_seq
    )
    return json_response(receipt)


async def search_messages(request: web.Request) -> web.Response:
    principal = principal_of(request)
    caller = caller_of(principal, query_uuid(request, "instance_id"))
    limit = query_int(request, "limit", 50, low=1, high=500)
    found = await chat_of(request).messages.search(
        caller,
        request.query.get("q", ""),
        conversation_id=query_uuid(request, "conversation_id"),
        sender=request.query.get("sender"),
        since=_query_time(request, "since"),
        until=_query_time(request, "until"),
        limit=limit,
    )
    return json_response({"messages": found})


def register(app: web.Application, chat: Chat) -> None:
    app[CHAT] = chat
    r = app.router
    r.add_post("/api/v1/conversations", create_conversation)
    r.add_get("/api/v1/conversations", list_conversations)
    r.add_get("/api/v1/conversations/{conversation_id}", get_conversation)
    r.add_post("/api/v1/conversations/{conversation_id}/members", add_member)
    r.add_delete("/api/v1/conversations/{conversation_id}/members/{identity}", remove_member)
    r.add_post("/api/v1/conversations/{conversation_id}/messages", send_message)
    r.add_get("/api/v1/conversations/{conversation_id}/messages", list_messages)
    r.add_get("/api/v1/conversations/{conversation_id}/messages/{seq}", get_message)
    r.add_patch("/api/v1/conversations/{conversation_id}/messages/{seq}", edit_message)
    r.add_delete("/api/v1/conversations/{conversation_id}/messages/{seq}", delete_message)
    r.add_post("/api/v1/conversations/{conversation_id}/receipts", post_receipt)
    r.add_get("/api/v1/messages/search", search_messages)
