"""Dialog run tokens: a credential the node gives a bot run, scoped to its instance, conversation and user.

A dialog hands its token (``getCustomToken``) to an outside system it calls; that system
calls the keyword API back with it (``POST /api/v1/keywords/...``), and what it does
lands in the run's own conversation, as the run's user, and can reach nothing else:
the scope is sealed in the token, never taken from the request.

The token is ``gbrun.`` and a Fernet token (AES-CBC and HMAC-SHA256, with its issue
time) of the scope under the node's secret key (``GBMEDIA_SECRET_KEY``, which every node
of a cluster shares), so any node verifies it and nobody can forge or widen one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from cryptography.fernet import InvalidToken

from gbmedia.errors import unauthorized
from gbmedia.tenancy.secrets import SecretBox

PREFIX = "gbrun."
TTL_SECONDS = 3600  # a run token is for the calls of one turn of a dialog and what it triggers


@dataclass(frozen=True)
class RunScope:
    """What a run token speaks for."""

    instance_id: uuid.UUID
    conversation_id: uuid.UUID | None  # None: a scheduled run (no conversation)
    user: str | None
    dialog: str


class RunTokens:
    def __init__(self, box: SecretBox, ttl_seconds: int = TTL_SECONDS) -> None:
        self.box = box
        self.ttl_seconds = ttl_seconds

    def mint(self, scope: RunScope) -> str:
        claims = {
            "i": str(scope.instance_id),
            "c": str(scope.conversation_id) if scope.conversation_id else None,
            "u": scope.user,
            "d": scope.dialog,
        }
        return PREFIX + self.box.seal(json.dumps(claims).encode()).decode()

    def verify(self, token: str) -> RunScope:
        """The scope of a run token, or 401 ``run_token_invalid``."""
        if not token.startswith(PREFIX):
            raise unauthorized("run_token_invalid", "not a dialog run token")
        try:
            claims = json.loads(self.box.unseal(token[len(PREFIX) :].encode(), self.ttl_seconds))
            return RunScope(
                uuid.UUID(claims["i"]),
                uuid.UUID(claims["c"]) if claims["c"] else None,
                claims["u"],
                str(claims["d"]),
            )
        except (InvalidToken, ValueError, KeyError, TypeError):
            raise unauthorized(
                "run_token_invalid", "the dialog run token does not verify or has expired (it lasts an hour)"
            ) from None


def is_run_token(credential: str) -> bool:
    return credential.startswith(PREFIX)
