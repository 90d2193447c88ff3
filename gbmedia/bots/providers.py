"""The outside services keywords call (e-mail, SMS, payments, CRM, quotes, vision, ...), per instance.

A keyword that needs an outside service names the service and an action
(``await ctx.providers.call("mail", "send", {...})``); the instance's provider for that
service does it. An instance configures one provider per service
(``PUT /api/v1/bots/providers/{service}``; table ``bot_providers``, its secret encrypted
with the node's secret key). With none configured the keyword fails with
:class:`ProviderNotConfigured` naming the setting (``provider_not_configured`` over HTTP,
a run error in a dialog): never a pretended success.

Kinds:

- ``smtp`` (service ``mail``): sends the e-mail through the SMTP server in its settings
  (``host``, ``port``, ``sender``, ``starttls``, ``username``; the password is the secret).
- ``webhook`` (any service): POSTs a JSON envelope to the instance's URL, signed with
  HMAC-SHA256 under its secret (docs/keywords.md, "The webhook provider"), and answers
  what the URL answers.
- ``tesseract`` (service ``ocr``): Debian's Tesseract reads the text of an image; an
  instance without an ``ocr`` provider uses it when it is installed.

Every destination is checked like a dialog's HTTP (gbmedia/bots/fetch.py): public
addresses, plus the networks the instance allows in ``bots.http_allow``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import smtplib
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import asyncpg

from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher
from gbmedia.bots.limits import Budget
from gbmedia.tenancy.secrets import SecretBox

# service -> what uses it (the keywords), for messages and docs
SERVICES: dict[str, str] = {
    "mail": "sendEmail (SEND MAIL)",
    "sms": "sendSmsTo (SEND SMS TO)",
    "messaging": "talkTo (TALK TO), sendFile (SEND FILE), sendFileTo (SEND FILE TO), sendTemplateTo",
    "payments": "pay",
    "crm": "createLead, createDeal, findContact, getActiveTasks",
    "stocks": "getStock",
    "vision": "seeCaption",
    "ocr": "getOCR, seeText",
    "social": "tweet",
    "llm": "rewrite",
    "translation": "translate",
}
KINDS: dict[str, set[str]] = {"smtp": {"mail"}, "webhook": set(SERVICES), "tesseract": {"ocr"}}
SIGNATURE_HEADER = "X-GB-Signature"
TIMESTAMP_HEADER = "X-GB-Timestamp"
SMTP_TIMEOUT = 20.0
OCR_TIMEOUT = 30.0


class ProviderNotConfigured(Fault):
    """The instance has no provider for a service a keyword needs."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.setting = f"providers.{service}"
        super().__init__(
            f"the instance has no {service} provider (setting {self.setting}: PUT /api/v1/bots/providers/{service})"
        )


@dataclass(frozen=True)
class Provider:
    service: str
    kind: str
    settings: dict[str, Any]
    secret: str | None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook provider's signature: ``sha256=`` HMAC-SHA256(secret, timestamp + "." + body), in hex."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def tesseract_installed() -> bool:
    return shutil.which("tesseract") is not None


class InstanceProviders:
    """One instance's providers, read from ``bot_providers`` when a keyword needs one."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, instance_id: uuid.UUID, fetcher: GuardedFetcher | None):
        self.pool = pool
        self.box = box
        self.instance_id = instance_id
        self.fetcher = fetcher

    async def get(self, service: str) -> Provider | None:
        row = await self.pool.fetchrow(
            "SELECT kind, settings, secret_encrypted FROM bot_providers WHERE instance_id = $1 AND service = $2",
            self.instance_id,
            service,
        )
        if row is None:
            if service == "ocr" and tesseract_installed():
                return Provider("ocr", "tesseract", {}, None)
            return None
        secret = self.box.decrypt(row["secret_encrypted"]) if row["secret_encrypted"] is not None else None
        return Provider(service, row["kind"], dict(row["settings"]), secret)

    async def call(self, service: str, action: str, arguments: dict[str, Any], budget: Budget) -> Any:
        """Have the instance's provider for ``service`` do ``action``: its answer."""
        provider = await self.get(service)
        if provider is None:
            raise ProviderNotConfigured(service)
        if provider.kind == "smtp":
            return await self.smtp(provider, arguments)
        if provider.kind == "tesseract":
            return await self.tesseract(arguments)
        return await self.webhook(provider, action, arguments, budget)

    def need_fetcher(self) -> GuardedFetcher:
        if self.fetcher is None:
            raise Fault("the instance's bots.http_allow is malformed: no outside service can be reached")
        return self.fetcher

    async def webhook(self, provider: Provider, action: str, arguments: dict[str, Any], budget: Budget) -> Any:
        """POST the signed envelope; the answer's ``result`` (or the whole answer) is the keyword's."""
        envelope = {
            "id": uuid.uuid4().hex,
            "instance_id": str(self.instance_id),
            "service": provider.service,
            "action": action,
            "arguments": arguments,
        }
        body = json.dumps(envelope, ensure_ascii=False, default=str)
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
        if provider.secret:
            headers[SIGNATURE_HEADER] = sign(provider.secret, timestamp, body.encode())
        answer = await self.need_fetcher().request("POST", provider.settings["url"], body, headers, None, budget)
        if isinstance(answer, dict) and "result" in answer:
            return answer["result"]
        return answer

    async def smtp(self, provider: Provider, arguments: dict[str, Any]) -> dict[str, Any]:
        """Send an e-mail through the instance's SMTP server (in a thread: smtplib blocks)."""
        settings = provider.settings
        host, port = str(settings["host"]), int(settings.get("port", 587))
        address = str((await self.need_fetcher().checked_addresses(host))[0])
        message = EmailMessage()
        message["From"] = str(settings["sender"])
        message["To"] = str(arguments["to"])
        message["Subject"] = str(arguments.get("subject", ""))
        message["Message-ID"] = make_msgid(domain=str(settings["sender"]).rsplit("@", 1)[-1] or None)
        message.set_content(str(arguments.get("body", "")))

        def send() -> None:
            with smtplib.SMTP(address, port, timeout=SMTP_TIMEOUT, local_hostname="gbmedia") as client:
                if settings.get("starttls"):
                    client.starttls(context=ssl.create_default_context(), server_hostname=host)
                if settings.get("username"):
                    client.login(str(settings["username"]), provider.secret or "")
                client.send_message(message)

        try:
            await asyncio.to_thread(send)
        except (smtplib.SMTPException, OSError) as exc:
            raise Fault(f"the SMTP server {host}:{port} refused the e-mail: {exc}") from None
        return {"sent": True, "to": message["To"], "message_id": message["Message-ID"]}

    async def tesseract(self, arguments: dict[str, Any]) -> str:
        """The text Tesseract reads in an image (its bytes in ``image``)."""
        image: bytes = arguments["image"]
        language = str(arguments.get("language") or "eng")
        process = await asyncio.create_subprocess_exec(
            "tesseract", "stdin", "stdout", "-l", language,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(image), OCR_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise Fault(f"OCR took more than {OCR_TIMEOUT:.0f} seconds") from None
        if process.returncode != 0:
            raise Fault(f"OCR failed: {err.decode(errors='replace').strip()[:300]}")
        return out.decode(errors="replace").strip()
