"""Chat over REST with real PostgreSQL: conversations, idempotent sends, history, receipts, search."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp.test_utils import TestClient

from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant


def as_user(tenant: Tenant, identity: str, **grants: bool) -> dict[str, str]:
    return bearer(mint_token(tenant.key, tenant.secret, identity, Grants(**grants)))


async def error_of(resp) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return resp.status, (await resp.json())["error"]["code"]


async def group(client: TestClient, tenant: Tenant, owner: str, *members: str, title: str = "team") -> dict:
    resp = await client.post(
        "/api/v1/conversations",
        json={"kind": "group", "members": list(members), "title": title},
        headers=as_user(tenant, owner),
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def send(
    client: TestClient, tenant: Tenant, who: str, conversation_id: str, content: str, key: str | None = None
):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"content": content, "idempotency_key": key or uuid.uuid4().hex},
        headers=as_user(tenant, who),
    )


async def test_a_group_conversation_numbers_its_messages_in_order(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob", "carol")
    assert [m["identity"] for m in conversation["members"]] == ["alice", "bob", "carol"]
    assert conversation["members"][0]["role"] == "owner"
    sent = []
    for n in range(5):
        resp = await send(client, tenant, ["alice", "bob"][n % 2], conversation["id"], f"hello {n}")
        assert resp.status == 201
        sent.append(await resp.json())
    assert [m["seq"] for m in sent] == [1, 2, 3, 4, 5]
    resp = await client.get(f"/api/v1/conversations/{conversation['id']}/messages", headers=as_user(tenant, "carol"))
    page = await resp.json()
    assert [m["content"] for m in page["messages"]] == [f"hello {n}" for n in range(5)]
    assert page["has_more"] is False
    assert [m["sender"] for m in page["messages"]][:2] == ["alice", "bob"]


async def test_a_retried_send_returns_the_stored_message_and_stores_nothing_twice(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    first = await send(client, tenant, "alice", conversation["id"], "once", key="k-1")
    again = await send(client, tenant, "alice", conversation["id"], "once", key="k-1")
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    # Concurrent retries of one key: still one message.
    results = await asyncio.gather(
        *(send(client, tenant, "alice", conversation["id"], "race", key="k-2") for _ in range(8))
    )
    assert sorted(r.status for r in results) == [200] * 7 + [201]
    assert len({(await r.json())["id"] for r in results}) == 1
    resp = await client.get(f"/api/v1/conversations/{conversation['id']}/messages", headers=as_user(tenant, "bob"))
    assert [m["content"] for m in (await resp.json())["messages"]] == ["once", "race"]
    reused = await send(client, tenant, "alice", conversation["id"], "something else", key="k-1")
    assert await error_of(reused) == (409, "idempotency_key_reused")
    # The same key from another sender is another message.
    assert (await send(client, tenant, "bob", conversation["id"], "once", key="k-1")).status == 201


async def test_history_pages_both_ways_without_gaps(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    for n in range(12):
        assert (await send(client, tenant, "alice", conversation["id"], f"m{n}")).status == 201
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    headers = as_user(tenant, "bob")
    newest = await (await client.get(url, params={"limit": "5"}, headers=headers)).json()
    assert [m["seq"] for m in newest["messages"]] == [8, 9, 10, 11, 12] and newest["has_more"]
    older = await (await client.get(url, params={"limit": "5", "before_seq": "8"}, headers=headers)).json()
    assert [m["seq"] for m in older["messages"]] == [3, 4, 5, 6, 7] and older["has_more"]
    caught_up, cursor = [], 0
    while True:
        page = await (await client.get(url, params={"after_seq": str(cursor), "limit": "4"}, headers=headers)).json()
        caught_up += [m["seq"] for m in page["messages"]]
        if not page["has_more"]:
            break
        cursor = page["messages"][-1]["seq"]
    assert caught_up == list(range(1, 13))
    bad = await client.get(url, params={"after_seq": "1", "before_seq": "3"}, headers=headers)
    assert await error_of(bad) == (400, "invalid_query")


async def test_members_only_and_other_tenants_see_nothing(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    url = f"/api/v1/conversations/{conversation['id']}"
    assert await error_of(await client.get(url, headers=as_user(tenant, "mallory"))) == (403, "not_a_member")
    assert await error_of(await send(client, tenant, "mallory", conversation["id"], "hi")) == (403, "not_a_member")
    other = await create_tenant(client, "globex")
    assert await error_of(await client.get(url, headers=as_user(other, "alice"))) == (404, "conversation_not_found")
    admin = await client.get(url, headers=as_user(tenant, "ops", instance_admin=True))
    assert admin.status == 200  # an administrator of the instance reads it
    assert (await client.get(url, headers=OPERATOR)).status == 200
    mine = await (await client.get("/api/v1/conversations", headers=as_user(tenant, "bob"))).json()
    assert [c["id"] for c in mine["conversations"]] == [conversation["id"]]
    assert (await (await client.get("/api/v1/conversations", headers=as_user(tenant, "mallory"))).json()) == {
        "conversations": []
    }


async def test_bad_sends_are_refused_and_store_nothing(client: TestClient, tenant: Tenant, node):
    conversation = await group(client, tenant, "alice", "bob")
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    headers = as_user(tenant, "alice")
    cases = [
        ({"content": "x", "idempotency_key": "has spaces"}, (400, "invalid_idempotency_key")),
        ({"content": "x", "idempotency_key": ""}, (400, "invalid_idempotency_key")),
        ({"content": "   ", "idempotency_key": "k"}, (400, "empty_message")),
        ({"content": "a\x00b", "idempotency_key": "k"}, (400, "invalid_content")),  # PostgreSQL cannot store it
        ({"content": "x", "idempotency_key": "k", "metadata": {"a": "\x00"}}, (400, "invalid_content")),
        (
            {"content": "x" * (node.settings.chat_max_message_bytes + 1), "idempotency_key": "k"},
            (413, "message_too_large"),
        ),
        ({"content": "x"}, (400, "validation_failed")),
        ({"content": "x", "idempotency_key": "k", "sender": "bob"}, (403, "grant_missing")),
    ]
    for body, expected in cases:
        assert await error_of(await client.post(url, json=body, headers=headers)) == expected, body
    resp = await client.post(url, data=b"{nope", headers={**headers, "Content-Type": "application/json"})
    assert await error_of(resp) == (400, "invalid_json")
    # Nested past json.loads's recursion (a body of 200 KB), or parsed but past json.dumps's (the metadata
    # stored): both were 500 internal_error (issue 21, part 2).
    for metadata in ("[" * 100_000 + "]" * 100_000, '{"a":' * 600 + "1" + "}" * 600):
        body = '{"content": "x", "idempotency_key": "deep", "metadata": ' + metadata + "}"
        resp = await client.post(url, data=body, headers={**headers, "Content-Type": "application/json"})
        assert await error_of(resp) == (400, "json_too_deep")
        assert (await resp.json())["error"]["details"] == {"max_depth": 32}
    unknown = f"/api/v1/conversations/{uuid.uuid4()}/messages"
    assert await error_of(
        await client.post(unknown, json={"content": "x", "idempotency_key": "k"}, headers=headers)
    ) == (404, "conversation_not_found")
    page = await (await client.get(url, headers=headers)).json()
    assert page["messages"] == []


async def test_receipts_move_cursors_forward_only(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    for n in range(4):
        await send(client, tenant, "alice", conversation["id"], f"m{n}")
    url = f"/api/v1/conversations/{conversation['id']}/receipts"
    bob = as_user(tenant, "bob")
    receipt = await (await client.post(url, json={"delivered_seq": 3}, headers=bob)).json()
    assert (receipt["delivered_seq"], receipt["read_seq"]) == (3, 0)
    receipt = await (await client.post(url, json={"read_seq": 2}, headers=bob)).json()
    assert (receipt["delivered_seq"], receipt["read_seq"]) == (3, 2)
    receipt = await (await client.post(url, json={"delivered_seq": 1, "read_seq": 99}, headers=bob)).json()
    assert (receipt["delivered_seq"], receipt["read_seq"]) == (4, 4)  # clamped to the last message; never back
    listed = await (await client.get("/api/v1/conversations", headers=bob)).json()
    assert listed["conversations"][0]["unread"] == 0
    listed = await (await client.get("/api/v1/conversations", headers=as_user(tenant, "alice"))).json()
    assert listed["conversations"][0]["unread"] == 4
    detail = await (await client.get(f"/api/v1/conversations/{conversation['id']}", headers=bob)).json()
    cursors = {m["identity"]: (m["delivered_seq"], m["read_seq"]) for m in detail["members"]}
    assert cursors == {"alice": (0, 0), "bob": (4, 4)}
    assert await error_of(await client.post(url, json={}, headers=bob)) == (400, "receipt_empty")


async def test_search_finds_words_and_respects_membership_and_tenant(client: TestClient, tenant: Tenant):
    ours = await group(client, tenant, "alice", "bob", title="ours")
    theirs = await group(client, tenant, "carol", "dave", title="theirs")
    await send(client, tenant, "alice", ours["id"], "the quarterly budget review is on friday")
    await send(client, tenant, "bob", ours["id"], "lunch at noon")
    await send(client, tenant, "carol", theirs["id"], "secret budget numbers")
    other = await create_tenant(client, "globex")
    foreign = await group(client, other, "alice", "bob")
    await send(client, other, "alice", foreign["id"], "budget of another company")

    async def search(headers, **params):  # type: ignore[no-untyped-def]
        resp = await client.get("/api/v1/messages/search", params=params, headers=headers)
        assert resp.status == 200, await resp.text()
        return [m["content"] for m in (await resp.json())["messages"]]

    assert await search(as_user(tenant, "bob"), q="budget") == ["the quarterly budget review is on friday"]
    assert await search(as_user(tenant, "bob"), q="budget", sender="bob") == []
    assert sorted(await search(as_user(tenant, "ops", instance_admin=True), q="budget")) == [
        "secret budget numbers",
        "the quarterly budget review is on friday",
    ]
    assert await search(as_user(tenant, "bob"), q='"budget review"') == ["the quarterly budget review is on friday"]
    assert await search(as_user(tenant, "bob"), q="lunch", conversation_id=ours["id"]) == ["lunch at noon"]
    resp = await client.get(
        "/api/v1/messages/search", params={"q": "x", "conversation_id": theirs["id"]}, headers=as_user(tenant, "bob")
    )
    assert await error_of(resp) == (403, "not_a_member")
    resp = await client.get("/api/v1/messages/search", params={"q": " "}, headers=as_user(tenant, "bob"))
    assert await error_of(resp) == (400, "query_required")
    assert await search(OPERATOR, q="company", instance_id=other.instance_id) == ["budget of another company"]


async def test_an_instance_in_portuguese_searches_with_stemming(client: TestClient):
    resp = await client.post("/api/v1/customers", json={"name": "Brasil", "tier": "starter"}, headers=OPERATOR)
    customer = await resp.json()
    resp = await client.post(
        f"/api/v1/customers/{customer['id']}/instances", json={"name": "br", "locale": "pt-BR"}, headers=OPERATOR
    )
    body = await resp.json()
    tenant = Tenant(customer["id"], body["instance"]["id"], body["credentials"]["key"], body["credentials"]["secret"])
    conversation = await group(client, tenant, "ana", "bia")
    await send(client, tenant, "ana", conversation["id"], "As reuniões foram canceladas")
    resp = await client.get(
        "/api/v1/messages/search", params={"q": "reuniões cancelado"}, headers=as_user(tenant, "bia")
    )
    assert [m["content"] for m in (await resp.json())["messages"]] == ["As reuniões foram canceladas"]


async def test_edits_and_tombstones(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    await send(client, tenant, "alice", conversation["id"], "typo hre")
    await send(client, tenant, "alice", conversation["id"], "oops, wrong chat")
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    alice = as_user(tenant, "alice")
    edited = await (await client.patch(f"{url}/1", json={"content": "typo here"}, headers=alice)).json()
    assert edited["content"] == "typo here" and edited["edited_at"]
    assert await error_of(
        await client.patch(f"{url}/1", json={"content": "mine now"}, headers=as_user(tenant, "bob"))
    ) == (403, "not_the_sender")
    deleted = await (await client.delete(f"{url}/2", headers=alice)).json()
    assert (deleted["content"], deleted["seq"]) == ("", 2) and deleted["deleted_at"]
    assert await error_of(await client.patch(f"{url}/2", json={"content": "back"}, headers=alice)) == (
        409,
        "message_deleted",
    )
    page = await (await client.get(url, headers=alice)).json()
    assert [(m["seq"], m["content"]) for m in page["messages"]] == [(1, "typo here"), (2, "")]
    assert await error_of(await client.get(f"{url}/9", headers=alice)) == (404, "message_not_found")
    assert await error_of(await client.get(f"{url}/0", headers=alice)) == (400, "invalid_seq")


async def test_direct_conversations_are_unique_per_pair(client: TestClient, tenant: Tenant):
    resp = await client.post(
        "/api/v1/conversations", json={"kind": "direct", "members": ["bob"]}, headers=as_user(tenant, "alice")
    )
    assert resp.status == 201
    first = await resp.json()
    resp = await client.post(
        "/api/v1/conversations", json={"kind": "direct", "members": ["alice"]}, headers=as_user(tenant, "bob")
    )
    assert resp.status == 200 and (await resp.json())["id"] == first["id"]
    resp = await client.post(
        "/api/v1/conversations", json={"kind": "direct", "members": ["bob", "carol"]}, headers=as_user(tenant, "alice")
    )
    assert await error_of(resp) == (400, "direct_needs_two")
    resp = await client.post(
        f"/api/v1/conversations/{first['id']}/members", json={"identity": "carol"}, headers=as_user(tenant, "alice")
    )
    assert await error_of(resp) == (400, "direct_is_fixed")


async def test_members_join_and_leave(client: TestClient, tenant: Tenant):
    conversation = await group(client, tenant, "alice", "bob")
    url = f"/api/v1/conversations/{conversation['id']}/members"
    resp = await client.post(url, json={"identity": "carol"}, headers=as_user(tenant, "alice"))
    assert resp.status == 201
    assert (await send(client, tenant, "carol", conversation["id"], "hi all")).status == 201
    resp = await client.delete(f"{url}/bob", headers=as_user(tenant, "carol"))
    assert await error_of(resp) == (403, "grant_missing")  # only admins remove others
    assert (await client.delete(f"{url}/carol", headers=as_user(tenant, "carol"))).status == 200  # leaving is fine
    assert await error_of(await send(client, tenant, "carol", conversation["id"], "?")) == (403, "not_a_member")
    assert (await client.delete(f"{url}/bob", headers=as_user(tenant, "ops", instance_admin=True))).status == 200
    assert await error_of(await client.delete(f"{url}/bob", headers=OPERATOR)) == (404, "member_not_found")


async def test_a_bot_backend_sends_as_its_bot_with_instance_admin(client: TestClient, tenant: Tenant):
    resp = await client.post(
        "/api/v1/conversations",
        json={"kind": "bot", "members": ["bot:helper", "alice"]},
        headers=as_user(tenant, "ops", instance_admin=True),
    )
    assert resp.status == 201, await resp.text()
    conversation = await resp.json()
    assert {m["identity"] for m in conversation["members"]} >= {"bot:helper", "alice"}
    resp = await client.post(
        f"/api/v1/conversations/{conversation['id']}/messages",
        json={"content": "How can I help?", "idempotency_key": "greet", "sender": "bot:helper"},
        headers=as_user(tenant, "ops", instance_admin=True),
    )
    assert resp.status == 201 and (await resp.json())["sender"] == "bot:helper"
    resp = await client.post(
        f"/api/v1/conversations/{conversation['id']}/messages",
        json={"content": "op", "idempotency_key": "op"},
        headers=OPERATOR,
    )
    assert await error_of(resp) == (400, "sender_required")


async def _room_chat(client: TestClient, tenant: Tenant, name: str) -> tuple[str, str]:
    """A new meeting called ``name``: its room id and its chat's conversation id."""
    from gbmedia.app import NODE

    resp = await client.post("/api/v1/rooms", json={"name": name}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    room = (await resp.json())["id"]
    chat = await client.app[NODE].chat.conversations.for_room(uuid.UUID(tenant.instance_id), uuid.UUID(room), name)
    return room, str(chat.id)


def in_room(tenant: Tenant, identity: str, room: str, **grants: bool) -> dict[str, str]:
    return bearer(mint_token(tenant.key, tenant.secret, identity, Grants(room=room, room_join=True, **grants)))


async def test_a_rooms_chat_is_its_meetings_not_a_later_meeting_of_the_same_name(client: TestClient, tenant: Tenant):
    room, old_chat = await _room_chat(client, tenant, "retro")
    resp = await client.post(
        f"/api/v1/conversations/{old_chat}/messages",
        json={"content": "the layoffs list", "idempotency_key": "k1"},
        headers=in_room(tenant, "zed", "retro"),
    )
    assert resp.status == 201, await resp.text()
    assert (await client.delete(f"/api/v1/rooms/{room}", headers=tenant.admin)).status == 200
    _, new_chat = await _room_chat(client, tenant, "retro")  # next week's meeting, same name
    assert new_chat != old_chat
    yan = in_room(tenant, "yan", "retro")  # invited to next week's only
    assert await error_of(await client.get(f"/api/v1/conversations/{old_chat}/messages", headers=yan)) == (
        403,
        "not_a_member",
    )
    resp = await client.post(
        f"/api/v1/conversations/{old_chat}/messages", json={"content": "hi", "idempotency_key": "y"}, headers=yan
    )
    assert await error_of(resp) == (403, "not_a_member")
    resp = await client.get(f"/api/v1/conversations/{new_chat}/messages", headers=yan)
    assert resp.status == 200 and (await resp.json())["messages"] == []
    # Who was in the meeting keeps its chat.
    resp = await client.get(f"/api/v1/conversations/{old_chat}/messages", headers=in_room(tenant, "zed", "retro"))
    assert [m["content"] for m in (await resp.json())["messages"]] == ["the layoffs list"]


async def test_a_moderator_deletes_messages_in_its_rooms_chat_only(client: TestClient, tenant: Tenant):
    _, chat = await _room_chat(client, tenant, "town-hall")
    _, other_chat = await _room_chat(client, tenant, "board")
    for conversation, room in ((chat, "town-hall"), (other_chat, "board")):
        resp = await client.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"content": "spam spam", "idempotency_key": "s"},
            headers=in_room(tenant, "troll", room),
        )
        assert resp.status == 201, await resp.text()
    host = in_room(tenant, "host", "town-hall", room_admin=True)
    other_host = in_room(tenant, "host2", "board", room_admin=True)
    assert await error_of(await client.delete(f"/api/v1/conversations/{chat}/messages/1", headers=other_host)) == (
        403,
        "not_a_member",
    )
    resp = await client.get(f"/api/v1/conversations/{chat}/messages", headers=other_host)
    assert await error_of(resp) == (403, "not_a_member")
    resp = await client.patch(
        f"/api/v1/conversations/{chat}/messages/1", json={"content": "I love the host"}, headers=host
    )
    assert await error_of(resp) == (403, "not_the_sender")  # a moderator removes, never rewrites
    resp = await client.delete(f"/api/v1/conversations/{chat}/messages/1", headers=host)
    assert resp.status == 200 and (await resp.json())["deleted_at"] is not None
    # Its room's chat only, and the instance's other chats stay out of its reach.
    assert await error_of(await client.delete(f"/api/v1/conversations/{other_chat}/messages/1", headers=host)) == (
        403,
        "not_a_member",
    )
    assert await error_of(await client.get(f"/api/v1/conversations/{other_chat}/messages", headers=host)) == (
        403,
        "not_a_member",
    )
