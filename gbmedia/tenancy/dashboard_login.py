"""One-time dashboard login links: from the line ``gbmedia serve`` prints into the dashboard.

A new operator should not have to find ``operator.token`` and paste it. The node
prints ``<url>/web/dashboard/#login=<code>``: the code rides in the fragment, which
browsers never send to a server or put in a ``Referer``, and the page trades it for
the operator token with ``POST /dashboard/login`` and then removes it from the address
bar. The code works once and for :data:`LOGIN_TTL_SECONDS`; the long-lived operator
token never appears in a URL (docs/security.md).

Only the code's SHA-256 is stored, in ``<data_dir>/dashboard.login`` (mode 0600), so
the workers of ``gbmedia serve --workers N`` and ``gbmedia dashboard`` (a new link for
a running node) share it. Redeeming unlinks the file: of two browsers racing with the
same code, one gets the token. A wrong code leaves the file alone, so nobody can burn
the operator's link by guessing (a 32-byte code is not guessed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gbmedia.errors import unauthorized
from gbmedia.http.responses import json_response, read_model

LOGIN_FILE = "dashboard.login"
LOGIN_TTL_SECONDS = 3600  # long enough to open a link printed at start; short enough not to linger
DASHBOARD_PAGE = "/web/dashboard/"


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def issue_code(data_dir: Path, *, now: Callable[[], float] = time.time, ttl: float = LOGIN_TTL_SECONDS) -> str:
    """A fresh code; it replaces any earlier one (only the newest printed link works)."""
    code = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOGIN_FILE
    staging = data_dir / f".{LOGIN_FILE}.{secrets.token_hex(4)}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"sha256": _digest(code), "expires_at": now() + ttl}, handle)
    os.replace(staging, path)  # atomic: a redeemer reads the old file or the new, never half of one
    return code


def login_link(base_url: str, code: str) -> str:
    return f"{base_url.rstrip('/')}{DASHBOARD_PAGE}#login={code}"


def redeem_code(data_dir: Path, code: str, *, now: Callable[[], float] = time.time) -> None:
    """Accept ``code`` once, or raise 401 ``login_code_invalid`` / ``login_code_expired``."""
    path = data_dir / LOGIN_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        expected, expires_at = str(stored["sha256"]), float(stored["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        raise _invalid() from None
    if not hmac.compare_digest(_digest(code), expected):
        raise _invalid()
    try:
        path.unlink()  # exactly one redeemer of this file succeeds
    except FileNotFoundError:
        raise _invalid() from None
    if now() > expires_at:
        raise unauthorized("login_code_expired", "this login link has expired; run `gbmedia dashboard` for a new one")


def _invalid() -> Exception:
    return unauthorized(
        "login_code_invalid", "this login link is unknown or was used already; run `gbmedia dashboard` for a new one"
    )


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True)
class DashboardLogin:
    """What ``POST /dashboard/login`` needs: where codes live and what they are traded for."""

    data_dir: Path
    operator_token: str


DASHBOARD_LOGIN: web.AppKey[DashboardLogin] = web.AppKey("dashboard_login", DashboardLogin)


async def login(request: web.Request) -> web.StreamResponse:
    """Trade a one-time code for the operator token (outside ``/api/``: the caller has no token yet)."""
    service = request.app[DASHBOARD_LOGIN]
    body = await read_model(request, LoginRequest)
    await asyncio.to_thread(redeem_code, service.data_dir, body.code)
    return json_response({"token": service.operator_token, "kind": "operator"}, headers={"Cache-Control": "no-store"})


def register(app: web.Application, service: DashboardLogin) -> None:
    app[DASHBOARD_LOGIN] = service
    app.router.add_post("/dashboard/login", login)
