"""Providers (issue 18, part 4): e-mail through a real SMTP server, a signed webhook, OCR, and nothing pretended.

The SMTP server is aiosmtpd on 127.0.0.1, the webhook receiver an aiohttp server that
checks the signature as docs/keywords.md tells receivers to; both get what a dialog and
the keyword API send, through the same built-ins.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from io import BytesIO
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from gbmedia.app import NODE
from gbmedia.bots.compiler import load
from gbmedia.bots.host import MemoryPort, UserInfo
from gbmedia.bots.machine import converse
from gbmedia.bots.providers import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.conftest import service_missing
from tests.helpers import Tenant

SECRET = "hook-secret"


class Inbox:
    """aiosmtpd's handler: every message the server accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


async def allow_local(client: TestClient, tenant: Tenant) -> None:
    """The instance may reach 127.0.0.1 (where the test's SMTP server and webhook receiver listen)."""
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}",
        json={"config": {"bots": {"http_allow": ["127.0.0.0/8"]}}},
        headers=tenant.admin,
    )
    assert resp.status == 200, await resp.text()


async def put_provider(client: TestClient, tenant: Tenant, service: str, body: dict[str, Any], status: int = 201):
    resp = await client.put(f"/api/v1/bots/providers/{service}", json=body, headers=tenant.admin)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def call(client: TestClient, tenant: Tenant, group: str, name: str, body: dict[str, Any], status: int = 200):
    resp = await client.post(f"/api/v1/keywords/{group}/{name}", json=body, headers=tenant.admin)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def run_dialog(client: TestClient, tenant: Tenant, source: str) -> Any:
    runner = client.app[NODE].bots.engine.runner
    instance = await runner.instance(uuid.UUID(tenant.instance_id))
    port = MemoryPort(user=UserInfo("alice"))
    return await converse(load(source, "t"), runner.context(instance, "t", port), []), port


async def test_e_mail_goes_through_the_instances_smtp_server(client: TestClient, tenant: Tenant, smtp):
    port, inbox = smtp
    await allow_local(client, tenant)
    answer = await call(
        client, tenant, "dialog", "sendEmail", {"to": "ana@example.com", "subject": "S", "body": "B"}, 409
    )
    assert answer["error"]["code"] == "provider_not_configured" and "providers.mail" in answer["error"]["message"]
    settings = {"host": "127.0.0.1", "port": port, "sender": "bot@acme.test"}
    made = await put_provider(client, tenant, "mail", {"kind": "smtp", "settings": settings})
    assert (made["kind"], made["has_secret"]) == ("smtp", False)
    body = {"to": "ana@example.com", "subject": "Your order", "body": "It ships today."}
    sent = (await call(client, tenant, "dialog", "sendEmail", body))["result"]
    assert sent["sent"] is True and sent["to"] == "ana@example.com"
    outcome, _ = await run_dialog(client, tenant, 'SEND MAIL "bo@example.com", "From a dialog", "n = " + (1 + 1)')
    assert outcome.status == "done", outcome.error
    assert [(m[0], m[1]) for m in inbox.messages] == [
        ("bot@acme.test", ["ana@example.com"]),
        ("bot@acme.test", ["bo@example.com"]),
    ]
    first, second = (message_from_bytes(m[2]) for m in inbox.messages)
    assert (first["Subject"], first.get_payload().strip()) == ("Your order", "It ships today.")
    assert first["Message-ID"] == sent["message_id"]
    assert (second["Subject"], second.get_payload().strip()) == ("From a dialog", "n = 2")
    # A bad address is the caller's error; an SMTP server that is gone is the keyword's failure.
    bad = await call(client, tenant, "dialog", "sendEmail", {"to": "not-an-address", "subject": "", "body": ""}, 400)
    assert bad["error"]["code"] == "keyword_failed"
    await put_provider(client, tenant, "mail", {"kind": "smtp", "settings": {**settings, "port": 1}}, 200)
    gone = await call(client, tenant, "dialog", "sendEmail", body, 400)
    assert "refused the e-mail" in gone["error"]["message"]
    assert len(inbox.messages) == 2


