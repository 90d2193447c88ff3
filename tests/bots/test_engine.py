"""The dialog engine end to end: a person writes to a bot over REST chat and the bot answers in the chat."""

from __future__ import annotations

import uuid

import asyncpg
from aiohttp.test_utils import TestClient

from gbmedia.node import Node
from tests.bots.chat import BOT, Person, as_user, bot_conversation, upload
from tests.helpers import Tenant
from tests.messaging.test_chat_socket import ChatClient, _participant, token

ORDER = """
TABLE orders
  id integer key auto
  customer string(80)
  qty integer
END TABLE

FUNCTION plural(n)
  IF n = 1 THEN RETURN "item"
  RETURN "items"
END FUNCTION

TALK "Hello! How many items?"
HEAR qty AS INTEGER
IF qty > 3 THEN
  TALK "That is a lot."
ELSE
  stars = ""
  FOR i = 1 TO qty
    stars = stars & "*"
  NEXT
  TALK stars
END IF
SAVE "orders", "alice", qty
found = FIND "orders", "qty=${qty}"
TALK "Order ${found.id}: ${qty} ${plural(qty)}"
"""


async def test_a_dialog_talks_asks_again_branches_loops_and_saves_then_finds(
    client: TestClient, node: Node, tenant: Tenant
):
    await upload(client, tenant, "start", ORDER)
    alice = Person(client, node, tenant, "alice", await bot_conversation(client, tenant))

    assert await alice.say("hi") == ["Hello! How many items?"]
    assert await alice.say("a few") == ["Please type a whole number."]  # re-asked, still at the HEAR
    assert await alice.say("2") == ["**", "Order 1: 2 items"]
    # The run ended: the next message starts the start dialog again, and the other branch.
    assert await alice.say("again") == ["Hello! How many items?"]
    assert await alice.say("7") == ["That is a lot.", "Order 2: 7 items"]
    runs = await node.bots.engine.runs(uuid.UUID(tenant.instance_id))
    assert [(r["user_identity"], r["dialog"], r["status"]) for r in runs] == [("alice", "start", "done")]


async def test_a_run_per_user_in_a_group_conversation_with_a_bot_member(client: TestClient, node: Node, tenant: Tenant):
    await upload(client, tenant, "start", 'TALK "Your name?"\nHEAR name AS NAME\nTALK "Hi, ${name}"')
    resp = await client.post(
        "/api/v1/conversations", json={"kind": "group", "members": ["bob"]}, headers=as_user(tenant, "alice")
    )
    cid = (await resp.json())["id"]
    resp = await client.post(
        f"/api/v1/conversations/{cid}/members", json={"identity": BOT, "role": "bot"}, headers=tenant.admin
    )
    assert resp.status == 201, await resp.text()
    alice = Person(client, node, tenant, "alice", cid)
    bob = Person(client, node, tenant, "bob", cid)

    assert await alice.say("hello") == ["Your name?"]
    assert await bob.say("hey") == ["Your name?"]  # bob's own run
    assert await alice.say("Ana Souza") == ["Hi, Ana Souza"]
    assert await bob.say("Bruno Lima") == ["Hi, Bruno Lima"]


async def test_a_message_naming_a_dialog_starts_it_and_go_to_moves_on(client: TestClient, node: Node, tenant: Tenant):
    await upload(
        client,
        tenant,
        "start",
        'TALK "Menu: help or quit?"\nHEAR c AS "help", "quit"\nIF c = "help" THEN GO TO "help"\nTALK "Bye"',
    )
    await upload(client, tenant, "Help.bas", 'TALK "Here is some help."')
    alice = Person(client, node, tenant, "alice", await bot_conversation(client, tenant))

    assert await alice.say("hi") == ["Menu: help or quit?"]
    assert await alice.say("help") == ["Here is some help."]  # the HEAR's answer; GO TO "help" ran the dialog
    assert await alice.say("HELP") == ["Here is some help."]  # no run waits: the message names the dialog
    assert await alice.say("hi") == ["Menu: help or quit?"]
    assert await alice.say("/help") == ["Here is some help."]  # '/' names a dialog even while a HEAR waits
    # That replaced the waiting run; now nothing waits and "quit" names no dialog: the start dialog runs.
    assert await alice.say("quit") == ["Menu: help or quit?"]


