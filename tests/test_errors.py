"""ApiError: a stable code, an HTTP status and a JSON body."""

from __future__ import annotations

import pytest

from gbmedia.errors import ApiError, bad_request, conflict, forbidden, not_found, unauthorized


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
