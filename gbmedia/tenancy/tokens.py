"""JWT access tokens: who a participant is and what it may do in which room.

Modelled on LiveKit's AccessToken/VideoGrant: ``iss`` is the API key whose secret
signs the token (HS256), ``sub`` the participant identity, ``name`` the display name,
and ``grants`` the permissions. A token is verified against the instance secret
that the API key names, so one instance's secret can never validate another's token.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

import jwt

from gbmedia.errors import ApiError, unauthorized

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10


@dataclass(frozen=True)
class Grants:
    """What a token may do.

    Two powers are kept apart on purpose: ``room_admin`` moderates the one room the
    token names (``room``), which is what a meeting's host carries in a join link;
    ``instance_admin`` administers the whole instance (API keys, tokens, settings,
    audit log, every room and conversation) and is never put in a link, because a
    link travels in chats, e-mails and browser histories.
    """

    room: str | None = None
    room_join: bool = False
    can_publish: bool = False
    can_subscribe: bool = False
    can_publish_data: bool = False
    room_admin: bool = False
    room_create: bool = False
    room_record: bool = False
    hidden: bool = False
    instance_admin: bool = False

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "room"]

    @classmethod
    def participant(cls, room: str) -> Grants:
        """What a normal meeting participant gets."""
        return cls(room=room, room_join=True, can_publish=True, can_subscribe=True, can_publish_data=True)

    @classmethod
    def from_claim(cls, claim: Any) -> Grants:
        if claim is None:
            return cls()
        if not isinstance(claim, dict):
            raise unauthorized("token_malformed", "grants claim must be an object")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in claim.items():
            if key not in known:
                continue  # newer servers may add grants; older ones ignore them
            if key == "room":
                if value is not None and not isinstance(value, str):
                    raise unauthorized("token_malformed", "grants.room must be a string")
            elif not isinstance(value, bool):
                raise unauthorized("token_malformed", f"grants.{key} must be a boolean")
            values[key] = value
        return cls(**values)

    def to_claim(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    def has(self, grant: str) -> bool:
        return bool(getattr(self, grant))

    def moderates(self, room: str) -> bool:
        """Whether the token may moderate the room named ``room`` (close it, remove and mute people)."""
        return self.instance_admin or (self.room_admin and self.room == room)

    def link_refusal(self) -> str | None:
        """Why this token must not travel in a join link, or None when it may."""
        if self.instance_admin:
            return "a token with instance_admin administers the whole instance and is never put in a link"
        return None

    def mint_refusal(self) -> str | None:
        """Why these grants make no token, or None when they do."""
        if self.room_admin and not self.room:
            return "room_admin moderates one room: name it in room (instance_admin administers every room)"
        return None


@dataclass(frozen=True)
class AccessToken:
    api_key: str
    identity: str
    name: str
    grants: Grants
    issued_at: int
    expires_at: int
    token_id: str


def mint_token(
    api_key: str,
    api_secret: str,
    identity: str,
    grants: Grants,
    *,
    name: str | None = None,
    ttl_seconds: int = 6 * 3600,
    now: float | None = None,
) -> str:
    if not identity:
        raise ValueError("identity is required")
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": api_key,
        "sub": identity,
        "name": name or identity,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "grants": grants.to_claim(),
    }
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def unverified_api_key(token: str) -> str:
    """The ``iss`` claim, read before verification to find the signing secret."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise unauthorized("token_malformed", "the token is not a valid JWT") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise unauthorized("token_malformed", "the token has no iss (API key) claim")
    return issuer


def verify_token(token: str, api_secret: str) -> AccessToken:
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iss", "sub"]},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token_expired", "the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise unauthorized("token_not_yet_valid", "the token is not valid yet") from None
    except jwt.InvalidSignatureError:
        raise unauthorized("token_signature_invalid", "the token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise unauthorized("token_malformed", f"the token is invalid: {exc}") from None
    for claim in ("exp", "nbf", "iat"):  # RFC 7519 NumericDate: a number, not a string PyJWT would coerce
        if claim in claims and (isinstance(claims[claim], bool) or not isinstance(claims[claim], int | float)):
            raise unauthorized("token_malformed", f"the token's {claim} is not a number (RFC 7519 NumericDate)")
    identity = claims["sub"]
    if not isinstance(identity, str) or not identity:
        raise unauthorized("token_malformed", "the token has an empty identity (sub)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in identity):
        raise unauthorized("token_malformed", "the token's identity (sub) contains control characters")
    return AccessToken(
        api_key=claims["iss"],
        identity=identity,
        name=str(claims.get("name") or identity),
        grants=Grants.from_claim(claims.get("grants")),
        issued_at=int(claims.get("iat", 0)),
        expires_at=int(claims["exp"]),
        token_id=str(claims.get("jti", "")),
    )


def require_grant(token: AccessToken, grant: str) -> None:
    if not token.grants.has(grant):
        raise ApiError(403, "grant_missing", f"the token lacks the {grant} grant", {"grant": grant})
