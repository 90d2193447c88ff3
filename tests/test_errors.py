"""ApiError: a stable code, an HTTP status and a JSON body; outages as 503s."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from gbmedia.errors import ApiError, bad_request, conflict, forbidden, not_found, outage_error, unauthorized


def test_body_without_details():
    err = ApiError(418, "teapot", "short and stout")
    assert err.details == {}
    assert err.body() == {"error": {"code": "teapot", "message": "short and stout"}}


def test_body_with_details():
    err = ApiError(400, "bad", "nope", {"field": "name", "max": 3})
    assert err.body() == {"error": {"code": "bad", "message": "nope", "details": {"field": "name", "max": 3}}}


def test_str():
    assert str(ApiError(404, "room_not_found", "no room x")) == "room_not_found: no room x"


def test_is_raisable_exception():
    with pytest.raises(ApiError) as info:
        raise bad_request("invalid", "bad input")
    assert isinstance(info.value, Exception)
    assert info.value.code == "invalid"


def test_default_details_are_not_shared():
    a, b = ApiError(400, "a", "a"), ApiError(400, "b", "b")
    a.details["x"] = 1
    assert b.details == {}


def test_bad_request():
    err = bad_request("invalid_name", "name too long", field="name", max=64)
    assert (err.status, err.code, err.message) == (400, "invalid_name", "name too long")
    assert err.details == {"field": "name", "max": 64}
    assert err.body()["error"]["details"] == {"field": "name", "max": 64}


def test_unauthorized():
    err = unauthorized("token_expired", "expired")
    assert (err.status, err.code, err.message, err.details) == (401, "token_expired", "expired", {})
    assert err.body() == {"error": {"code": "token_expired", "message": "expired"}}


def test_forbidden():
    err = forbidden("grant_missing", "no", grant="room_admin")
    assert (err.status, err.code, err.details) == (403, "grant_missing", {"grant": "room_admin"})
    assert forbidden("x", "y").details == {}


def test_not_found():
    err = not_found("room", "standup")
    assert (err.status, err.code, err.message) == (404, "room_not_found", "no room standup")
    assert str(err) == "room_not_found: no room standup"


def test_conflict():
    err = conflict("name_taken", "exists")
    assert (err.status, err.code, err.message, err.details) == (409, "name_taken", "exists", {})


# --- outage_error, on failures the real drivers raise -------------------------------------------


async def test_outage_error_names_the_service_from_what_its_driver_raised(tmp_path: Path):
    missing = tmp_path / "no-server"  # a unix socket directory nobody listens in
    missing.mkdir()
    with pytest.raises(OSError) as refused_pg:
        await asyncpg.connect(f"postgresql://x@/x?host={missing}", timeout=5)
    found = outage_error(refused_pg.value)
    assert found is not None and (found.status, found.code) == (503, "database_unavailable")
    client = aioredis.from_url(f"unix://{missing}/redis.sock", retry=None)
    with pytest.raises(redis.exceptions.ConnectionError) as refused_redis:
        await client.ping()
    await client.aclose()
    found = outage_error(refused_redis.value)
    assert found is not None and (found.status, found.code) == (503, "redis_unavailable")
    # A driver failure re-raised as another is still the outage.
    try:
        raise RuntimeError("wrapped") from refused_pg.value
    except RuntimeError as wrapped:
        assert (found := outage_error(wrapped)) is not None and found.code == "database_unavailable"


def test_the_same_types_raised_elsewhere_are_not_outages():
    """A timeout or a missing file outside the drivers is somebody's bug: a 500, logged with its traceback."""
    assert outage_error(TimeoutError()) is None
    assert outage_error(FileNotFoundError(2, "gone")) is None
    assert outage_error(ValueError("x")) is None


async def test_a_database_out_of_connections_is_unavailable(pg_admin_url: str):
    role = f"o_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw-{role}' CONNECTION LIMIT 0")
        parts = urlsplit(pg_admin_url)
        host = parts.netloc.rpartition("@")[2]
        user_url = urlunsplit(parts._replace(netloc=f"{role}:pw-{role}@{host}"))
        with pytest.raises(asyncpg.exceptions.TooManyConnectionsError) as refused:
            await asyncpg.connect(user_url, timeout=5)
        assert (found := outage_error(refused.value)) is not None and found.code == "database_unavailable"
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
