"""SHARE FOLDER's links: a folder of an instance's bot files, readable by anyone with the link until it expires.

The link carries what it grants (instance, folder, expiry) and an HMAC-SHA256 of that
under a key derived from the node's secret key (``GBMEDIA_SECRET_KEY``), so any node
of the cluster checks it without a database row, and changing a byte of it (another
folder, a later expiry) breaks the signature. Nothing is stored: a link cannot be
revoked before it expires, which is why its lifetime is bounded (a week at most).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from gbmedia.errors import ApiError

PURPOSE = "gbmedia bots share links v1"
MAX_SECONDS = 7 * 24 * 3600
ROUTE = "/shared/"  # outside /api/: the link itself is the credential (no Authorization, like /hls/)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Grant:
    instance_id: str
    folder: str
    expires: int  # Unix seconds


class ShareLinks:
    """Signs and checks share links with one key; ``base_url`` (GBMEDIA_PUBLIC_URL) makes them absolute."""

    def __init__(self, key: bytes, base_url: str = "") -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def token(self, grant: Grant) -> str:
        payload = _b64(json.dumps({"i": grant.instance_id, "f": grant.folder, "e": grant.expires}).encode())
        return f"{payload}.{self._mac(payload)}"

    def link(self, instance_id: str, folder: str, seconds: int, now: float | None = None) -> str:
        """The URL of ``folder``'s listing, valid ``seconds`` from now."""
        expires = int((time.time() if now is None else now) + seconds)
        return f"{self.base_url}{ROUTE}{self.token(Grant(instance_id, folder, expires))}"

    def check(self, token: str, now: float | None = None) -> Grant:
        """The grant a token carries; 403 ``share_link_invalid`` for a forged one, ``share_link_expired`` after."""
        payload, _, mac = token.partition(".")
        if not mac or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            raise ApiError(403, "share_link_invalid", "this share link is not valid")
        try:
            fields = json.loads(_unb64(payload))
            grant = Grant(str(fields["i"]), str(fields["f"]), int(fields["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError):  # pragma: no cover - only the key signs payloads
            raise ApiError(403, "share_link_invalid", "this share link is not valid") from None
        if (time.time() if now is None else now) >= grant.expires:
            raise ApiError(403, "share_link_expired", "this share link has expired")
        return grant
