"""Within one tenant, each credential reaches what its role may, on every REST route.

The scope matrix: every route of the isolation matrix (tests/tenancy/test_isolation.py,
built from the application's router, so a new route cannot be left out) times every
role. The operator's column is ``test_the_operator_reaches_every_cell_of_the_matrix``
there; the other columns are here:

- the instance's administrator (``instance_admin``): the whole instance, nothing of
  the operator's;
- the moderator of this room (``room_admin`` for ``standup``, what a meeting host's
  join link carries): that room, its participants and its recordings, nothing else;
- the moderator of another room (``room_admin`` for ``quiet``): that room only;
- a participant of this room: itself and its own chat.

Each role's allowed cells run against targets of their own (a fresh tenant with a
room, a publishing participant, a recording and a conversation), destructive ones
last; its denied cells run against live targets too, and must change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.test_utils import TestClient

from gbmedia.tenancy.tokens import Grants
from tests.helpers import Tenant, bearer, create_tenant
from tests.rtc import RtcClient
from tests.tenancy.test_isolation import create_room, live_targets, matrix

ADMIN, MODERATOR, OTHER_MODERATOR, PARTICIPANT = "instance admin", "moderator", "other room's moderator", "participant"
ROLES = (ADMIN, MODERATOR, OTHER_MODERATOR, PARTICIPANT)
EVERYONE = frozenset(ROLES)
ADMINS = frozenset({ADMIN})
MODERATORS = frozenset({ADMIN, MODERATOR})
OPERATOR_ONLY: frozenset[str] = frozenset()

# Which roles (besides the operator) may use each route. The targets: room ``standup``
# (alice publishes in it; its recording), room ``quiet`` (recordings and media bots are started and
# listed there), a group conversation of alice and bob.
ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/whoami"): EVERYONE,
    ("GET", "/api/v1/plans"): EVERYONE,
    ("GET", "/api/v1/customers"): OPERATOR_ONLY,
    ("POST", "/api/v1/customers"): OPERATOR_ONLY,
    ("GET", "/api/v1/customers/{customer_id}"): ADMINS,
    ("PATCH", "/api/v1/customers/{customer_id}"): OPERATOR_ONLY,
    ("GET", "/api/v1/customers/{customer_id}/instances"): ADMINS,
    ("POST", "/api/v1/customers/{customer_id}/instances"): OPERATOR_ONLY,
    ("GET", "/api/v1/instances/{instance_id}"): ADMINS,
    ("PATCH", "/api/v1/instances/{instance_id}"): ADMINS,
    ("DELETE", "/api/v1/instances/{instance_id}"): OPERATOR_ONLY,
    ("GET", "/api/v1/instances/{instance_id}/keys"): ADMINS,
    ("POST", "/api/v1/instances/{instance_id}/keys"): ADMINS,
    ("DELETE", "/api/v1/instances/{instance_id}/keys/{key}"): ADMINS,
    ("POST", "/api/v1/instances/{instance_id}/tokens"): ADMINS,
    ("GET", "/api/v1/instances/{instance_id}/webhooks"): ADMINS,
    ("POST", "/api/v1/instances/{instance_id}/webhooks"): ADMINS,
    ("GET", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): ADMINS,
    ("PATCH", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): ADMINS,
    ("DELETE", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}"): ADMINS,
    ("POST", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/test"): ADMINS,
    ("GET", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/deliveries"): ADMINS,
    ("POST", "/api/v1/instances/{instance_id}/webhooks/{webhook_id}/deliveries/{delivery}/redeliver"): ADMINS,
    ("GET", "/api/v1/audit"): ADMINS,
    ("GET", "/api/v1/nodes"): OPERATOR_ONLY,
    ("POST", "/api/v1/nodes/{node_id}/drain"): OPERATOR_ONLY,
    ("POST", "/api/v1/rooms"): ADMINS,
    ("GET", "/api/v1/rooms"): ADMINS,
    ("GET", "/api/v1/rooms/{room_id}"): MODERATORS,
    ("DELETE", "/api/v1/rooms/{room_id}"): MODERATORS,
    ("GET", "/api/v1/rooms/{room_id}/participants"): MODERATORS,
    ("DELETE", "/api/v1/rooms/{room_id}/participants/{participant}"): MODERATORS,
    ("POST", "/api/v1/rooms/{room_id}/participants/{participant}/tracks/{track}/mute"): MODERATORS,
    ("GET", "/api/v1/rooms/{room_id}/participants/{participant}/stats"): MODERATORS,
    ("POST", "/api/v1/rooms/{room_id}/media_bots"): frozenset({ADMIN, OTHER_MODERATOR}),  # on ``quiet``
    ("GET", "/api/v1/rooms/{room_id}/media_bots"): frozenset({ADMIN, OTHER_MODERATOR}),
    ("DELETE", "/api/v1/rooms/{room_id}/media_bots/{bot}"): frozenset({ADMIN, OTHER_MODERATOR}),
    ("POST", "/api/v1/conversations"): EVERYONE,  # anyone may start a conversation of its own
    ("GET", "/api/v1/conversations"): EVERYONE,  # ... and list its own
    ("GET", "/api/v1/conversations/{conversation_id}"): ADMINS,
    ("POST", "/api/v1/conversations/{conversation_id}/members"): ADMINS,
    ("DELETE", "/api/v1/conversations/{conversation_id}/members/{identity}"): ADMINS,
    ("POST", "/api/v1/conversations/{conversation_id}/messages"): ADMINS,
    ("GET", "/api/v1/conversations/{conversation_id}/messages"): ADMINS,
    ("GET", "/api/v1/conversations/{conversation_id}/messages/{seq}"): ADMINS,
    ("PATCH", "/api/v1/conversations/{conversation_id}/messages/{seq}"): ADMINS,
    ("DELETE", "/api/v1/conversations/{conversation_id}/messages/{seq}"): ADMINS,
    ("POST", "/api/v1/conversations/{conversation_id}/receipts"): ADMINS,
    ("GET", "/api/v1/messages/search"): EVERYONE,  # ... and search its own
    ("PUT", "/api/v1/bots/dialogs/{name}"): ADMINS,  # an instance's bots are its administrators' only
    ("GET", "/api/v1/bots/dialogs"): ADMINS,
    ("GET", "/api/v1/bots/dialogs/{name}"): ADMINS,
    ("DELETE", "/api/v1/bots/dialogs/{name}"): ADMINS,
    ("GET", "/api/v1/bots/runs"): ADMINS,
    ("POST", "/api/v1/bots/conversations"): ADMINS,  # a bot in alice and bob's conversation
    ("DELETE", "/api/v1/bots/runs/{run_id}"): ADMINS,
    ("POST", "/api/v1/keywords/{group}/{name}"): ADMINS,  # (and a dialog run's token: tests/bots/test_keywords_api.py)
    ("GET", "/api/v1/bots/providers"): ADMINS,
    ("PUT", "/api/v1/bots/providers/{service}"): ADMINS,
    ("DELETE", "/api/v1/bots/providers/{service}"): ADMINS,
    ("POST", "/api/v1/rooms/{room_id}/recordings"): frozenset({ADMIN, OTHER_MODERATOR}),  # on ``quiet``
    ("GET", "/api/v1/rooms/{room_id}/recordings"): frozenset({ADMIN, OTHER_MODERATOR}),  # on ``quiet``
    ("GET", "/api/v1/recordings/{recording_id}"): MODERATORS,  # ``standup``'s
    ("POST", "/api/v1/recordings/{recording_id}/stop"): MODERATORS,
    ("GET", "/api/v1/recordings/{recording_id}/files/{file}"): MODERATORS,
}


def role_grants(role: str) -> tuple[str, Grants]:
    return {
        ADMIN: ("ops", Grants(instance_admin=True)),
        MODERATOR: ("host", Grants(room="standup", room_join=True, room_admin=True)),
        OTHER_MODERATOR: ("host2", Grants(room="quiet", room_join=True, room_admin=True)),
        PARTICIPANT: ("carol", Grants.participant("standup")),
    }[role]


@dataclass
class Targets:
    """A tenant with something to reach on every route; ``alice`` publishes in ``standup``."""

    tenant: Tenant
    room: str
    cells: dict[tuple[str, str], tuple[str, dict | None]]
    alice: RtcClient

    def headers(self, role: str) -> dict[str, str]:
        identity, grants = role_grants(role)
        return bearer(self.tenant.token(identity, **_fields(grants)))


def _fields(grants: Grants) -> dict:
    return {k: v for k, v in vars(grants).items() if v not in (None, False)}


async def targets(client: TestClient, name: str) -> Targets:
    tenant = await create_tenant(client, name)
    room, alice, cells = await live_targets(client, tenant)
    return Targets(tenant, room, cells, alice)


def test_the_scope_matrix_covers_every_route_of_the_isolation_matrix():
    a = Tenant("c", "i", "k", "s")
    assert set(ALLOWED) == set(matrix(a, "r"))


async def test_each_role_is_refused_what_it_may_not_do_and_nothing_changes(client: TestClient):
    t = await targets(client, "alpha")
    try:
        for role in ROLES:
            headers = t.headers(role)
            for cell, (path, body) in t.cells.items():
                allowed = role in ALLOWED[cell]
                if allowed and not (cell[0] == "GET" or cell in _HARMLESS):
                    continue  # a change: the role's own test makes it
                resp = await client.request(cell[0], path, json=body, headers=headers)
                text = await resp.text()
                if not allowed:
                    assert resp.status in (403, 404), (role, cell, resp.status, text)
                    continue
                # Let through: a success, or a conflict of state (a file still recording, a room that is
                # being recorded already), never a refusal; the role's own test makes each of them succeed.
                assert resp.status < 300 or resp.status == 409, (role, cell, resp.status, text)
                if role != ADMIN:
                    assert "a secret plan" not in text, (role, cell, text)  # alice and bob's chat
        # Nothing changed: the room is open with alice in it, the key works, the chat is intact.
        admin = t.headers(ADMIN)
        resp = await client.get(f"/api/v1/rooms/{t.room}/participants", headers=admin)
        assert [p["identity"] for p in (await resp.json())["participants"]] == ["alice"]
        resp = await client.get(f"/api/v1/instances/{t.tenant.instance_id}/keys", headers=admin)
        assert [k["revoked_at"] for k in (await resp.json())["keys"]] == [None]
        path, _ = t.cells[("GET", "/api/v1/conversations/{conversation_id}/messages")]
        resp = await client.get(path, headers=admin)
        assert [m["content"] for m in (await resp.json())["messages"]] == ["a secret plan"]
    finally:
        await t.alice.close()


# Allowed cells the refusal test may also run: they change nothing another cell depends on.
_HARMLESS = {
    ("POST", "/api/v1/conversations"),
    ("POST", "/api/v1/rooms/{room_id}/recordings"),
}


async def _reaches(client: TestClient, t: Targets, role: str) -> None:
    """Every cell allowed to ``role`` succeeds: removals last, the room's close and the key's revocation at the end."""
    cells = [cell for cell in t.cells if role in ALLOWED[cell]]
    cells.sort(key=lambda c: (c[0] == "DELETE", "/participants/" not in c[1], "/keys/" in c[1]))
    headers = t.headers(role)
    for cell in cells:
        path, body = t.cells[cell]
        resp = await client.request(cell[0], path, json=body, headers=headers)
        assert resp.status < 300, (role, cell, resp.status, await resp.text())


async def test_the_instance_admin_reaches_the_whole_instance(client: TestClient):
    t = await targets(client, "alpha")
    try:
        await _reaches(client, t, ADMIN)
    finally:
        await t.alice.close()


async def test_a_moderator_moderates_its_room_and_records_it(client: TestClient):
    t = await targets(client, "alpha")
    try:
        await _reaches(client, t, MODERATOR)
        # Its room's recordings are its own to start too (the matrix starts them on ``quiet``).
        room = await create_room(client, t.tenant, "standup")  # a new meeting of the same name
        resp = await client.post(f"/api/v1/rooms/{room}/recordings", json={}, headers=t.headers(MODERATOR))
        assert resp.status == 201, await resp.text()
    finally:
        await t.alice.close()
