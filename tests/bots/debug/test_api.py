"""/api/v1/debugger and /debuggerService: an instance's administrators debug its dialogs over HTTP."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gbmedia.app import NODE
from gbmedia.bots.debug.service import Debugger
from gbmedia.bots.limits import Limits
from tests.bots.chat import as_user, upload
from tests.helpers import OPERATOR, Tenant, create_tenant
from tests.rtc import wait_for

ASK = """n = 2
square = n * n
TALK "square is ${square}"
HEAR name
TALK "bye " + name
"""
RUNS = "/api/v1/debugger/runs"


async def post(client: TestClient, path: str, body: dict | None, headers: dict, status: int = 200) -> dict:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def error(resp: ClientResponse) -> tuple[int, str]:
    return resp.status, (await resp.json())["error"]["code"]


@pytest.mark.parametrize("engine", ["interp", "wasm"])
async def test_a_stored_dialog_is_debugged_from_breakpoint_to_end(client: TestClient, tenant: Tenant, engine: str):
    await upload(client, tenant, "ask", ASK)
    admin = tenant.admin
    run = await post(client, RUNS, {"dialog": "ask", "breakpoints": [2], "engine": engine}, admin, 201)
    assert (run["state"], run["line"], run["variables"], run["source"]) == ("break", 2, {"N": 2}, ASK)
    assert run["engine"] == engine
    path = f"{RUNS}/{run['id']}"
    run = await post(client, f"{path}/step", None, admin)
    assert (run["state"], run["line"], run["variables"]) == ("break", 3, {"N": 2, "SQUARE": 4})
    run = await post(client, f"{path}/breakpoints", {"line": 5}, admin)
    assert run["breakpoints"] == [2, 5]
    run = await post(client, f"{path}/resume", None, admin)
    assert (run["state"], run["waiting_for_input"], run["line"], run["messages"]) == (
        "running",
        True,
        4,
        ["square is 4"],
    )
    resp = await client.post(f"{path}/step", headers=admin)
    assert await error(resp) == (409, "debug_run_waiting")
    run = await post(client, f"{path}/messages", {"text": "Ana"}, admin)
    assert (run["state"], run["line"], run["variables"]["NAME"], run["messages"]) == ("break", 5, "Ana", [])
    run = await post(client, f"{path}/breakpoints", {"line": 5, "enabled": False}, admin)
    assert run["breakpoints"] == [2]
    run = await post(client, f"{path}/resume", None, admin)
    assert (run["state"], run["outcome"], run["messages"]) == ("stopped", "done", ["bye Ana"])
    resp = await client.get(path, headers=admin)  # getContext: nothing new said since
    assert (await resp.json())["messages"] == []
    for action, body in (("step", None), ("resume", None), ("messages", {"text": "x"})):
        resp = await client.post(f"{path}/{action}", json=body, headers=admin)
        assert await error(resp) == (409, "debug_run_stopped"), action
    resp = await client.delete(path, headers=admin)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    resp = await client.get(path, headers=admin)
    assert await error(resp) == (404, "debug_run_not_found")


async def test_debug_runs_are_apart_from_each_other_and_from_other_instances(client: TestClient, tenant: Tenant):
    source = 'TABLE notes\n  text string(100)\nEND TABLE\nSAVE "notes", "mine"\nrows = FIND "notes"\nHEAR x'
    admin = tenant.admin
    first = await post(client, RUNS, {"source": source, "breakpoints": [5]}, admin, 201)
    second = await post(client, RUNS, {"source": source, "stop_on_entry": True}, admin, 201)
    assert (first["line"], second["line"]) == (5, 1) and first["id"] != second["id"]
    await post(client, f"{RUNS}/{first['id']}/step", None, admin)
    second_path = f"{RUNS}/{second['id']}"
    await post(client, f"{second_path}/breakpoints", {"line": 6}, admin)
    second = await post(client, f"{second_path}/resume", None, admin)
    assert second["variables"]["ROWS"] == {"text": "mine"}  # its own table: one row, not the other run's too
    resp = await client.get(f"{RUNS}/{first['id']}", headers=admin)
    assert (await resp.json())["breakpoints"] == [5]  # the other run's breakpoint is not here
    resp = await client.get("/api/v1/bots/runs", headers=admin)
    assert (await resp.json())["runs"] == []  # the dialog engine has no run of them: nothing live was touched
    other = await create_tenant(client, "other")
    resp = await client.post("/debuggerService/getContext", json={"botId": first["id"]}, headers=other.admin)
    assert await error(resp) == (404, "debug_run_not_found")
    for method, suffix in (("GET", ""), ("POST", "/step"), ("DELETE", "")):
        resp = await client.request(method, f"{RUNS}/{first['id']}{suffix}", headers=other.admin)
        assert await error(resp) == (404, "debug_run_not_found")
    resp = await client.get(f"{RUNS}/{first['id']}", params={"instance_id": tenant.instance_id}, headers=other.admin)
    assert await error(resp) == (404, "instance_not_found")
    resp = await client.get(f"{RUNS}/{first['id']}", headers=as_user(tenant, "alice"))
    assert await error(resp) == (403, "grant_missing")
    resp = await client.get(f"{RUNS}/{first['id']}", headers=OPERATOR)
    assert await error(resp) == (400, "instance_id_required")
    resp = await client.get(f"{RUNS}/{first['id']}", params={"instance_id": tenant.instance_id}, headers=OPERATOR)
    assert resp.status == 200 and (await resp.json())["line"] == 6


async def test_bad_requests_and_the_per_instance_cap(client: TestClient, tenant: Tenant):
    admin = tenant.admin
    cases = [
        ({}, 400, "debug_source_required"),
        ({"source": 'x = "open'}, 400, "bot_syntax_error"),
        ({"source": "TALK 1\x00"}, 400, "invalid_content"),
        ({"dialog": "nope"}, 404, "dialog_not_found"),
        ({"source": "TALK 1", "breakpoints": "3"}, 400, "validation_failed"),
        ({"source": "TALK 1", "engine": "jit"}, 400, "validation_failed"),
    ]
    for body, status, code in cases:
        resp = await client.post(RUNS, json=body, headers=admin)
        assert await error(resp) == (status, code), body
    resp = await client.get(f"{RUNS}/not-a-uuid", headers=admin)
    assert await error(resp) == (404, "debug_run_not_found")
    paused = await post(client, RUNS, {"source": "x = 1\nHEAR y", "stop_on_entry": True}, admin, 201)
    assert paused["engine"] == "wasm"  # no engine named: the node's GBMEDIA_BOT_ENGINE (the default, wasm)
    query = "rows = [NEW OBJECT]\nx = SELECT * FROM rows\nTALK UBOUND(x)"
    refused = await post(client, RUNS, {"source": query, "engine": "wasm"}, admin, 201)
    assert (refused["engine"], refused["outcome"], refused["messages"]) == ("interp", "done", ["1"])
    assert (await client.delete(f"{RUNS}/{refused['id']}", headers=admin)).status == 200
    resp = await client.post(f"{RUNS}/{paused['id']}/breakpoints", json={"line": 0}, headers=admin)
    assert await error(resp) == (400, "validation_failed")
    resp = await client.post(f"{RUNS}/{paused['id']}/messages", json={"text": "hi"}, headers=admin)
    assert await error(resp) == (409, "debug_run_not_waiting")
    debugger = client.app[NODE].bots.debugger
    debugger.per_instance = 1
    resp = await client.post(RUNS, json={"source": "TALK 1"}, headers=admin)
    assert await error(resp) == (429, "debug_run_limit")
    # A run left alone ends: the reaper finds it idle and frees its place.
    debugger.idle_seconds = 0.0
    assert await debugger.reap() == [uuid.UUID(paused["id"])]
    resp = await client.get(f"{RUNS}/{paused['id']}", headers=admin)
    assert await error(resp) == (404, "debug_run_not_found")
    debugger.idle_seconds = 600.0
    await post(client, RUNS, {"source": "TALK 1"}, admin, 201)
    # An instance that turns bots off debugs none either.
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}", json={"features": {"bots": False}}, headers=OPERATOR
    )
    assert resp.status == 200, await resp.text()
    debugger.per_instance = 5
    resp = await client.post(RUNS, json={"source": "TALK 1"}, headers=admin)
    assert await error(resp) == (403, "feature_disabled")


async def test_refactor_renames_and_reformats(client: TestClient, tenant: Tenant):
    admin = tenant.admin
    await upload(client, tenant, "ask", ASK)
    renamed = await post(
        client, "/api/v1/debugger/refactor", {"action": "rename", "dialog": "ask", "old": "n", "new": "side"}, admin
    )
    assert renamed["source"].splitlines()[:3] == ["side = 2", "square = side * side", 'TALK "square is ${square}"']
    body = {"action": "reformat", "source": "if 1 then\ntalk 1\nend if"}
    assert (await post(client, "/api/v1/debugger/refactor", body, admin))["source"] == "IF 1 THEN\n    TALK 1\nEND IF"
    cases = [
        ({"action": "rename", "source": ASK, "old": "n", "new": "square"}, 409, "refactor_name_taken"),
        ({"action": "rename", "source": ASK, "old": "zz", "new": "y"}, 400, "refactor_name_unknown"),
        ({"action": "rename", "source": ASK, "old": "n", "new": "1x"}, 400, "refactor_invalid_name"),
        (
            {"action": "rename", "source": "email = 1\nHEAR e AS EMAIL", "old": "email", "new": "m"},
            422,
            "refactor_unsafe",
        ),
        ({"action": "rename", "source": ASK, "old": "n"}, 400, "refactor_names_required"),
        ({"action": "reformat", "source": "IF 1 THEN"}, 400, "bot_syntax_error"),
        ({"action": "shuffle", "source": ASK}, 400, "validation_failed"),
    ]
    for body, status, code in cases:
        resp = await client.post("/api/v1/debugger/refactor", json=body, headers=admin)
        assert await error(resp) == (status, code), body


async def test_the_older_platforms_debugger_service_names(client: TestClient, tenant: Tenant):
    admin = tenant.admin
    await upload(client, tenant, "ask", ASK)
    legacy = "/debuggerService"
    started = await post(
        client, f"{legacy}/start", {"botId": "ignored", "botApiKey": "k", "scriptName": "ask"}, admin, 201
    )
    bot = started["botId"]
    assert started["state"] == "running" and started["waiting_for_input"]
    assert started["messages"] == ["square is 4"]
    await post(client, f"{legacy}/setBreakpoint", {"botId": bot, "line": 5}, admin)
    answered = await post(client, f"{legacy}/sendMessage", {"botId": bot, "text": "Bo"}, admin)
    assert (answered["state"], answered["line"]) == ("break", 5)
    stepped = await post(client, f"{legacy}/step", {"botId": bot}, admin)
    assert (stepped["state"], stepped["messages"]) == ("stopped", ["bye Bo"])
    context = await post(client, f"{legacy}/getContext", {"botId": bot}, admin)
    assert context["outcome"] == "done"
    resp = await client.post(f"{legacy}/resume", json={"botId": bot}, headers=admin)
    assert await error(resp) == (409, "debug_run_stopped")
    await post(client, f"{legacy}/stop", {"botId": bot}, admin)
    resp = await client.post(f"{legacy}/getContext", json={"botId": bot}, headers=admin)
    assert await error(resp) == (404, "debug_run_not_found")
    code = "x = 1\nTALK x"
    renamed = await post(client, f"{legacy}/refactor", {"code": code, "change": "rename x to total"}, admin)
    assert renamed["source"] == "total = 1\nTALK total"
    formatted = await post(client, f"{legacy}/refactor", {"code": "talk 1", "change": "reformat"}, admin)
    assert formatted["source"] == "TALK 1"
    resp = await client.post(f"{legacy}/refactor", json={"code": code, "change": "make it better"}, headers=admin)
    assert await error(resp) == (400, "refactor_change_unknown")
    resp = await client.post(f"{legacy}/setBreakpoint", json={"botId": bot}, headers=admin)
    assert await error(resp) == (404, "debug_run_not_found")
    run = await post(client, f"{legacy}/start", {"code": code + "\nHEAR y"}, admin, 201)
    resp = await client.post(f"{legacy}/setBreakpoint", json={"botId": run["botId"]}, headers=admin)
    assert await error(resp) == (400, "debug_line_required")
    resp = await client.post(f"{legacy}/launch", json={}, headers=admin)
    assert await error(resp) == (404, "not_found")


async def test_the_reaper_ends_a_paused_run_left_alone_and_removes_its_files(client: TestClient, tenant: Tenant):
    node = client.app[NODE]
    debugger = Debugger(node.bots.dialogs, node.tenancy.instances, Limits(), idle_seconds=0.05)
    instance = await node.tenancy.instances.get(uuid.UUID(tenant.instance_id))
    source = 'SAVE "kept for the run" AS "notes.txt"\nHEAR y'
    compiled = await debugger.compile(instance.id, "idle", source)
    run = await debugger.start(instance, compiled, source, [], stop_on_entry=False)
    assert run.waiting and run.scratch is not None and (run.scratch / "notes.txt").is_file()
    scratch = run.scratch
    debugger.start_reaper()
    try:
        await wait_for(lambda: run.id not in debugger.runs, within=10)
        assert run.state == "stopped"
        assert not scratch.exists()
    finally:
        await debugger.close()


async def test_a_debug_run_calls_the_instances_stored_dialogs_with_call_vm(client: TestClient, tenant: Tenant):
    await upload(client, tenant, "tax", "FUNCTION due(a)\n  RETURN a * 2\nEND FUNCTION\n")
    source = 'TALK callVM("tax", "due", 21)\nTALK callVM("nowhere")'
    run = await post(client, RUNS, {"source": source}, tenant.admin, 201)  # no breakpoint: it runs to its end
    assert (run["state"], run["outcome"], run["messages"][0]) == ("stopped", "failed", "42")
    assert (run["error"]["line"], run["error"]["message"]) == (2, "the bot has no dialog nowhere")
