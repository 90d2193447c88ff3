"""SHARE FOLDER: a signed, expiring link that a live node serves without credentials, and nothing more."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.bots.compiler import load
from gbmedia.bots.context import Context
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.library import REGISTRY
from gbmedia.bots.machine import converse
from gbmedia.bots.sharing import PURPOSE, ROUTE, Grant, ShareLinks
from gbmedia.errors import ApiError
from gbmedia.node import Node
from gbmedia.tenancy.secrets import SecretBox
from tests.bots.chat import Person, bot_conversation, upload
from tests.bots.helpers import talk_with
from tests.helpers import OPERATOR, create_tenant


async def error_of(resp: Any) -> tuple[int, str]:
    body = await resp.json()
    assert set(body["error"]) >= {"code", "message"}, body
    return resp.status, body["error"]["code"]


DIALOG = """
SAVE "a,b" AS "reports/q1.csv"
SAVE "<script>alert(1)</script>" AS "reports/page.html"
SAVE "x" AS "reports/sub/s.txt"
SAVE "private" AS "private.txt"
x = SHARE FOLDER "reports", 5
TALK x
"""


def test_a_link_checks_its_signature_and_expiry():
    links = ShareLinks(b"k" * 32, "https://media.example.com/")
    url = links.link("inst", "reports", 60, now=1000)
    assert url.startswith("https://media.example.com" + ROUTE)
    token = url.rsplit("/", 1)[1]
    assert links.check(token, now=1059) == Grant("inst", "reports", 1060)
    for now, code in [(1060, "share_link_expired"), (5000, "share_link_expired")]:
        with pytest.raises(ApiError) as caught:
            links.check(token, now=now)
        assert caught.value.code == code
    payload, mac = token.split(".")
    other = ShareLinks(b"o" * 32).token(Grant("inst", "reports", 10**10))
    for forged in [payload[:-2] + "xx." + mac, payload, other, other.split(".")[0] + "." + mac, "", "."]:
        with pytest.raises(ApiError) as caught:
            links.check(forged, now=1000)
        assert (caught.value.status, caught.value.code) == (403, "share_link_invalid")


async def test_share_folder_without_a_node_or_with_a_bad_lifetime(tmp_path):
    from gbmedia.bots.files import InstanceFiles

    files = InstanceFiles(tmp_path, "i")
    outcome, _ = await talk_with('x = SHARE FOLDER "r"', files=files)
    assert "shared links are not available to this run" in outcome.error.message
    links = ShareLinks(b"k" * 32)
    for minutes in ("0", "10081", '"soon"'):
        outcome, _ = await talk_with(f'x = SHARE FOLDER "r", {minutes}', files=files, links=links)
        assert outcome.status == "failed" and (
            "1 to 10080 minutes" in outcome.error.message or "soon" in outcome.error.message
        )


async def test_a_live_node_serves_the_shared_folder_only(node: Node, client: TestClient):
    tenant = await create_tenant(client, "share")
    runner = node.bots.engine.runner
    instance = await runner.instance(uuid.UUID(tenant.instance_id))
    port = MemoryPort()
    outcome = await converse(load(DIALOG, "share"), runner.context(instance, "share", port), [])
    assert outcome.status == "done", outcome.error
    [link] = port.said
    assert link.startswith(ROUTE)  # relative: the test node has no GBMEDIA_PUBLIC_URL

    resp = await client.get(link)  # no credentials
    assert resp.status == 200, await resp.text()
    listing = await resp.json()
    assert listing["folder"] == "reports" and listing["path"] == ""
    assert [(f["name"], f["folder"], f["size"]) for f in listing["files"]] == [
        ("page.html", False, 25),
        ("q1.csv", False, 3),
        ("sub", True, 0),
    ]
    expires = time.mktime(time.strptime(listing["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert 4 * 60 < expires - time.time() <= 5 * 60 + 1

    csv = await client.get(listing["files"][1]["url"])
    assert (csv.status, await csv.text(), csv.headers["Content-Type"]) == (200, "a,b", "text/csv")
    page = await client.get(f"{link}/page.html")
    assert page.headers["Content-Security-Policy"] == "sandbox" and page.headers["X-Content-Type-Options"] == "nosniff"
    sub = await (await client.get(f"{link}/sub")).json()
    assert [(f["path"], f["url"]) for f in sub["files"]] == [("sub/s.txt", f"{link}/sub/s.txt")]
    assert await (await client.get(f"{link}/sub/s.txt")).text() == "x"

    for outside in ("private.txt", "..%2Fprivate.txt", "sub/..%2F..%2Fprivate.txt", "none.txt", "%2Fetc%2Fpasswd"):
        assert await error_of(await client.get(f"{link}/{outside}")) == (404, "shared_file_not_found"), outside
    token = link.rsplit("/", 1)[1]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert await error_of(await client.get(ROUTE + forged)) == (403, "share_link_invalid")
    assert await error_of(await client.get(f"{ROUTE}{forged}/q1.csv")) == (403, "share_link_invalid")
    assert runner.links is not None
    expired = runner.links.link(tenant.instance_id, "reports", 60, now=time.time() - 61)
    assert await error_of(await client.get(expired)) == (403, "share_link_expired")
    assert await error_of(await client.get(f"{expired}/q1.csv")) == (403, "share_link_expired")
    unknown = runner.links.link(str(uuid.uuid4()), "reports", 60)
    assert await error_of(await client.get(unknown)) == (403, "share_link_invalid")

    gone = runner.links.link(tenant.instance_id, "removed", 60)
    assert await error_of(await client.get(gone)) == (404, "shared_file_not_found")

    # The same node's chat: HEAR AS QRCODE takes a picture sent as a message (its JSON) or a file's name.
    await upload(client, tenant, "ticket", "HEAR code AS QRCODE\nTALK code")
    await REGISTRY.call("getQRCode", runner.context(instance, "t", MemoryPort()), ["TICKET-9", "uploads/qr.png"])
    picture = base64.b64encode(await runner.files_for(tenant.instance_id).read("uploads/qr.png", 10**6)).decode()
    alice = Person(client, node, tenant, "alice", await bot_conversation(client, tenant))
    assert await alice.say("ticket") == []
    assert await alice.say("TICKET-9") == ["Please send a picture of a QR code."]
    assert await alice.say(json.dumps({"name": "qr.png", "data": picture})) == ["TICKET-9"]
    assert await alice.say("ticket") == [] and await alice.say("uploads/qr.png") == ["TICKET-9"]

    # The key is derived from the node's secret key: another key's links are forged ones.
    same = ShareLinks(SecretBox.for_node(node.settings.secret_key, node.settings.data_dir).derive(PURPOSE))
    assert same.check(token).folder == "reports"
    with pytest.raises(ApiError):
        ShareLinks(SecretBox.for_node(None, node.settings.data_dir / "other").derive(PURPOSE)).check(token)

    resp = await client.patch(f"/api/v1/instances/{tenant.instance_id}", json={"status": "suspended"}, headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert await error_of(await client.get(link)) == (403, "share_link_invalid")


def test_context_default_has_no_links():
    assert Context().links is None
