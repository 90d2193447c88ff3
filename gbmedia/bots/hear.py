"""Checking a HEAR answer against its kind, and the re-ask message when it does not fit.

``validate`` gives the value the variable receives (an INTEGER as a number, a DATE as
ISO, a BOOLEAN as true/false, a menu answer as the option as written) or None when
the answer does not fit; the run then re-asks with ``reask_message`` in the run's
language and waits again.

``HEAR x AS QRCODE`` takes a picture: ``prepare`` decodes the QR code in it (OpenCV's
QRCodeDetector, in a worker thread) before ``validate`` sees the answer, and a picture
without a readable code is re-asked like any misfit answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gbmedia.bots.errors import Fault
from gbmedia.bots.lib_data import field_of
from gbmedia.bots.lib_dates import iso, parse_date
from gbmedia.bots.values import fold, to_number, to_text

if TYPE_CHECKING:
    from gbmedia.bots.context import Context

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HOUR = re.compile(r"^(\d{1,2})[:h](\d{2})$")
YES = {"yes", "y", "sim", "s", "si", "sí", "ok", "true", "claro", "yeah", "sure"}
NO = {"no", "n", "nao", "não", "false", "nope"}
LANGUAGES = {
    "en": {"english", "inglês", "ingles", "inglés", "en"},
    "pt": {"portuguese", "português", "portugues", "pt"},
    "es": {"spanish", "espanhol", "español", "espanol", "es"},
    "fr": {"french", "francês", "frances", "français", "francés", "fr"},
    "de": {"german", "alemão", "alemao", "deutsch", "alemán", "de"},
    "it": {"italian", "italiano", "it"},
}
FORMS = (
    "EMAIL",
    "INTEGER",
    "NUMBER",
    "BOOLEAN",
    "NAME",
    "DATE",
    "HOUR",
    "MONEY",
    "ZIPCODE",
    "LANGUAGE",
    "MOBILE",
    "PHONE",
    "FILE",
    "QRCODE",
)

REASK = {
    "en": {
        "EMAIL": "Please type a valid e-mail address.",
        "INTEGER": "Please type a whole number.",
        "NUMBER": "Please type a number.",
        "BOOLEAN": "Please answer yes or no.",
        "NAME": "Please type your full name (first and last name).",
        "DATE": "Please type a date, like {example}.",
        "HOUR": "Please type a time, like 14:30.",
        "MONEY": "Please type an amount, like 1,234.56.",
        "ZIPCODE": "Please type a valid zip code.",
        "LANGUAGE": "Please name a language, like English or Portuguese.",
        "MOBILE": "Please type a valid phone number.",
        "FILE": "Please send a file.",
        "QRCODE": "Please send a picture of a QR code.",
        "MENU": "Please choose one of: {options}.",
    },
    "pt": {
        "EMAIL": "Por favor, digite um e-mail válido.",
        "INTEGER": "Por favor, digite um número inteiro.",
        "NUMBER": "Por favor, digite um número.",
        "BOOLEAN": "Por favor, responda sim ou não.",
        "NAME": "Por favor, digite seu nome completo (nome e sobrenome).",
        "DATE": "Por favor, digite uma data, como {example}.",
        "HOUR": "Por favor, digite um horário, como 14:30.",
        "MONEY": "Por favor, digite um valor, como 1.234,56.",
        "ZIPCODE": "Por favor, digite um CEP válido.",
        "LANGUAGE": "Por favor, diga um idioma, como Português ou Inglês.",
        "MOBILE": "Por favor, digite um telefone válido.",
        "FILE": "Por favor, envie um arquivo.",
        "QRCODE": "Por favor, envie uma foto de um QR code.",
        "MENU": "Por favor, escolha uma opção: {options}.",
    },
}


def options_of(values: list[Any]) -> list[str]:
    """A menu's options: quoted texts, or a list (of texts, or of rows: their first field)."""
    options: list[str] = []
    for value in values:
        if isinstance(value, list):
            for item in value:
                options.append(
                    to_text(next(iter(item.values()), "")) if isinstance(item, dict) and item else to_text(item)
                )
        else:
            options.append(to_text(value))
    return options


UPLOADS = "uploads/"  # where UPLOAD stores a file the user sent: the only files HEAR AS QRCODE reads by name


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a QR code in the user's picture says (None: no code was found or read)."""

    text: str | None


def _file_bytes(answer: Any) -> bytes | None:
    """The bytes of a sent file: HEAR AS FILE's {name, data: base64}, or that object as JSON text."""
    if isinstance(answer, str) and answer.lstrip().startswith("{"):
        try:
            answer = json.loads(answer)
        except ValueError:
            return None
    if not isinstance(answer, dict) or not isinstance(field_of(answer, "data"), str):
        return None
    try:
        return base64.b64decode(field_of(answer, "data"), validate=True)
    except (binascii.Error, ValueError):
        return None


