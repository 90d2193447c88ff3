"""Keywords that need an outside service: payments, CRM, quotes, vision and OCR, social posts, rewriting.

Each calls the instance's provider for its service (gbmedia/bots/providers.py) with the
arguments it was given and answers what the provider answers; an instance without that
provider gets ``provider_not_configured`` naming the setting. (E-mail, SMS and TALK TO
are gbmedia/bots/lib_conversation.py's, through the same providers.)
"""

from __future__ import annotations

import base64
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.providers import Provider, ProviderNotConfigured
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import to_number, to_text

builtin = REGISTRY.builtin

MAX_IMAGE_BYTES = 10 * 1024 * 1024


async def configured(ctx: Context, service: str) -> Provider:
    """The instance's provider for ``service``, before any work is done for it; or ``provider_not_configured``."""
    provider = None if ctx.providers is None else await ctx.providers.get(service)
    if provider is None:
        raise ProviderNotConfigured(service)
    return provider


async def provide(ctx: Context, service: str, action: str, arguments: dict[str, Any]) -> Any:
    if ctx.providers is None:
        raise ProviderNotConfigured(service)
    return ctx.budget.check_value(await ctx.providers.call(service, action, arguments, ctx.budget))


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Fault(f"{what} takes an object of fields, not {to_text(value)!r}")
    return value


async def _image(ctx: Context, file: Any) -> bytes:
    data = await ctx.need_files().read(to_text(file), MAX_IMAGE_BYTES)
    if not data:
        raise Fault(f"{to_text(file)} is empty")
    return data


@builtin("sendTemplateTo", "to, template, data?", group="conversation")
async def send_template_to(ctx: Context, to: Any, template: Any, data: Any = None) -> Any:
    """Send a registered message template (WhatsApp-style) to a mobile, filled with data: the messaging provider."""
    fields = {} if data is None else _object(data, "sendTemplateTo")
    arguments = {"to": to_text(to), "template": to_text(template), "data": fields}
    return await provide(ctx, "messaging", "template", arguments)


@builtin("pay", "to, amount, description?", group="conversation")
async def pay(ctx: Context, to: Any, amount: Any, description: Any = None) -> Any:
    """Ask for a payment of ``amount`` from someone: the payments provider's answer (a link, a reference)."""
    value = to_number(amount, "an amount")
    if value <= 0:
        raise Fault("a payment's amount is more than 0")
    arguments = {"to": to_text(to), "amount": value, "description": to_text(description)}
    return await provide(ctx, "payments", "pay", arguments)


@builtin("createLead", "lead", group="data")
async def create_lead(ctx: Context, lead: Any) -> Any:
    """Record a lead (name, e-mail, mobile... as an object) in the instance's CRM."""
    return await provide(ctx, "crm", "create_lead", {"lead": _object(lead, "createLead")})


@builtin("createDeal", "deal", group="data")
async def create_deal(ctx: Context, deal: Any) -> Any:
    """Open a deal (an object of its fields) in the instance's CRM."""
    return await provide(ctx, "crm", "create_deal", {"deal": _object(deal, "createDeal")})


@builtin("findContact", "query", group="data")
async def find_contact(ctx: Context, query: Any) -> Any:
    """Contacts of the instance's CRM matching a name, e-mail or phone."""
    text = to_text(query).strip()
    if not text:
        raise Fault("findContact needs something to look for")
    return await provide(ctx, "crm", "find_contact", {"query": text})


@builtin("getActiveTasks", "owner?", group="data")
async def active_tasks(ctx: Context, owner: Any = None) -> Any:
    """The open tasks of the instance's CRM (of one owner, if named)."""
    return await provide(ctx, "crm", "active_tasks", {"owner": to_text(owner)})


@builtin("getStock", "symbol", group="data")
async def get_stock(ctx: Context, symbol: Any) -> Any:
    """A stock's quote by its symbol: the stocks provider's answer."""
    text = to_text(symbol).strip().upper()
    if not text or not all(c.isalnum() or c in ".-^" for c in text):
        raise Fault(f"{text!r} is not a stock symbol")
    return await provide(ctx, "stocks", "quote", {"symbol": text})


@builtin("seeCaption", "file", group="files")
async def see_caption(ctx: Context, file: Any) -> Any:
    """A caption of an image of the instance's files (what it shows): the vision provider."""
    await configured(ctx, "vision")
    image = await _image(ctx, file)
    return await provide(ctx, "vision", "caption", {"image": base64.b64encode(image).decode(), "name": to_text(file)})


@builtin("getOCR", "file, language?", group="files", aliases=("seeText",))
async def get_ocr(ctx: Context, file: Any, language: Any = None) -> Any:
    """The text in an image of the instance's files: Tesseract where installed, or the instance's ocr provider."""
    provider = await configured(ctx, "ocr")
    image = await _image(ctx, file)
    lang = to_text(language) or None
    if provider.kind == "webhook":
        arguments: dict[str, Any] = {"image": base64.b64encode(image).decode(), "name": to_text(file), "language": lang}
    else:
        arguments = {"image": image, "language": lang}
    return await provide(ctx, "ocr", "ocr", arguments)


@builtin("tweet", "text", group="conversation")
async def tweet(ctx: Context, text: Any) -> Any:
    """Post a text on the instance's social account: the social provider."""
    body = to_text(text).strip()
    if not body:
        raise Fault("tweet needs a text")
    return await provide(ctx, "social", "post", {"text": body})


@builtin("rewrite", "text, instructions?", group="text")
async def rewrite(ctx: Context, text: Any, instructions: Any = None) -> Any:
    """The text rewritten by the instance's language model (clearer, or as the instructions say)."""
    return await provide(ctx, "llm", "rewrite", {"text": to_text(text), "instructions": to_text(instructions)})


@builtin("translate", "text, language", group="text")
async def translate(ctx: Context, text: Any, language: Any) -> Any:
    """The text in another language: the translation provider."""
    return await provide(ctx, "translation", "translate", {"text": to_text(text), "language": to_text(language)})
