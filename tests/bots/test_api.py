"""/api/v1/bots: an instance's dialogs are checked when stored, and only its administrators reach them."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.bots.chat import as_user, upload
from tests.helpers import OPERATOR, Tenant, create_tenant


async def test_a_dialog_that_does_not_parse_is_refused_with_its_line_and_column(client: TestClient, tenant: Tenant):
    resp = await client.put("/api/v1/bots/dialogs/menu", json={"source": 'TALK "ok"\nx = "open'}, headers=tenant.admin)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "bot_syntax_error"
    assert error["message"] == "menu: line 2, col 5: unclosed string"
    assert (error["details"]["line"], error["details"]["col"]) == (2, 5)
    resp = await client.get("/api/v1/bots/dialogs", headers=tenant.admin)
    assert (await resp.json())["dialogs"] == []  # nothing stored


async def test_dialogs_are_stored_listed_read_replaced_and_deleted(client: TestClient, tenant: Tenant):
    created = await upload(client, tenant, "Helpers.bas", "FUNCTION shout(t)\n  RETURN UCASE(t)\nEND FUNCTION")
    assert (created["name"], created["schedule"]) == ("helpers", None)
    await upload(client, tenant, "report", 'INCLUDE helpers\nSET SCHEDULE "0 8 * * 1-5"\nTALK shout("hi")')
    resp = await client.get("/api/v1/bots/dialogs", headers=tenant.admin)
    assert [(d["name"], d["schedule"]) for d in (await resp.json())["dialogs"]] == [
        ("helpers", None),
        ("report", "0 8 * * 1-5"),
    ]
    resp = await client.put("/api/v1/bots/dialogs/REPORT", json={"source": 'TALK "v2"'}, headers=tenant.admin)
    assert resp.status == 200  # replaced, and its schedule with it
    resp = await client.get("/api/v1/bots/dialogs/report", headers=tenant.admin)
    body = await resp.json()
    assert (body["source"], body["schedule"]) == ('TALK "v2"', None)
    resp = await client.delete("/api/v1/bots/dialogs/report", headers=tenant.admin)
    assert resp.status == 204
    resp = await client.get("/api/v1/bots/dialogs/report", headers=tenant.admin)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "dialog_not_found"


async def test_bad_dialogs_answer_4xx(client: TestClient, tenant: Tenant):
    cases = [
        ("missing", "INCLUDE nowhere\nTALK 1", 400, "bot_syntax_error"),
        ("cron", 'SET SCHEDULE "61 * * * *"\nTALK 1', 400, "bot_invalid_schedule"),
        ("-bad", "TALK 1", 400, "invalid_dialog_name"),
        ("nul", "TALK 1\x00", 400, "invalid_content"),
        ("big", "' " + "x" * 300_000, 413, "dialog_too_large"),
    ]
    for name, source, status, code in cases:
        resp = await client.put(f"/api/v1/bots/dialogs/{name}", json={"source": source}, headers=tenant.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (status, code), name


async def test_another_instance_and_non_administrators_reach_no_dialog(client: TestClient, tenant: Tenant):
    await upload(client, tenant, "start", 'TALK "secret"')
    other = await create_tenant(client, "other")
    resp = await client.get("/api/v1/bots/dialogs/start", headers=other.admin)
    assert resp.status == 404  # its own instance has none
    resp = await client.get(
        "/api/v1/bots/dialogs/start", params={"instance_id": tenant.instance_id}, headers=other.admin
    )
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "instance_not_found")
    resp = await client.get("/api/v1/bots/dialogs", headers=as_user(tenant, "alice"))
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "grant_missing")
    resp = await client.get("/api/v1/bots/dialogs", params={"instance_id": tenant.instance_id}, headers=OPERATOR)
    assert [d["name"] for d in (await resp.json())["dialogs"]] == ["start"]
