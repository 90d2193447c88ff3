"""HEAR ... AS LOGIN: a person in a chat with a bot signs in with the one-time code it gives them.

On a node, over REST as a person's app would: the bot gives a code in the conversation,
the person signs in with it and an access token of the instance, and their next message
answers the HEAR with their verified identity. Codes are single-use, the instance's
only, and a run's user who has not signed in gets a new code.
"""

from __future__ import annotations

import re
import uuid

from aiohttp.test_utils import TestClient

from gbmedia.bots.host import MemoryPort
from gbmedia.bots.login import code_hash
from gbmedia.node import Node
from tests.bots.chat import Person, as_user, bot_conversation, upload
from tests.bots.helpers import talk_with
from tests.helpers import OPERATOR, Tenant, create_tenant

DIALOG = """TALK "Hello. Who are you?"
HEAR who AS LOGIN
TALK "Welcome, ${who.identity} (${who.name}, ${who.email})"
"""
CODE = re.compile(r"code: ([A-Z2-9]{8})")


def code_in(lines: list[str]) -> str:
    found = CODE.search(" ".join(lines))
    assert found is not None, lines
    return found[1]


async def test_a_person_signs_in_and_the_dialog_gets_the_verified_identity(
    client: TestClient, node: Node, tenant: Tenant
) -> None:
    other_tenant = await create_tenant(client, "globex")
    await upload(client, tenant, "start", DIALOG)
    await node.db.pool.execute(
        """INSERT INTO bot_users (instance_id, system_id, display_name, email)
           VALUES ($1, 'ana', 'Ana Lima', 'ana@example.com')""",
        uuid.UUID(tenant.instance_id),
    )
    visitor = Person(client, node, tenant, "visitor-1", await bot_conversation(client, tenant, "visitor-1"))
    said = await visitor.say("hi")
    assert said[0] == "Hello. Who are you?"
    first = code_in(said)

    # Not signed in yet: a new code, the first no longer works.
    said = await visitor.say("done")
    assert said[0].startswith("You have not signed in yet.")
    code = code_in(said)
    assert code != first
    resp = await client.post("/api/v1/bots/login", json={"code": first}, headers=as_user(tenant, "ana"))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "login_code_not_found"

    # Another instance's token cannot use it; the operator has no identity to sign in as.
    resp = await client.post("/api/v1/bots/login", json={"code": code}, headers=as_user(other_tenant, "ana"))
    assert resp.status == 404
    resp = await client.post("/api/v1/bots/login", json={"code": code}, headers=OPERATOR)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "identity_required"
    resp = await client.post("/api/v1/bots/login", json={"code": 5}, headers=as_user(tenant, "ana"))
    assert resp.status == 400

    resp = await client.post("/api/v1/bots/login", json={"code": code.lower()}, headers=as_user(tenant, "ana"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["signed_in"] == {"identity": "ana", "conversation_id": visitor.conversation_id}
    resp = await client.post("/api/v1/bots/login", json={"code": code}, headers=as_user(tenant, "ana"))
    assert resp.status == 404, "a code is used once"

    said = await visitor.say("done")
    assert said == ["Welcome, ana (Ana Lima, ana@example.com)"]
    assert await node.db.pool.fetchval("SELECT count(*) FROM bot_logins WHERE code_hash = $1", code_hash(code)) == 0


async def test_login_in_memory_and_where_there_is_no_person() -> None:
    port = MemoryPort()
    outcome, _ = await talk_with(DIALOG, port=port)
    assert outcome.status == "waiting"
    code = code_in(port.said)
    assert not port.sign_in("WRONG", "bia") and port.sign_in(code, "bia") and not port.sign_in(code, "eve")
    assert port.logins[code] == "bia"

    class NoLogin(MemoryPort):
        login_start = None  # type: ignore[assignment]

    outcome, _ = await talk_with(DIALOG, port=NoLogin())
    assert outcome.status == "failed" and "HEAR AS LOGIN needs a conversation" in str(outcome.error)
