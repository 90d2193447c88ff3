"""Time-limited TURN credentials (the "TURN REST API" scheme coturn checks with ``use-auth-secret``).

A client gets a username ``<unix expiry>:<id>`` and the password
``base64(HMAC-SHA1(secret, username))``; coturn recomputes the password from its own
copy of the secret and refuses a username whose expiry has passed. So the node hands
out credentials without ever handing out the secret, and a leaked credential stops
working on its own. The ``<id>`` is an opaque session id (a participant's, a WHIP or
WHEP session's), never the person's identity: coturn logs usernames.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

# turn:host[:port][?transport=udp|tcp], turns:..., stun:host[:port] (RFC 7064/7065); IPv6 hosts in brackets.
_URL = re.compile(
    r"^(?P<scheme>turns?|stuns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


def parse_ice_urls(value: str) -> tuple[str, ...]:
    """The comma-separated ``GBMEDIA_TURN_URLS``, each checked (ValueError naming the bad one)."""
    urls = tuple(item.strip() for item in value.split(",") if item.strip())
    for url in urls:
        match = _URL.match(url)
        if match is None:
            raise ValueError(
                f"{url!r} is not a TURN or STUN URL; use e.g. turn:turn.example.com:3478?transport=udp, "
                "turns:turn.example.com:5349?transport=tcp"
            )
        if match["port"] is not None and not 0 < int(match["port"]) < 65536:
            raise ValueError(f"{url!r}: the port must be within 1-65535")
        if match["scheme"] == "turns" and match["transport"] == "udp":
            raise ValueError(f"{url!r}: turns: runs over TCP (TLS); use ?transport=tcp")
    return urls


def turn_password(secret: str, username: str) -> str:
    """coturn's ``use-auth-secret`` password for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class IceServers:
    """The ICE servers one client may use, with its credential, valid until ``expires_at`` (unix seconds)."""

    urls: tuple[str, ...]
    username: str
    credential: str
    expires_at: int

    def to_json(self) -> list[dict[str, Any]]:
        """As ``RTCConfiguration.iceServers`` takes them (one entry: every URL shares the credential)."""
        if not self.urls:
            return []
        return [{"urls": list(self.urls), "username": self.username, "credential": self.credential}]

    def link_headers(self) -> list[str]:
        """RFC 9725 ``Link`` header values, one per URL (section 4.6)."""
        return [
            f'<{url}>; rel="ice-server"; username="{_quoted(self.username)}"; '
            f'credential="{_quoted(self.credential)}"; credential-type="password"'
            for url in self.urls
        ]


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class TurnCredentials:
    """Issues credentials for the TURN servers at ``urls`` that share ``secret``."""

    urls: tuple[str, ...]
    secret: str
    ttl_seconds: int

    def issue(self, session_id: str, now: float | None = None) -> IceServers:
        """A credential for one session, valid ``ttl_seconds`` from ``now`` (default: the clock)."""
        expires_at = int(time.time() if now is None else now) + self.ttl_seconds
        username = f"{expires_at}:{_username_part(session_id)}"
        return IceServers(self.urls, username, turn_password(self.secret, username), expires_at)


def _username_part(session_id: str) -> str:
    """The id as coturn and Link headers carry it: no separator, quote or control character, bounded."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", session_id)[:64]
    return cleaned or "client"