class Receiver:
    """A webhook receiver checking each request's signature as docs/keywords.md says."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        stamp = request.headers[TIMESTAMP_HEADER]
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        verified = hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected)
        envelope = json.loads(raw)
        self.seen.append({"envelope": envelope, "verified": verified, "age": time.time() - int(stamp)})
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        arguments = envelope["arguments"]
        if envelope["action"] == "quote":
            return web.json_response({"result": {"symbol": arguments["symbol"], "price": 42.5}})
        return web.json_response({"result": {"accepted": envelope["action"], "to": arguments.get("to")}})


async def test_the_webhook_provider_signs_its_request_and_its_answer_is_the_keywords(client: TestClient, tenant):
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/hook"))
        await allow_local(client, tenant)
        runner = client.app[NODE].bots.engine.runner
        instance = await runner.instance(uuid.UUID(tenant.instance_id))
        await runner.context(instance, "t", MemoryPort()).need_files().write("r.txt", b"receipt 7")
        for service in ("stocks", "sms", "messaging"):
            await put_provider(client, tenant, service, {"kind": "webhook", "settings": {"url": url}, "secret": SECRET})
        # The signing key is stored encrypted (the node's Fernet key), never as it was given.
        stored = await client.app[NODE].db.pool.fetchval(
            "SELECT secret_encrypted FROM bot_providers WHERE instance_id = $1 AND service = 'stocks'",
            uuid.UUID(tenant.instance_id),
        )
        assert SECRET.encode() not in bytes(stored)
        assert client.app[NODE].tenancy.instances.secrets.decrypt(stored) == SECRET
        quote = await call(client, tenant, "system", "getStock", {"symbol": "petr4"})
        assert quote["result"] == {"symbol": "PETR4", "price": 42.5}
        outcome, _ = await run_dialog(
            client,
            tenant,
            'x = getStock("PETR4")\nSEND SMS TO "+5511999990000", "price " + x.price\nSEND FILE "r.txt", "yours"',
        )
        assert outcome.status == "done", outcome.error
        assert all(seen["verified"] and seen["age"] < 600 for seen in receiver.seen)
        envelopes = [seen["envelope"] for seen in receiver.seen]
        assert [(e["service"], e["action"], e["arguments"]) for e in envelopes] == [
            ("stocks", "quote", {"symbol": "PETR4"}),
            ("stocks", "quote", {"symbol": "PETR4"}),
            ("sms", "send", {"to": "+5511999990000", "text": "price 42.5"}),
            ("messaging", "send_file", {"to": "alice", "file": "r.txt", "caption": "yours", "data": "cmVjZWlwdCA3"}),
        ]
        assert {e["instance_id"] for e in envelopes} == {tenant.instance_id}
        assert len({e["id"] for e in envelopes}) == 4
        # An answer of 400 or more is the keyword's failure, not a success.
        receiver.status = 503
        failed = await call(client, tenant, "system", "getStock", {"symbol": "VALE3"}, 400)
        assert failed["error"]["code"] == "keyword_failed"
    # A provider's URL on a network the instance does not allow is refused before anything is sent.
    await put_provider(
        client, tenant, "crm", {"kind": "webhook", "settings": {"url": "http://10.0.0.1/crm"}, "secret": SECRET}
    )
    refused = await call(client, tenant, "dialog", "findContact", {"query": "ana"}, 400)
    assert "10.0.0.1" in refused["error"]["message"]


NOT_CONFIGURED = [
    ("system", "sendSmsTo", {"to": "+5511999990000", "text": "hi"}, "sms"),
    ("system", "talkTo", {"to": "+5511999990000", "text": "hi"}, "messaging"),
    ("dialog", "sendFileTo", {"to": "+5511999990000", "file": "a.pdf"}, "messaging"),
    ("dialog", "sendTemplateTo", {"to": "+5511999990000", "template": "welcome"}, "messaging"),
    ("system", "pay", {"to": "ana@example.com", "amount": 10}, "payments"),
    ("system", "createLead", {"lead": {"name": "Ana"}}, "crm"),
    ("dialog", "createDeal", {"deal": {"title": "Big"}}, "crm"),
    ("dialog", "findContact", {"query": "Ana"}, "crm"),
    ("dialog", "getActiveTasks", {}, "crm"),
    ("system", "getStock", {"symbol": "PETR4"}, "stocks"),
    ("system", "seeCaption", {"file": "photo.png"}, "vision"),
    ("system", "tweet", {"text": "hello"}, "social"),
    ("system", "rewrite", {"text": "hello"}, "llm"),
    ("system", "translate", {"text": "hello", "language": "pt"}, "translation"),
    ("dialog", "sendEmail", {"to": "ana@example.com", "subject": "s", "body": "b"}, "mail"),
]


async def test_a_keyword_without_its_provider_names_the_setting_and_sends_nothing(client: TestClient, tenant):
    for group, name, body, service in NOT_CONFIGURED:
        answer = await call(client, tenant, group, name, body, 409)
        assert answer["error"]["code"] == "provider_not_configured", name
        assert f"providers.{service}" in answer["error"]["message"], name
    outcome, port = await run_dialog(client, tenant, 'TALK "before"\nSEND SMS TO "+5511999990000", "hi"\nTALK "after"')
    assert outcome.status == "failed" and "providers.sms" in str(outcome.error) and "line 2" in str(outcome.error)
    assert port.said[0] == "before" and "after" not in port.said and port.sent == []  # then the run's apology
    # Bad provider settings are refused naming the setting; a kind that cannot serve the service too.
    for service, body, code in [
        (
            "mail",
            {"kind": "smtp", "settings": {"host": "smtp.example.com", "sender": "nope"}},
            "provider_settings_invalid",
        ),
        (
            "mail",
            {"kind": "smtp", "settings": {"host": "x", "sender": "a@b.c", "port": 0}},
            "provider_settings_invalid",
        ),
        ("sms", {"kind": "webhook", "settings": {"url": "ftp://x"}}, "provider_settings_invalid"),
        ("sms", {"kind": "webhook", "settings": {"url": "https://x", "extra": 1}}, "provider_settings_invalid"),
        ("sms", {"kind": "smtp", "settings": {}}, "provider_kind_invalid"),
        ("crm", {"kind": "tesseract"}, "provider_kind_invalid"),
        ("sms", {"kind": "carrier-pigeon"}, "validation_failed"),
    ]:
        resp = await client.put(f"/api/v1/bots/providers/{service}", json=body, headers=tenant.admin)
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, code), body
    resp = await client.get("/api/v1/bots/providers", headers=tenant.admin)
    assert (await resp.json())["providers"] == []


async def test_ocr_reads_an_image_of_the_instances_files_with_tesseract(client: TestClient, tenant: Tenant):
    if shutil.which("tesseract") is None:
        service_missing("tesseract (Debian's tesseract-ocr), which scripts/test installs")
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(image).text((30, 50), "INVOICE 4217", fill="black", font=ImageFont.load_default(size=72))
    png = BytesIO()
    image.save(png, format="PNG")
    runner = client.app[NODE].bots.engine.runner
    instance = await runner.instance(uuid.UUID(tenant.instance_id))
    await runner.context(instance, "t", MemoryPort()).need_files().write("scans/invoice.png", png.getvalue())
    answer = await call(client, tenant, "dialog", "getOCR", {"file": "scans/invoice.png"})
    assert "INVOICE 4217" in answer["result"]
    outcome, port = await run_dialog(client, tenant, 'TALK seeText("scans/invoice.png")')
    assert outcome.status == "done" and "INVOICE 4217" in port.said[0]
    missing = await call(client, tenant, "dialog", "getOCR", {"file": "scans/none.png"}, 400)
    assert missing["error"]["code"] == "keyword_failed"
