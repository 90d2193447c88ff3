"""One send path (``Messages.submit``) for REST and the socket: each send goes to the batcher once, and
a room participant's first send, which joins the room's chat, exactly once more."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.errors import ApiError
from gbmedia.messaging.group_commit import SendOutcome, SendRequest
from gbmedia.messaging.models import ChatCaller
from gbmedia.node import Node
from tests.helpers import Tenant, bearer
from tests.messaging.test_chat_socket import connect, token
from tests.messaging.test_group_commit import caller, group, stored_seqs, writing_and_queued

__all__ = ["connect"]  # the socket fixture


@pytest.fixture
def submissions(node: Node, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Sends handed to the batcher, by idempotency key (every submission goes through ``enqueue``)."""
    batcher = node.chat.messages.batcher
    counted: Counter[str] = Counter()
    enqueue = batcher.enqueue

    def counting(request: SendRequest) -> asyncio.Future[SendOutcome]:
        counted[request.idempotency_key] += 1
        return enqueue(request)

    monkeypatch.setattr(batcher, "enqueue", counting)
    return counted


async def room_conversation(client: TestClient, node: Node, tenant: Tenant, name: str) -> str:
    resp = await client.post("/api/v1/rooms", json={"name": name}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    room = await resp.json()
    conversation = await node.chat.conversations.for_room(uuid.UUID(tenant.instance_id), uuid.UUID(room["id"]), name)
    return str(conversation.id)


def send(cid: str, key: str) -> dict[str, Any]:
    return {"type": "chat_send", "conversation_id": cid, "content": f"content of {key}", "idempotency_key": key}


async def test_a_room_participants_first_socket_send_is_submitted_twice_and_later_ones_once(
    client: TestClient, node: Node, tenant: Tenant, connect, submissions: Counter[str]
):
    cid = await room_conversation(client, node, tenant, "planning")
    zed = await connect()
    authed = await zed.request({"type": "auth", "token": token(tenant, "zed", room_join=True, room="planning")})
    assert authed["type"] == "authenticated", authed
    first = await zed.request(send(cid, "first"))
    assert (first["type"], first["seq"], first["duplicate"]) == ("chat_ack", 1, False)
    assert submissions == {"first": 2}  # the not-member outcome, then the retry after joining
    later = await zed.request(send(cid, "later"))
    assert (later["type"], later["seq"]) == ("chat_ack", 2)
    again = await zed.request(send(cid, "first"))  # the first again (a lost ack): the stored message
    assert (again["seq"], again["duplicate"]) == (1, True)
    assert submissions == {"first": 3, "later": 1}
    outsider = await connect()
    await outsider.request({"type": "auth", "token": token(tenant, "yan", room_join=True, room="elsewhere")})
    refused = await outsider.request(send(cid, "outsider"))
    assert (refused["type"], refused["code"]) == ("error", "not_a_member")
    assert submissions["outsider"] == 1  # may not join: no retry


async def test_a_room_participants_first_rest_send_is_submitted_twice_and_later_ones_once(
    client: TestClient, node: Node, tenant: Tenant, submissions: Counter[str]
):
    cid = await room_conversation(client, node, tenant, "review")

    async def post(who: str, room: str, key: str) -> tuple[int, dict[str, Any]]:
        resp = await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=bearer(token(tenant, who, room_join=True, room=room)),
            json={"content": f"content of {key}", "idempotency_key": key},
        )
        return resp.status, await resp.json()

    status, body = await post("zed", "review", "first")
    assert (status, body["seq"]) == (201, 1)
    assert submissions == {"first": 2}
    status, body = await post("zed", "review", "later")
    assert (status, body["seq"]) == (201, 2)
    status, body = await post("zed", "review", "first")
    assert (status, body["seq"]) == (200, 1)
    assert submissions == {"first": 3, "later": 1}
    status, body = await post("yan", "elsewhere", "outsider")
    assert (status, body["error"]["code"]) == (403, "not_a_member")
    assert submissions["outsider"] == 1


async def test_a_send_whose_sender_gave_up_while_queued_is_never_written(
    client: TestClient, node: Node, tenant: Tenant
):
    """Cancelling :meth:`Messages.commit` (a REST client gone, in a server that cancels its handler)
    takes the send out of its queue, as cancelling the wait for the batch did."""
    cid = await group(client, tenant, "alice", "bob")
    messages = node.chat.messages
    async with writing_and_queued(node, tenant, cid, ("g1", "g2")) as (writing, queued):
        assert len(messages.batcher.lane_of(cid).queue) == 1
        queued.cancel()
    assert (await writing).message.seq == 2
    with pytest.raises(asyncio.CancelledError):
        await queued
    after = await messages.send(caller(tenant, "alice"), cid, "after", "g3")
    assert after.message.seq == 3
    assert await stored_seqs(node.db.pool, cid) == [1, 2, 3]  # nothing of g2


async def test_joining_the_rooms_chat_fails_or_stops(
    client: TestClient, node: Node, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    """The retry's join is the one coroutine of the send path: its error is the send's answer; if it is
    cancelled (the node stops), the sender's wait ends too; if the sender gives up, the join stops."""
    cid = uuid.UUID(await room_conversation(client, node, tenant, "sync"))
    messages = node.chat.messages
    participant = ChatCaller(uuid.UUID(tenant.instance_id), "zed", room="sync")
    conversations = messages.conversations
    access = conversations.access
    entered = asyncio.Event()

    async def refused(*args: Any) -> Any:
        raise ApiError(409, "instance_not_active", "the instance is suspended")

    async def stuck(*args: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(conversations, "access", refused)
    with pytest.raises(ApiError) as failed:
        await messages.send(participant, cid, "hi", "j1")
    assert failed.value.code == "instance_not_active"

    monkeypatch.setattr(conversations, "access", stuck)
    request = await messages.prepare(participant, cid, "hi", "j2")
    answers: list[Any] = []
    answered = messages.submit(participant, request, answers.append)
    await entered.wait()
    (joining,) = messages._joining
    joining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answered
    assert answers == [] and not messages._joining

    entered.clear()
    waiting = asyncio.ensure_future(messages.commit(participant, request))
    await entered.wait()
    (joining,) = messages._joining
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)  # the join's task takes the cancellation on its next turn
    assert joining.cancelled() and not messages._joining

    monkeypatch.setattr(conversations, "access", access)
    result = await messages.send(participant, cid, "hi", "j2")
    assert (result.created, result.message.seq) == (True, 1)  # nothing of the attempts above was stored
