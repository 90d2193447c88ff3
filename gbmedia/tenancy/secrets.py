"""Encryption at rest for instance API secrets, and generation of credentials.

API secrets sign HMAC access tokens, so the server must read them back: they cannot
be hashed, only encrypted. The node's secret key (``GBMEDIA_SECRET_KEY``, a Fernet
key) does that; a single node with none configured generates one into its data
directory so a restart can still read what it wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_ALPHABET = string.ascii_letters + string.digits


def new_api_key() -> str:
    """A public key id, recognisable in logs like LiveKit's (``API`` + 12 chars)."""
    return "API" + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def new_api_secret() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_file_secret(path: Path, make: Callable[[], str]) -> str:
    """Read a secret from ``path`` or create it there with mode 0600."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


class SecretBox:
    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._fernet = Fernet(self._key)

    @classmethod
    def for_node(cls, configured: str | None, data_dir: Path) -> SecretBox:
        key = configured or load_or_create_file_secret(data_dir / "secret.key", lambda: Fernet.generate_key().decode())
        return cls(key)

    def derive(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (signing bots' share links...): HMAC of the node key, never the key."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def seal(self, data: bytes) -> bytes:
        """Authenticated encryption with its issue time (a dialog run token's body)."""
        return self._fernet.encrypt(data)

    def unseal(self, token: bytes, ttl_seconds: int) -> bytes:
        """What :meth:`seal` sealed, if younger than ``ttl_seconds``; raises ``InvalidToken`` otherwise."""
        return self._fernet.decrypt(token, ttl=ttl_seconds)

    def decrypt(self, ciphertext: bytes) -> str:
        """Raises :class:`SecretKeyMismatch` when another node key encrypted it."""
        try:
            return self._fernet.decrypt(bytes(ciphertext)).decode()
        except InvalidToken:
            raise SecretKeyMismatch(
                "an API secret cannot be decrypted: GBMEDIA_SECRET_KEY differs from the key that stored it"
            ) from None


class SecretKeyMismatch(RuntimeError):
    pass