async def prepare(kind: str, answer: Any, ctx: Context) -> Any:
    """The answer as ``validate`` takes it: for QRCODE, the decoded QR code of the picture sent.

    The picture is a sent file (as HEAR AS FILE gets one), or the name of one an earlier
    UPLOAD stored under ``uploads/``: only there, so a user cannot have the bot read its
    other files by naming them.
    """
    if kind != "QRCODE":
        return answer
    data = _file_bytes(answer)
    named = answer.strip() if isinstance(answer, str) else ""
    if data is None and named.startswith(UPLOADS) and ctx.files is not None:
        try:
            data = await ctx.files.read(named, ctx.limits.max_value_bytes)
        except Fault:
            data = None
    if data is None or len(data) > ctx.limits.max_value_bytes:
        return Decoded(None)
    from gbmedia.bots import documents, images  # OpenCV and Pillow: loaded when a QR code is first read

    limit = images.pixel_limit(ctx.limits.max_value_bytes)

    def work() -> str | None:
        try:
            return documents.qr_decode(images.decode(data, limit))
        except Fault:
            return None

    return Decoded(await asyncio.to_thread(work))


def validate(kind: str, answer: Any, options: list[str], language: str) -> tuple[bool, Any]:
    """Whether ``answer`` fits ``kind``, and the value the variable then gets."""
    if kind == "QRCODE":
        ok = isinstance(answer, Decoded) and bool(answer.text)
        return ok, answer.text if ok else None
    if kind == "FILE":
        ok = isinstance(answer, dict) and bool(field_of(answer, "name")) and field_of(answer, "data") is not None
        return ok, answer if ok else None
    text = to_text(answer).strip()
    if kind in ("", "TEXT"):
        return True, to_text(answer)
    if not text:
        return False, None
    if kind in ("MENU", "LIST"):
        wanted = fold(text)
        for i, option in enumerate(options, start=1):
            if fold(option) == wanted or text == str(i):
                return True, option
        return False, None
    if kind == "EMAIL":
        return (True, text.lower()) if _EMAIL.match(text) else (False, None)
    if kind in ("INTEGER", "NUMBER", "MONEY"):
        cleaned = text.replace(" ", "")
        if kind == "MONEY":
            cleaned = re.sub(r"^[^\d-]+", "", cleaned)  # a currency sign: R$ 10, $10
            if language in ("pt", "es", "de", "fr", "it"):
                cleaned = cleaned.replace(".", "").replace(",", ".")
            else:
                cleaned = cleaned.replace(",", "")
        if not any(c.isdigit() for c in cleaned):
            return False, None
        try:
            number = to_number(cleaned)
        except Fault:
            return False, None
        if kind == "INTEGER":
            return (True, int(number)) if number == int(number) and "." not in cleaned else (False, None)
        return True, round(number, 2) if kind == "MONEY" else number
    if kind == "BOOLEAN":
        word = fold(text)
        if word in {fold(w) for w in YES}:
            return True, True
        if word in {fold(w) for w in NO}:
            return True, False
        return False, None
    if kind == "NAME":
        words = [w for w in text.split() if any(c.isalpha() for c in w)]
        return (
            (True, " ".join(text.split())) if len(words) >= 2 and not any(c.isdigit() for c in text) else (False, None)
        )
    if kind == "DATE":
        try:
            return True, iso(parse_date(text, language))
        except Fault:
            return False, None
    if kind == "HOUR":
        match = _HOUR.match(text.lower())
        if match and int(match[1]) < 24 and int(match[2]) < 60:
            return True, f"{int(match[1]):02d}:{match[2]}"
        return False, None
    if kind == "ZIPCODE":
        digits = re.sub(r"[\s-]", "", text)
        return (True, text) if digits.isdigit() and len(digits) in (5, 8, 9) else (False, None)
    if kind == "LANGUAGE":
        word = fold(text)
        for code, names in LANGUAGES.items():
            if word in {fold(n) for n in names}:
                return True, code
        return False, None
    if kind in ("MOBILE", "PHONE"):
        digits = re.sub(r"[\s().-]", "", text)
        plus = digits.startswith("+")
        digits = digits.lstrip("+")
        return (True, ("+" if plus else "") + digits) if digits.isdigit() and 8 <= len(digits) <= 15 else (False, None)
    raise Fault(f"HEAR AS {kind} is not available on this server")  # pragma: no cover - the parser refuses it


def reask_message(kind: str, options: list[str], language: str) -> str:
    messages = REASK.get(language, REASK["en"])
    key = "MENU" if kind in ("MENU", "LIST") else ("MOBILE" if kind == "PHONE" else kind)
    example = "31/12/2026" if language in ("pt", "es", "fr", "de", "it") else "12/31/2026"
    return messages[key].format(options=", ".join(options), example=example)