async def test_transfer_to_hands_the_conversation_to_a_person_until_released(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
):
    await upload(client, tenant, "start", 'TALK "Connecting you to an agent."\nTRANSFER TO "agent"')
    cid = await bot_conversation(client, tenant)
    alice = Person(client, node, tenant, "alice", cid)
    agent = Person(client, node, tenant, "agent", cid)

    assert await alice.say("I need a human") == ["Connecting you to an agent."]
    # The agent is now a member and the bot is silent, whatever anyone writes.
    assert await agent.say("Hello, I am Carla") == []
    assert await alice.say("start") == []
    assert await alice.say("/release") == []  # only the agent hands it back
    assert await agent.say("/release") == []
    assert await alice.say("hi again") == ["Connecting you to an agent."]


async def test_a_turn_run_again_after_a_crash_does_not_double_a_reply(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
):
    await upload(
        client, tenant, "start", 'INPUT "How old are you?", age AS INTEGER\nTALK "Next year: ${age + 1}"\nTALK "Bye"'
    )
    cid = await bot_conversation(client, tenant)
    alice = Person(client, node, tenant, "alice", cid)
    assert await alice.say("hi") == ["How old are you?"]
    conversation = uuid.UUID(cid)
    waiting = await pool.fetchrow("SELECT state FROM bot_runs WHERE conversation_id = $1", conversation)
    cursor = await pool.fetchval("SELECT handled_seq FROM bot_conversations WHERE conversation_id = $1", conversation)

    assert await alice.say("41") == ["Next year: 42", "Bye"]
    before = await alice.messages()
    # As if the node died after sending the replies and before saving the turn: the run is back at its
    # HEAR and the answer unhandled. Handling it again says the same replies under the same keys.
    await pool.execute(
        "UPDATE bot_runs SET status = 'waiting', state = $2 WHERE conversation_id = $1", conversation, waiting["state"]
    )
    await pool.execute("UPDATE bot_conversations SET handled_seq = $2 WHERE conversation_id = $1", conversation, cursor)
    engine = node.bots.engine
    handled = engine.handled
    await engine.process(conversation)  # (or the engine's sweep gets there first: the same work, once)
    await engine.settled()
    assert engine.handled - handled == 3  # alice's answer and the two replies, once more
    assert await alice.messages() == before
    status = await pool.fetchval("SELECT status FROM bot_runs WHERE conversation_id = $1", conversation)
    assert status == "done"


async def test_a_failing_dialog_apologises_and_records_its_error(client: TestClient, node: Node, tenant: Tenant):
    await upload(client, tenant, "start", 'x = [1]\nTALK "before"\nTALK x[5]')
    alice = Person(client, node, tenant, "alice", await bot_conversation(client, tenant))
    replies = await alice.say("hi")
    assert replies[0] == "before" and replies[1].startswith("Sorry, something went wrong")
    (run,) = await node.bots.engine.runs(uuid.UUID(tenant.instance_id))
    assert run["status"] == "failed" and "start: line 3" in run["last_error"]


async def test_a_bot_in_a_rooms_chat_answers_a_participant_on_the_rtc_socket(
    client: TestClient, node: Node, tenant: Tenant
):
    await upload(
        client, tenant, "start", 'TALK "Welcome! Your name?"\nHEAR name AS NAME\nTALK "Nice to meet you, ${name}"'
    )
    alice = ChatClient(await client.ws_connect("/rtc"))
    try:
        joined = await alice.request({"type": "join", "token": token(tenant, "alice", **_participant("standup"))})
        cid = joined["chat"]["conversation_id"]
        resp = await client.post(
            f"/api/v1/conversations/{cid}/members", json={"identity": BOT, "role": "bot"}, headers=tenant.admin
        )
        assert resp.status == 201, await resp.text()

        async def say(text: str, reply: str) -> None:
            ack = await alice.request(
                {"type": "chat_send", "conversation_id": cid, "content": text, "idempotency_key": uuid.uuid4().hex}
            )
            assert ack["type"] == "chat_ack", ack
            event = await alice.wait(
                lambda e: (
                    e["type"] == "chat_message"
                    and e["message"]["sender"] == BOT
                    and e["message"]["seq"] > ack["seq"]
                    and e["message"]["content"] == reply
                )
            )
            assert event["message"]["conversation_id"] == cid

        await say("hello", "Welcome! Your name?")
        await say("Ana", "Please type your full name (first and last name).")
        await say("Ana Souza", "Nice to meet you, Ana Souza")
        await node.bots.engine.settled()
        bot_said = [m["content"] for m in alice.messages(cid) if m["sender"] == BOT]
        assert bot_said == [
            "Welcome! Your name?",
            "Please type your full name (first and last name).",
            "Nice to meet you, Ana Souza",
        ]
    finally:
        await alice.close()
