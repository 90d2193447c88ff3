"""No tenant's credentials reach another tenant's data, on any REST route.

The matrix is built from the application's own router: a route added without a
row here fails the first test, so isolation is checked for every endpoint.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant


async def create_room(client: TestClient, tenant: Tenant, name: str = "standup") -> str:
    resp = await client.post("/api/v1/rooms", json={"name": name}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def create_conversation(client: TestClient, tenant: Tenant) -> str:
    """A group conversation of alice and bob with one message ("a secret plan")."""
    alice = bearer(mint_token(tenant.key, tenant.secret, "alice", Grants()))
    resp = await client.post("/api/v1/conversations", json={"members": ["bob"], "title": "alpha-chat"}, headers=alice)
    assert resp.status == 201, await resp.text()
    conversation = (await resp.json())["id"]
    resp = await client.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"content": "a secret plan", "idempotency_key": "m1"},
        headers=alice,
    )
    assert resp.status == 201, await resp.text()
    return conversation


async def create_webhook(client: TestClient, tenant: Tenant) -> tuple[str, int]:
    """A webhook endpoint of the tenant (a URL that never resolves) and the delivery of a test event."""
    base = f"/api/v1/instances/{tenant.instance_id}/webhooks"
    body = {"url": "https://hooks.example.invalid/alpha", "events": ["room_started"]}
    resp = await client.post(base, json=body, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    webhook = (await resp.json())["webhook"]["id"]
    resp = await client.post(f"{base}/{webhook}/test", headers=tenant.admin)
    assert resp.status == 202, await resp.text()
    return webhook, (await resp.json())["id"]


# (method, route template) -> (path with tenant A's ids, body)
def matrix(
    a: Tenant,
    room: str,
    participant: str = "alice",
    track: str = "TR_x",
    conversation: str | None = None,
    recording: str | None = None,
    recording_file: str = "TR_x.webm",
    quiet_room: str | None = None,
    node_id: str = "node",
    media_bot: str = "MB_x",
    webhook: str | None = None,
    delivery: int = 1,
    bot_run: str | None = None,
) -> dict[tuple[str, str], tuple[str, dict | None]]:
    conv = f"/api/v1/conversations/{conversation or uuid.uuid4()}"
    rec = f"/api/v1/recordings/{recording or uuid.uuid4()}"
    quiet = quiet_room or room
    inst, cust = a.instance_id, a.customer_id
    hooks = f"/api/v1/instances/{inst}/webhooks"
    hook = f"{hooks}/{webhook or uuid.uuid4()}"
    return {
        ("GET", "/api/v1/whoami"): ("/api/v1/whoami", None),
        ("GET", "/api/v1/plans"): ("/api/v1/plans", None),
        ("GET", "/api/v1/customers"): ("/api/v1/customers", None),
        ("POST", "/api/v1/customers"): ("/api/v1/customers", {"name": "intruder"}),
        ("GET", "/api/v1/customers/{customer_id}"): (f"/api/v1/customers/{cust}", None),
        ("PATCH", "/api/v1/customers/{customer_id}"): (f"/api/v1/customers/{cust}", {"name": "pwned"}),
        ("GET", "/api/v1/customers/{customer_id}/instances"): (f"/api/v1/customers/{cust}/instances", None),
        ("POST", "/api/v1/customers/{customer_id}/instances"): (
            f"/api/v1/customers/{cust}/instances",
            {"name": "implant"},
        ),
        ("GET", "/api/v1/instances/{instance_id}"): (f"/api/v1/instances/{inst}", None),
        ("PATCH", "/api/v1/instances/{instance_id}"): (f"/api/v1/instances/{inst}", {"config": {"x": 1}}),
        ("DELETE", "/api/v1/instances/{instance_id}"): (f"/api/v1/instances/{inst}", None),
        ("GET", "/api/v1/instances/{instance_id}/keys"): (f"/api/v1/instances/{inst}/keys", None),
        ("POST", "/api/v1/instances/{instance_id}/keys"): (f"/api/v1/instances/{inst}/keys", {}),
        ("DELETE", "/api/v1/instances/{instance_id}/keys/{key}"): (f"/api/v1/instances/{inst}/keys/{a.key}", None),
        ("POST", "/api/v1/instances/{instance_id}/tokens"): (
            f"/api/v1/instances/{inst}/tokens",
            {"identity": "spy", "room": "r"},
        ),
        ("GET", "/api/v1/instances/{instance_id}/webhooks"): (hooks, None),
        ("POST", "/api/v1/instances/{instance_id}/webhooks"): (
            hooks,
            {"url": "https://hooks.example.invalid/spy", "events": ["message_created"]},
        ),
        ("GET", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): (hook, None),
        ("PATCH", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): (hook, {"description": "pwned"}),
        ("DELETE", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): (hook, None),
        ("POST", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/test"): (f"{hook}/test", None),
        ("GET", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/deliveries"): (f"{hook}/deliveries", None),
        ("POST", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/deliveries/{delivery}/redeliver"): (
            f"{hook}/deliveries/{delivery}/redeliver",
            None,
        ),
        ("GET", "/api/v1/audit"): (f"/api/v1/audit?customer_id={cust}&instance_id={inst}", None),
        ("GET", "/api/v1/nodes"): ("/api/v1/nodes", None),
        ("POST", "/api/v1/nodes/{node_id}/drain"): (f"/api/v1/nodes/{node_id}/drain", None),
        ("POST", "/api/v1/rooms"): ("/api/v1/rooms", {"name": "implant", "instance_id": inst}),
        ("GET", "/api/v1/rooms"): (f"/api/v1/rooms?instance_id={inst}&status=all", None),
        ("GET", "/api/v1/rooms/{room_id}"): (f"/api/v1/rooms/{room}", None),
        # Media bots on the room nobody publishes in; the stop needs a bot running there.
        ("POST", "/api/v1/rooms/{room_id}/media_bots"): (f"/api/v1/rooms/{quiet}/media_bots", {"audio": False}),
        ("GET", "/api/v1/rooms/{room_id}/media_bots"): (f"/api/v1/rooms/{quiet}/media_bots", None),
        ("DELETE", "/api/v1/rooms/{room_id}/media_bots/{bot}"): (
            f"/api/v1/rooms/{quiet}/media_bots/{media_bot}",
            None,
        ),
        ("DELETE", "/api/v1/rooms/{room_id}"): (f"/api/v1/rooms/{room}", None),
        ("GET", "/api/v1/rooms/{room_id}/participants"): (f"/api/v1/rooms/{room}/participants", None),
        ("DELETE", "/api/v1/rooms/{room_id}/participants/{participant}"): (
            f"/api/v1/rooms/{room}/participants/{participant}",
            None,
        ),
        ("POST", "/api/v1/rooms/{room_id}/participants/{participant}/tracks/{track}/mute"): (
            f"/api/v1/rooms/{room}/participants/{participant}/tracks/{track}/mute",
            {"muted": True},
        ),
        ("GET", "/api/v1/rooms/{room_id}/participants/{participant}/stats"): (
            f"/api/v1/rooms/{room}/participants/{participant}/stats",
            None,
        ),
        ("POST", "/api/v1/conversations"): ("/api/v1/conversations", {"members": ["x"], "instance_id": inst}),
        ("GET", "/api/v1/conversations"): (f"/api/v1/conversations?instance_id={inst}", None),
        ("GET", "/api/v1/conversations/{conversation_id}"): (conv, None),
        ("POST", "/api/v1/conversations/{conversation_id}/members"): (f"{conv}/members", {"identity": "carol"}),
        ("DELETE", "/api/v1/conversations/{conversation_id}/members/{identity}"): (f"{conv}/members/carol", None),
        ("POST", "/api/v1/conversations/{conversation_id}/messages"): (
            f"{conv}/messages",
            {"content": "hi", "idempotency_key": "k", "sender": "spy"},
        ),
        ("GET", "/api/v1/conversations/{conversation_id}/messages"): (f"{conv}/messages", None),
        ("GET", "/api/v1/conversations/{conversation_id}/messages/{seq}"): (f"{conv}/messages/1", None),
        ("PATCH", "/api/v1/conversations/{conversation_id}/messages/{seq}"): (
            f"{conv}/messages/1",
            {"content": "pwned"},
        ),
        ("DELETE", "/api/v1/conversations/{conversation_id}/messages/{seq}"): (f"{conv}/messages/1", None),
        ("POST", "/api/v1/conversations/{conversation_id}/receipts"): (
            f"{conv}/receipts",
            {"identity": "bob", "read_seq": 1},
        ),
        ("GET", "/api/v1/messages/search"): (f"/api/v1/messages/search?q=secret&instance_id={inst}", None),
        # Bots: a dialog stored (``start``), listed, read and deleted; the runs listed.
        ("PUT", "/api/v1/bots/dialogs/{name}"): (
            f"/api/v1/bots/dialogs/start?instance_id={inst}",
            {"source": 'TALK "implant"'},
        ),
        ("GET", "/api/v1/bots/dialogs"): (f"/api/v1/bots/dialogs?instance_id={inst}", None),
        ("GET", "/api/v1/bots/dialogs/{name}"): (f"/api/v1/bots/dialogs/start?instance_id={inst}", None),
        ("DELETE", "/api/v1/bots/dialogs/{name}"): (f"/api/v1/bots/dialogs/start?instance_id={inst}", None),
        ("GET", "/api/v1/bots/runs"): (f"/api/v1/bots/runs?instance_id={inst}", None),
        # A bot joins the conversation and starts ``start`` for alice; the run stopped is one waiting at a HEAR.
        ("POST", "/api/v1/bots/conversations"): (
            f"/api/v1/bots/conversations?instance_id={inst}",
            {"conversation_id": conversation or str(uuid.uuid4()), "dialog": "start", "user": "alice"},
        ),
        ("DELETE", "/api/v1/bots/runs/{run_id}"): (
            f"/api/v1/bots/runs/{bot_run or uuid.uuid4()}?instance_id={inst}",
            None,
        ),
        # The keyword API (a keyword reading the instance's people) and the instance's providers.
        ("POST", "/api/v1/keywords/{group}/{name}"): (
            f"/api/v1/keywords/system/getUser?instance_id={inst}",
            {"name": "alice"},
        ),
        ("GET", "/api/v1/bots/providers"): (f"/api/v1/bots/providers?instance_id={inst}", None),
        ("PUT", "/api/v1/bots/providers/{service}"): (
            f"/api/v1/bots/providers/sms?instance_id={inst}",
            {"kind": "webhook", "settings": {"url": "https://hooks.example.invalid/sms"}, "secret": "s3cret"},
        ),
        ("DELETE", "/api/v1/bots/providers/{service}"): (f"/api/v1/bots/providers/sms?instance_id={inst}", None),
        # Recordings: start and list on a room nobody records; read, stop, download one that records alice.
        ("POST", "/api/v1/rooms/{room_id}/recordings"): (f"/api/v1/rooms/{quiet}/recordings", {"kinds": ["tracks"]}),
        ("GET", "/api/v1/rooms/{room_id}/recordings"): (f"/api/v1/rooms/{quiet}/recordings", None),
        ("GET", "/api/v1/recordings/{recording_id}"): (rec, None),
        ("POST", "/api/v1/recordings/{recording_id}/stop"): (f"{rec}/stop", None),
        ("GET", "/api/v1/recordings/{recording_id}/files/{file}"): (f"{rec}/files/{recording_file}", None),
    }


def api_routes(client: TestClient) -> set[tuple[str, str]]:
    routes = set()
    for route in client.app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if canonical.startswith("/api/") and route.method != "HEAD":
            routes.add((route.method, canonical))
    return routes


async def test_every_api_route_is_in_the_isolation_matrix(client: TestClient):
    a = await create_tenant(client, "a")
    assert api_routes(client) == set(matrix(a, str(uuid.uuid4())))


async def test_tenant_b_reaches_nothing_of_tenant_a(client: TestClient):
    a = await create_tenant(client, "alpha")
    b = await create_tenant(client, "bravo")
    room = await create_room(client, a, "standup")
    await create_room(client, b, "bravo-room")
    conversation = await create_conversation(client, a)
    resp = await client.post(f"/api/v1/rooms/{room}/recordings", json={}, headers=a.admin)
    assert resp.status == 201, await resp.text()
    recording = (await resp.json())["id"]
    webhook, delivery = await create_webhook(client, a)
    secret_markers = [
        a.customer_id,
        a.instance_id,
        a.key,
        a.secret,
        "alpha",
        room,
        "standup",
        conversation,
        "a secret plan",
        recording,
        webhook,
        "hooks.example.invalid",
    ]
    cells = matrix(a, room, conversation=conversation, recording=recording, webhook=webhook, delivery=delivery)
    for (method, route), (path, body) in cells.items():
        resp = await client.request(method, path, json=body, headers=b.admin)
        text = await resp.text()
        # An id the caller put in the path may be echoed back; anything else is a leak.
        for marker in (m for m in secret_markers if m not in path):
            assert marker not in text, f"{method} {route} leaked {marker}: {text[:300]}"
        if resp.status < 400:
            # Only routes that are about the caller itself may succeed.
            assert route in {"/api/v1/whoami", "/api/v1/plans", "/api/v1/audit"}, (method, route, resp.status)
        else:
            assert resp.status in (403, 404), (method, route, resp.status, text)

    # Nothing of A changed: its key still works, its name and config are intact.
    resp = await client.get(f"/api/v1/instances/{a.instance_id}", headers=a.admin)
    assert resp.status == 200
    instance = await resp.json()
    assert (instance["status"], instance["config"]) == ("active", {})
    resp = await client.get(f"/api/v1/customers/{a.customer_id}", headers=a.admin)
    assert (await resp.json())["customer"]["name"] == "alpha"
    resp = await client.get(f"/api/v1/instances/{a.instance_id}/keys", headers=a.admin)
    assert [k["revoked_at"] for k in (await resp.json())["keys"]] == [None]
    resp = await client.get(f"/api/v1/customers/{a.customer_id}/instances", headers=OPERATOR)
    assert [i["name"] for i in (await resp.json())["instances"]] == ["alpha-main"]
    resp = await client.get("/api/v1/rooms?status=all", headers=a.admin)
    assert [(r["id"], r["status"]) for r in (await resp.json())["rooms"]] == [(room, "open")]
    resp = await client.get(f"/api/v1/conversations/{conversation}/messages", headers=a.admin)
    assert [(m["content"], m["sender"]) for m in (await resp.json())["messages"]] == [("a secret plan", "alice")]
    resp = await client.get(f"/api/v1/conversations/{conversation}", headers=a.admin)
    assert [m["identity"] for m in (await resp.json())["members"]] == ["alice", "bob"]
    resp = await client.get(f"/api/v1/instances/{a.instance_id}/webhooks", headers=a.admin)
    assert [(w["id"], w["description"]) for w in (await resp.json())["webhooks"]] == [(webhook, "")]


async def live_targets(
    client: TestClient, a: Tenant
) -> tuple[str, Any, dict[tuple[str, str], tuple[str, dict | None]]]:
    """Something real behind every cell of ``a``'s matrix: room ``standup`` where alice (the returned
    RtcClient, for the caller to close) publishes and is recorded, room ``quiet`` with a media bot, a
    conversation with a bot run, a dialog, a webhook with a delivery. Returns the room id, alice, the cells."""
    from gbmedia.app import NODE
    from gbmedia.tenancy.tokens import Grants, mint_token
    from tests.rtc import ColorVideoTrack, RtcClient

    room = await create_room(client, a)
    alice = RtcClient(await client.ws_connect("/rtc"))  # a participant publishing a track, for its cells
    try:
        await alice.join(mint_token(a.key, a.secret, "alice", Grants.participant("standup")))
        track = (await alice.publish(ColorVideoTrack((0, 0, 0))))["tracks"][0]["id"]
        conversation = await create_conversation(client, a)
        recording = await _recording_of(client, room, track)
        quiet = await create_room(client, a, "quiet")
        resp = await client.put("/api/v1/bots/dialogs/start", json={"source": 'TALK "hi"'}, headers=a.admin)
        assert resp.status == 201, await resp.text()  # what the dialog cells read and delete
        node_id = client.app[NODE].settings.node_id
        bot = await start_media_bot(client, quiet)
        webhook, delivery = await create_webhook(client, a)
        bot_run = await start_bot_run(client, a, conversation)
    except BaseException:
        await alice.close()
        raise
    cells = matrix(
        a,
        room,
        "alice",
        track,
        conversation,
        recording,
        f"{track}.webm",
        quiet,
        node_id,
        media_bot=bot,
        webhook=webhook,
        delivery=delivery,
        bot_run=bot_run,
    )
    return room, alice, cells


async def test_the_operator_reaches_every_cell_of_the_matrix(client: TestClient):
    """The matrix paths are real: the operator gets a success on each of them."""
    _, alice, cells = await live_targets(client, await create_tenant(client, "alpha"))
    try:
        await _operator_reaches(client, cells)
    finally:
        await alice.close()


async def start_bot_run(client: TestClient, tenant: Tenant, conversation: str) -> str:
    """A bot run of bob's waiting at a HEAR in the conversation (saying nothing first), for the cell that stops one."""
    resp = await client.put("/api/v1/bots/dialogs/ask", json={"source": "HEAR x\nTALK x"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    body = {"conversation_id": conversation, "dialog": "ask", "user": "bob"}
    resp = await client.post("/api/v1/bots/conversations", json=body, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    run = (await resp.json())["run"]
    assert run["status"] == "waiting"
    return run["id"]


async def start_media_bot(client: TestClient, room: str) -> str:
    """A media bot (a clock, no tone) in the room, for the cell that stops one."""
    resp = await client.post(f"/api/v1/rooms/{room}/media_bots", json={"audio": False}, headers=OPERATOR)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["media_bot"]["id"]


async def _recording_of(client: TestClient, room: str, track: str) -> str:
    """A recording of the room that has written frames of ``track`` (so its file can be downloaded once stopped)."""
    from gbmedia.app import NODE
    from tests.recording.helpers import recorder_frames
    from tests.rtc import wait_for

    resp = await client.post(f"/api/v1/rooms/{room}/recordings", json={}, headers=OPERATOR)
    assert resp.status == 201, await resp.text()
    recording = (await resp.json())["id"]
    await wait_for(lambda: recorder_frames(client.app[NODE], recording).get(track, 0) >= 5, within=30)
    return recording


async def _operator_reaches(client: TestClient, cells: dict[tuple[str, str], tuple[str, dict | None]]) -> None:
    # Destructive cells last, so the others still find their targets (a participant before its room).
    order = sorted(cells, key=lambda cell: (cell[0] == "DELETE", "/participants/" not in cell[1]))
    for cell in order:
        path, body = cells[cell]
        if cell == ("POST", "/api/v1/customers/{customer_id}/instances"):
            body = {"name": "second"}
        resp = await client.request(cell[0], path, json=body, headers=OPERATOR)
        if cell == ("POST", "/api/v1/nodes/{node_id}/drain"):
            # A node without Redis has nowhere to drain to (tests/test_cluster.py drains a cluster's node).
            assert (resp.status, (await resp.json())["error"]["code"]) == (409, "not_clustered")
            continue
        assert resp.status < 300, (cell, resp.status, await resp.text())
