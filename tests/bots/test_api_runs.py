"""The operator starts a bot in a conversation or a room's chat, and stops a run (POST /api/v1/bots/conversations,
DELETE /api/v1/bots/runs/{id}); tests/bots/test_api.py has the dialogs' routes."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from tests.bots.chat import BOT, Person, upload
from tests.helpers import OPERATOR, Tenant, create_tenant
from tests.tenancy.test_isolation import create_conversation, create_room

ASK = 'TALK "Hello ${USERNAME}! How many tickets?"\nHEAR n AS INTEGER\nTALK "Booked ${n}."\n'
START = 'TALK "This is the start dialog."\n'


async def bot_said(person: Person) -> list[str]:
    return [m["content"] for m in await person.messages() if m["sender"] == BOT]


async def join(client: TestClient, tenant: Tenant, **body: object) -> tuple[int, dict]:
    resp = await client.post("/api/v1/bots/conversations", json=body, headers=tenant.admin)
    return resp.status, await resp.json()


async def test_a_bot_started_in_a_group_conversation_speaks_first_and_waits_for_that_user(
    client: TestClient, node: Node, tenant: Tenant
):
    await upload(client, tenant, "ask", 'TALK "How many tickets?"\nHEAR n AS INTEGER\nTALK "Booked ${n}."\n')
    conversation = await create_conversation(client, tenant)  # alice and bob, one message before the bot
    status, body = await join(client, tenant, conversation_id=conversation, dialog="ask", user="alice")
    assert status == 201, body
    assert (body["conversation_id"], body["bot"]) == (conversation, BOT)
    run = body["run"]
    assert (run["user_identity"], run["dialog"], run["status"]) == ("alice", "ask", "waiting")
    alice = Person(client, node, tenant, "alice", conversation)
    assert await bot_said(alice) == ["How many tickets?"]
    await node.bots.engine.settled()
    assert await alice.say("two") == ["Please type a whole number."]  # the HEAR the operator's start left waiting
    assert await alice.say("2") == ["Booked 2."]
    bob = Person(client, node, tenant, "bob", conversation)
    assert await bob.say("and me?") == []  # no start dialog: bob's message starts nothing


async def test_a_bot_joins_a_rooms_chat_and_a_stopped_run_no_longer_waits_at_its_hear(
    client: TestClient, node: Node, tenant: Tenant
):
    await upload(client, tenant, "ask", 'TALK "How many tickets?"\nHEAR n AS INTEGER\nTALK "Booked ${n}."\n')
    await upload(client, tenant, "start", START)
    room = await create_room(client, tenant, "desk")
    status, body = await join(client, tenant, room_id=room, bot="helper", dialog="ask", user="alice")
    assert status == 201, body
    conversation = body["conversation_id"]
    resp = await client.get(f"/api/v1/conversations/{conversation}", headers=tenant.admin)
    info = await resp.json()
    assert info["kind"] == "room" and info["room_id"] == room
    assert {(m["identity"], m["role"]) for m in info["members"]} >= {("helper", "bot"), ("alice", "member")}

    run_id = body["run"]["id"]
    resp = await client.delete(f"/api/v1/bots/runs/{run_id}", headers=tenant.admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["run"]["status"] == "stopped"
    resp = await client.get("/api/v1/bots/runs", headers=tenant.admin)
    assert [(r["id"], r["status"]) for r in (await resp.json())["runs"]] == [(run_id, "stopped")]

    alice = Person(client, node, tenant, "alice", conversation)
    resp = await client.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"content": "3", "idempotency_key": uuid.uuid4().hex, "sender": "alice"},
        headers=tenant.admin,
    )
    assert resp.status == 201, await resp.text()
    await node.bots.engine.settled()
    said = [m["content"] for m in await alice.messages() if m["sender"] == "helper"]
    assert said == ["How many tickets?", "This is the start dialog."]  # "3" was not taken as the answer


async def test_bad_starts_and_stops_answer_4xx_and_change_nothing(client: TestClient, node: Node, tenant: Tenant):
    await upload(client, tenant, "ask", ASK)
    conversation = await create_conversation(client, tenant)
    other = await create_tenant(client, "other")
    others = await create_conversation(client, other)
    cases = [
        ({}, 400, "bot_target_required"),
        ({"conversation_id": conversation, "room_id": str(uuid.uuid4())}, 400, "bot_target_required"),
        ({"conversation_id": conversation, "dialog": "ask"}, 400, "bot_user_required"),
        ({"conversation_id": conversation, "dialog": "ask", "user": "gb"}, 400, "bot_user_required"),
        ({"conversation_id": "nope"}, 400, "validation_failed"),
        ({"conversation_id": conversation, "dialog": "nowhere", "user": "alice"}, 404, "dialog_not_found"),
        ({"conversation_id": others}, 404, "conversation_not_found"),
        ({"room_id": str(uuid.uuid4())}, 404, "room_not_found"),
        ({"conversation_id": conversation, "bot": "bob"}, 409, "bot_identity_taken"),
    ]
    for body, status, code in cases:
        got_status, got = await join(client, tenant, **body)
        assert (got_status, got["error"]["code"]) == (status, code), body
    resp = await client.get(f"/api/v1/conversations/{conversation}", headers=tenant.admin)
    assert [(m["identity"], m["role"]) for m in (await resp.json())["members"]] == [
        ("alice", "owner"),
        ("bob", "member"),
    ]
    for run_id in (str(uuid.uuid4()), "not-a-run"):
        resp = await client.delete(f"/api/v1/bots/runs/{run_id}", headers=tenant.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "bot_run_not_found")


async def test_another_instances_run_is_not_found_and_the_operator_names_the_instance(
    client: TestClient, node: Node, tenant: Tenant
):
    await upload(client, tenant, "ask", ASK)
    conversation = await create_conversation(client, tenant)
    status, body = await join(client, tenant, conversation_id=conversation, dialog="ask", user="bob")
    assert status == 201 and body["run"]["status"] == "waiting"
    run_id = body["run"]["id"]
    other = await create_tenant(client, "other")
    resp = await client.delete(f"/api/v1/bots/runs/{run_id}", headers=other.admin)
    assert resp.status == 404
    resp = await client.delete(f"/api/v1/bots/runs/{run_id}", headers=OPERATOR)
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "instance_id_required")
    resp = await client.delete(f"/api/v1/bots/runs/{run_id}?instance_id={tenant.instance_id}", headers=OPERATOR)
    assert resp.status == 200 and (await resp.json())["run"]["status"] == "stopped"
