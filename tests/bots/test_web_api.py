"""Web automation over the keyword API: the same built-ins as in BASIC, the caller's pages kept between calls.

``POST /api/v1/keywords/web/<name>`` (and the old ``/webAutomation/<name>``) with the
instance's token drives the node's browser like a dialog does, and gets what the dialog
gets; the instance's ``bots.http_allow`` decides what it may open, and bad arguments are
400 ``keyword_failed`` with the reason.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.bots.compiler import load
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.machine import Run
from gbmedia.node import Node
from tests.bots.test_web import site  # noqa: F401  (the pages this module's tests open)
from tests.helpers import Tenant


async def web(client: TestClient, tenant: Tenant, name: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = await client.post(f"/api/v1/keywords/web/{name}", json=body, headers=tenant.admin)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer["result"] if status == 200 else answer["error"]


async def allow_loopback(client: TestClient, tenant: Tenant) -> None:
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}",
        json={"config": {"bots": {"http_allow": ["127.0.0.0/8"]}}},
        headers=tenant.admin,
    )
    assert resp.status == 200, await resp.text()


async def test_a_form_over_http_as_in_basic(client: TestClient, node: Node, tenant: Tenant, site: str) -> None:  # noqa: F811
    refused = await web(client, tenant, "openPage", {"url": f"{site}/form"}, 400)
    assert refused["code"] == "keyword_failed" and "not a public address" in refused["message"]
    await allow_loopback(client, tenant)

    page = await web(client, tenant, "openPage", {"url": f"{site}/form"})
    assert page.isdigit()
    assert await web(client, tenant, "setElementText", {"target": "#email", "text": "ana@example.com"}) is None
    await web(client, tenant, "pressKey", {"key": "ENTER"})
    over_http = await web(client, tenant, "getTextOf", {"target": "#result"})
    element = await web(client, tenant, "getBySelector", {"selector": "h1"})
    assert element["tag"] == "h1" and element["text"] == "Result"
    resp = await client.post("/webAutomation/getTextOf", json={"target": "#result"}, headers=tenant.admin)
    assert resp.status == 200 and (await resp.json())["result"] == over_http
    assert await web(client, tenant, "cyrb53", {"text": "a"}) == 7929297801672961
    assert await web(client, tenant, "isSelector", {"text": "#email"}) is True

    # The same steps in a dialog of the same instance: the same answer.
    instance = await node.bots.engine.runner.instance(uuid.UUID(tenant.instance_id))
    source = f'OPEN "{site}/form"\nSET "#email", "ana@example.com"\nPRESS ENTER\nTALK TEXT OF "#result"\n'
    port = MemoryPort()
    outcome = await Run(load(source, "web"), node.bots.engine.runner.context(instance, "web", port)).start()
    assert outcome.status == "done", outcome.error
    assert port.said == [over_http] == ["got ana@example.com 10"]

    assert await web(client, tenant, "closeHandles", {}) == 1
    gone = await web(client, tenant, "getTextOf", {"target": "#result"}, 400)
    assert "no web page is open" in gone["message"]
    assert not node.bots.browsers.sessions


async def test_bad_web_arguments_over_http(client: TestClient, node: Node, tenant: Tenant, site: str) -> None:  # noqa: F811
    await allow_loopback(client, tenant)
    assert (await web(client, tenant, "openPage", {"url": "file:///etc/passwd"}, 400))["code"] == "keyword_failed"
    assert (await web(client, tenant, "openPage", {}, 400))["code"] == "keyword_argument_missing"
    assert (await web(client, tenant, "click", {"target": "#x"}, 400))["message"].endswith("OPEN one first")
    assert (await web(client, tenant, "cyrb53", {"text": "a", "seed": "x"}, 400))["code"] == "keyword_failed"
    assert (await web(client, tenant, "getPageByHandle", {"handle": "42"}, 400))["code"] == "keyword_failed"


async def test_media_bot_statements_are_a_dialogs_only(client: TestClient, node: Node, tenant: Tenant) -> None:
    resp = await client.post("/api/v1/keywords/system/joinRoom", json={"room": "standup"}, headers=tenant.admin)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "keyword_dialog_only"
