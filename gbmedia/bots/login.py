"""HEAR ... AS LOGIN: the person a bot talks to signs in, and the answer is who they verifiably are.

A chat user may be anyone the conversation let in (a visitor of a public page, a phone
number on another channel). ``HEAR who AS LOGIN`` gives them a one-time code (8
letters and digits, 10 minutes) in the conversation; they sign in where the instance's
users sign in (its app, holding an access token the instance's API key signed) and that
app sends ``POST /api/v1/bots/login`` with the code and their token. The code is kept only
as its SHA-256, bound to the instance, the conversation and the run's user; the token's
identity becomes the verified identity. The person's next message answers the HEAR:
``who`` gets ``{identity, name, email}`` (name and e-mail from the instance's
``bot_users`` when it knows them); before they have signed in, the bot gives a new code
and asks again. A code is used once, by one instance's token, before it expires.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud or typed from a phone
CODE_LENGTH = 8
TTL_MINUTES = 10

PROMPT = {
    "en": "Please sign in with this one-time code: {code} (it expires in 10 minutes). Write here once you have.",
    "pt": "Entre com este código de uso único: {code} (vale por 10 minutos). Escreva aqui quando tiver entrado.",
    "es": "Inicia sesión con este código de un solo uso: {code} (vence en 10 minutos). Escribe aquí al terminar.",
}
NOT_YET = {
    "en": "You have not signed in yet. Your new code: {code}. Write here once you have signed in.",
    "pt": "Você ainda não entrou. Seu novo código: {code}. Escreva aqui quando tiver entrado.",
    "es": "Todavía no has iniciado sesión. Tu nuevo código: {code}. Escribe aquí cuando lo hayas hecho.",
}


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.strip().upper().replace("-", "").replace(" ", "").encode()).digest()


def message(table: dict[str, str], language: str, code: str) -> str:
    return table.get(language, table["en"]).format(code=code)


@dataclass
class PgLogins:
    """The pending and verified codes of one run's user, in PostgreSQL (``bot_logins``)."""

    pool: asyncpg.Pool
    instance_id: uuid.UUID
    conversation_id: uuid.UUID
    user: str

    async def start(self) -> str:
        """A new code for the run's user (their earlier one, if any, no longer works)."""
        code = new_code()
        await self.pool.execute(
            f"""INSERT INTO bot_logins (code_hash, instance_id, conversation_id, user_identity, expires_at)
                VALUES ($1, $2, $3, $4, now() + interval '{TTL_MINUTES} minutes')
                ON CONFLICT (conversation_id, user_identity) DO UPDATE
                   SET code_hash = EXCLUDED.code_hash, expires_at = EXCLUDED.expires_at,
                       verified_identity = NULL, verified_at = NULL, created_at = now()""",
            code_hash(code),
            self.instance_id,
            self.conversation_id,
            self.user,
        )
        return code

    async def result(self) -> dict[str, Any] | None:
        """Who signed in with the user's code (used up now), or None while nobody has."""
        row = await self.pool.fetchrow(
            """DELETE FROM bot_logins
                WHERE conversation_id = $1 AND user_identity = $2 AND instance_id = $3
                  AND verified_identity IS NOT NULL
            RETURNING verified_identity""",
            self.conversation_id,
            self.user,
            self.instance_id,
        )
        if row is None:
            return None
        identity = row["verified_identity"]
        person = await self.pool.fetchrow(
            "SELECT display_name, email FROM bot_users WHERE instance_id = $1 AND system_id = $2",
            self.instance_id,
            identity,
        )
        return {
            "identity": identity,
            "name": (person["display_name"] if person else None) or "",
            "email": (person["email"] if person else None) or "",
        }


async def sign_in(pool: asyncpg.Pool, instance_id: uuid.UUID, code: str, identity: str) -> dict[str, Any] | None:
    """Mark the instance's pending ``code`` as signed in by ``identity``: its conversation, or None (no such
    code: unknown, expired, used, or another instance's)."""
    row = await pool.fetchrow(
        """UPDATE bot_logins SET verified_identity = $3, verified_at = now()
            WHERE code_hash = $1 AND instance_id = $2 AND verified_identity IS NULL AND expires_at > now()
        RETURNING conversation_id""",
        code_hash(code),
        instance_id,
        identity,
    )
    return None if row is None else {"identity": identity, "conversation_id": str(row["conversation_id"])}
