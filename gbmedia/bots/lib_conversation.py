"""Built-ins that speak to people and change the run's settings: TALK, SEND, TRANSFER, SET..."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault, PoliteStop
from gbmedia.bots.limits import OverLimit
from gbmedia.bots.providers import ProviderNotConfigured
from gbmedia.bots.registry import REGISTRY
from gbmedia.bots.values import to_number, to_text

builtin = REGISTRY.builtin


@builtin("talk", "text...", group="conversation", statement_only=True)
async def talk(ctx: Context, *parts: Any) -> None:
    """Say something to the user (TALK a, b says them joined by a space)."""
    await ctx.port.talk(" ".join(to_text(p) for p in parts))


async def deliver(ctx: Context, service: str, action: str, channel: str, to: str, payload: dict[str, Any]) -> Any:
    """Send through the instance's provider for ``service`` (gbmedia/bots/providers.py).

    A run with no providers at all (``gbmedia bot run``, a test's MemoryPort) hands it to
    its port, which records it; on a node an unconfigured service is a
    ``provider_not_configured`` error, never a silent success.
    """
    if ctx.providers is None:
        await ctx.port.send(channel, to, payload)
        return None
    answer = await ctx.providers.call(service, action, {"to": to, **payload}, ctx.budget)
    await ctx.port.log("info", f"{action} to {to or 'the user'} through the {service} provider")
    return answer


@builtin("talkTo", "to, text", group="conversation", statement_only=True)
async def talk_to(ctx: Context, to: Any, text: Any) -> Any:
    """Say something to another person (by mobile or id) on their channel: the messaging provider."""
    return await deliver(ctx, "messaging", "talk", "talk", to_text(to), {"text": to_text(text)})


@builtin("sendSms", "to, text", group="conversation", statement_only=True)
async def send_sms(ctx: Context, to: Any, text: Any) -> Any:
    """Send a text message to a mobile number: the sms provider."""
    return await deliver(ctx, "sms", "send", "sms", to_text(to), {"text": to_text(text)})


@builtin("sendMail", "to, subject, body", group="conversation", statement_only=True)
async def send_mail(ctx: Context, to: Any, subject: Any, body: Any) -> Any:
    """Send an e-mail: the mail provider (SMTP, or a webhook)."""
    address = to_text(to).strip()
    if "@" not in address or any(c in address for c in " \r\n,;<>"):
        raise Fault(f"{address!r} is not an e-mail address")
    return await deliver(ctx, "mail", "send", "mail", address, {"subject": to_text(subject), "body": to_text(body)})


MAX_SENT_FILE_BYTES = 10 * 1024 * 1024


async def _send_file(ctx: Context, to: str, file: Any, caption: Any) -> Any:
    """A file of the instance, its bytes in base64, through the messaging provider (the port records it without one)."""
    payload: dict[str, Any] = {"file": to_text(file), "caption": to_text(caption)}
    if ctx.providers is not None:
        if await ctx.providers.get("messaging") is None:
            raise ProviderNotConfigured("messaging")
        data = await ctx.need_files().read(payload["file"], MAX_SENT_FILE_BYTES)
        payload["data"] = base64.b64encode(data).decode()
    return await deliver(ctx, "messaging", "send_file", "file", to, payload)


@builtin("sendFile", "file, caption?", group="conversation", statement_only=True)
async def send_file(ctx: Context, file: Any, caption: Any = None) -> Any:
    """Send a file of the instance (its path) to the run's user, with an optional caption: the messaging provider."""
    user = ctx.port.user
    return await _send_file(ctx, user.mobile or user.id if user is not None else "", file, caption)


@builtin("sendFileTo", "to, file, caption?", group="conversation", statement_only=True)
async def send_file_to(ctx: Context, to: Any, file: Any, caption: Any = None) -> Any:
    """Send a file of the instance to another person: the messaging provider."""
    return await _send_file(ctx, to_text(to), file, caption)


@builtin("transferTo", "to?", group="conversation", statement_only=True)
async def transfer_to(ctx: Context, to: Any = None) -> None:
    """Hand the conversation to a human member of the instance (anyone on duty without an argument)."""
    await ctx.port.transfer(None if to is None else to_text(to))


@builtin("gotoDialog", "dialog", group="conversation", statement_only=True)
async def goto_dialog(ctx: Context, dialog: Any) -> None:
    """End this dialog and start another in the same conversation."""
    name = to_text(dialog).strip()
    if not name:
        raise Fault("GO TO needs a dialog name")
    ctx.goto = name


@builtin("wait", "seconds", group="conversation", statement_only=True)
async def wait(ctx: Context, seconds: Any) -> None:
    """Pause the run (counts against its wall-time limit)."""
    delay = to_number(seconds)
    if delay < 0:
        raise Fault("WAIT takes a number of seconds, 0 or more")
    left = ctx.budget.remaining_seconds()
    if delay > left:
        await asyncio.sleep(left)
        raise OverLimit("seconds", ctx.limits.max_seconds)
    await asyncio.sleep(delay)


@builtin("log", "text", group="conversation", statement_only=True)
async def log(ctx: Context, text: Any) -> None:
    """A line in the instance's log, for the operator."""
    await ctx.port.log("info", to_text(text))


@builtin("debug", "text", group="conversation", statement_only=True)
async def debug(ctx: Context, text: Any) -> None:
    """A debug line in the instance's log."""
    await ctx.port.log("debug", to_text(text))


REFUSED = {
    "en": "Sorry, you are not allowed to do this.",
    "pt": "Desculpe, você não tem permissão para isso.",
    "es": "Lo siento, no tiene permiso para esto.",
}


@builtin("allowRole", "role", group="conversation", statement_only=True)
async def allow_role(ctx: Context, role: Any) -> None:
    """Go on only if the user has this role; otherwise tell them politely and end the run."""
    wanted = to_text(role).strip().lower()
    user = ctx.port.user
    if user is None or wanted not in {r.lower() for r in user.roles}:
        raise PoliteStop(REFUSED.get(ctx.language, REFUSED["en"]))


@builtin("userOf", "name", group="conversation")
async def user_of(ctx: Context, name: Any) -> dict[str, Any] | None:
    """Another person of the instance (name, mobile, email), found by name, mobile or e-mail."""
    return await ctx.port.user_of(to_text(name))


@builtin("setParam", "name, value", group="settings", statement_only=True)
async def set_param(ctx: Context, name: Any, value: Any) -> None:
    """Remember a setting for this user, across runs."""
    await ctx.port.set_param(to_text(name), value)


@builtin("set", "setting, value", group="settings", statement_only=True)
def set_(ctx: Context, setting: Any, value: Any) -> None:
    """Change a setting of the run: LANGUAGE, FILTER, MAX LINES, OUTPUT, PAGE MODE, HTTP USERNAME..."""
    ctx.settings[to_text(setting).upper()] = value


@builtin("setHeader", "name, value", group="http", statement_only=True)
def set_header(ctx: Context, name: Any, value: Any) -> None:
    """An HTTP header sent with this run's later GET, POST and PUT."""
    key = to_text(name).strip()
    if not key or any(c in key for c in ":\r\n") or any(c in to_text(value) for c in "\r\n"):
        raise Fault("an HTTP header name or value cannot hold ':' or line breaks")
    headers = dict(ctx.settings.get("HEADERS") or {})
    headers[key] = to_text(value)
    ctx.settings["HEADERS"] = headers


@builtin("getConfig", "name", group="settings")
def get_config(ctx: Context, name: Any) -> Any:
    """A value of the instance's configuration (bots.params.<name>, set by the operator)."""
    params = (ctx.config.get("bots") or {}).get("params") or {}
    key = to_text(name)
    if key in params:
        return params[key]
    wanted = key.casefold()
    return next((v for k, v in params.items() if k.casefold() == wanted), None)
