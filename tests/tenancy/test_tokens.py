"""JWT access tokens: minting, verification, and every way a token is refused."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from gbmedia.errors import ApiError
from gbmedia.tenancy.tokens import (
    LEEWAY_SECONDS,
    AccessToken,
    Grants,
    mint_token,
    require_grant,
    unverified_api_key,
    verify_token,
)

KEY = "APIabcdefghijkl"
SECRET = "s3cret-" + "x" * 40
OTHER_SECRET = "other-" + "y" * 40


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": KEY, "sub": "alice", "iat": now, "nbf": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def assert_refused(token: str, secret: str, status: int, code: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        verify_token(token, secret)
    assert (info.value.status, info.value.code) == (status, code)
    return info.value


# --- grants -------------------------------------------------------------------------


def test_participant_grants():
    g = Grants.participant("standup")
    assert g == Grants(room="standup", room_join=True, can_publish=True, can_subscribe=True, can_publish_data=True)
    assert not g.room_admin and not g.room_create and not g.room_record and not g.hidden


def test_names_lists_boolean_grants_only():
    assert Grants.names() == [
        "room_join",
        "can_publish",
        "can_subscribe",
        "can_publish_data",
        "room_admin",
        "room_create",
        "room_record",
        "hidden",
        "instance_admin",
    ]


def test_to_claim_omits_false_and_none():
    assert Grants().to_claim() == {}
    assert Grants(room_admin=True).to_claim() == {"room_admin": True}
    assert Grants.participant("r").to_claim() == {
        "room": "r",
        "room_join": True,
        "can_publish": True,
        "can_subscribe": True,
        "can_publish_data": True,
    }


def test_from_claim_round_trips_to_claim():
    g = Grants(room="r", room_record=True, hidden=True)
    assert Grants.from_claim(g.to_claim()) == g


def test_from_claim_none_is_no_grants():
    assert Grants.from_claim(None) == Grants()


def test_from_claim_ignores_unknown_keys():
    assert Grants.from_claim({"room": "r", "can_fly": True, "future": {"x": 1}}) == Grants(room="r")


def test_from_claim_accepts_explicit_null_room():
    assert Grants.from_claim({"room": None, "room_join": True}) == Grants(room_join=True)


@pytest.mark.parametrize(
    "claim",
    [
        {"room_join": 1},
        {"room_join": "true"},
        {"can_publish": None},
        {"hidden": []},
        {"room": 5},
        {"room": ["a"]},
        ["room_join"],
        "room_join",
        True,
    ],
)
def test_from_claim_rejects_malformed(claim: Any):
    with pytest.raises(ApiError) as info:
        Grants.from_claim(claim)
    assert (info.value.status, info.value.code) == (401, "token_malformed")


def test_has():
    g = Grants(can_publish=True)
    assert g.has("can_publish")
    assert not g.has("room_admin")


# --- mint / verify ------------------------------------------------------------------


def test_mint_verify_round_trip():
    now = time.time()
    grants = Grants.participant("standup")
    token = mint_token(KEY, SECRET, "alice", grants, name="Alice A.", ttl_seconds=120, now=now)
    verified = verify_token(token, SECRET)
    assert isinstance(verified, AccessToken)
    assert verified.api_key == KEY
    assert verified.identity == "alice"
    assert verified.name == "Alice A."
    assert verified.grants == grants
    assert verified.issued_at == int(now)
    assert verified.expires_at == int(now) + 120
    assert len(verified.token_id) == 32
    int(verified.token_id, 16)


def test_minted_token_is_hs256_with_expected_claims():
    now = time.time()
    token = mint_token(KEY, SECRET, "bob", Grants(room_admin=True), ttl_seconds=60, now=now)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    raw = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert raw["iss"] == KEY
    assert raw["sub"] == "bob"
    assert raw["name"] == "bob"  # defaults to the identity
    assert raw["iat"] == raw["nbf"] == int(now)
    assert raw["exp"] == int(now) + 60
    assert raw["grants"] == {"room_admin": True}


def test_every_token_gets_a_fresh_id():
    a = verify_token(mint_token(KEY, SECRET, "a", Grants()), SECRET)
    b = verify_token(mint_token(KEY, SECRET, "a", Grants()), SECRET)
    assert a.token_id != b.token_id


def test_default_ttl_is_six_hours():
    now = time.time()
    verified = verify_token(mint_token(KEY, SECRET, "a", Grants(), now=now), SECRET)
    assert verified.expires_at - verified.issued_at == 6 * 3600


def test_mint_without_identity_raises():
    with pytest.raises(ValueError, match="identity"):
        mint_token(KEY, SECRET, "", Grants())


def test_expired_token():
    token = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=60, now=time.time() - 3600)
    assert_refused(token, SECRET, 401, "token_expired")


def test_not_yet_valid_token():
    token = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=600, now=time.time() + 3600)
    assert_refused(token, SECRET, 401, "token_not_yet_valid")


def test_clock_skew_within_leeway_passes():
    assert LEEWAY_SECONDS == 10
    future = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=600, now=time.time() + 5)
    assert verify_token(future, SECRET).identity == "alice"
    just_expired = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=60, now=time.time() - 65)
    assert verify_token(just_expired, SECRET).identity == "alice"


def test_clock_skew_beyond_leeway_fails():
    expired = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=60, now=time.time() - 90)
    assert_refused(expired, SECRET, 401, "token_expired")
    future = mint_token(KEY, SECRET, "alice", Grants(), ttl_seconds=600, now=time.time() + 30)
    assert_refused(future, SECRET, 401, "token_not_yet_valid")


def test_wrong_secret():
    token = mint_token(KEY, SECRET, "alice", Grants())
    assert_refused(token, OTHER_SECRET, 401, "token_signature_invalid")


def test_tampered_payload_fails_signature():
    token = mint_token(KEY, SECRET, "alice", Grants())
    header, _, signature = token.split(".")
    forged = jwt.encode(claims(grants={"room_admin": True}), OTHER_SECRET, algorithm="HS256").split(".")[1]
    assert_refused(f"{header}.{forged}.{signature}", SECRET, 401, "token_signature_invalid")


def test_alg_none_is_rejected():
    token = jwt.encode(claims(), None, algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    assert_refused(token, SECRET, 401, "token_malformed")


def test_hs512_is_rejected_even_with_the_right_secret():
    secret = "z" * 64
    token = jwt.encode(claims(), secret, algorithm="HS512")
    assert_refused(token, secret, 401, "token_malformed")


@pytest.mark.parametrize("missing", ["sub", "exp", "iss"])
def test_missing_required_claim(missing: str):
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    assert_refused(token, SECRET, 401, "token_malformed")


def test_empty_identity():
    token = jwt.encode(claims(sub=""), SECRET, algorithm="HS256")
    err = assert_refused(token, SECRET, 401, "token_malformed")
    assert "identity" in err.message


def test_non_string_identity():
    token = jwt.encode(claims(sub=42), SECRET, algorithm="HS256")
    assert_refused(token, SECRET, 401, "token_malformed")


def test_malformed_grants_claim():
    token = jwt.encode(claims(grants={"room_admin": "yes"}), SECRET, algorithm="HS256")
    assert_refused(token, SECRET, 401, "token_malformed")


def test_unknown_grant_in_token_is_ignored():
    token = jwt.encode(claims(grants={"room": "r", "teleport": True}), SECRET, algorithm="HS256")
    assert verify_token(token, SECRET).grants == Grants(room="r")


def test_token_without_name_uses_identity_and_without_grants_has_none():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    verified = verify_token(token, SECRET)
    assert verified.name == "alice"
    assert verified.grants == Grants()
    assert verified.token_id == ""


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "a.b"])
def test_verify_garbage(garbage: str):
    assert_refused(garbage, SECRET, 401, "token_malformed")


# --- unverified_api_key -------------------------------------------------------------


def test_unverified_api_key_reads_iss_without_the_secret():
    token = mint_token(KEY, SECRET, "alice", Grants())
    assert unverified_api_key(token) == KEY


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "x" * 200])
def test_unverified_api_key_on_garbage(garbage: str):
    with pytest.raises(ApiError) as info:
        unverified_api_key(garbage)
    assert (info.value.status, info.value.code) == (401, "token_malformed")


@pytest.mark.parametrize("iss", [None, "", 123])
def test_unverified_api_key_without_usable_iss(iss: Any):
    payload = claims()
    if iss is None:
        del payload["iss"]
    else:
        payload["iss"] = iss
    # PyJWT refuses to encode a non-string iss, so sign the raw JSON payload.
    token = jwt.PyJWS().encode(json.dumps(payload).encode(), SECRET, algorithm="HS256")
    with pytest.raises(ApiError) as info:
        unverified_api_key(token)
    assert (info.value.status, info.value.code) == (401, "token_malformed")
    assert "iss" in info.value.message


# --- require_grant --------------------------------------------------------------------


def test_require_grant():
    token = verify_token(mint_token(KEY, SECRET, "alice", Grants.participant("r")), SECRET)
    require_grant(token, "can_publish")  # present: no error
    with pytest.raises(ApiError) as info:
        require_grant(token, "room_admin")
    assert info.value.status == 403
    assert info.value.code == "grant_missing"
    assert info.value.details == {"grant": "room_admin"}
    assert info.value.body() == {
        "error": {
            "code": "grant_missing",
            "message": "the token lacks the room_admin grant",
            "details": {"grant": "room_admin"},
        }
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "9999999999"},  # PyJWT alone would coerce a numeric string (a literal: not one computed at collection)
        {"exp": "1e12"},
        {"nbf": "0"},
        {"iat": [1]},
    ],
    ids=["exp string", "exp float string", "nbf string", "iat list"],
)
def test_a_time_claim_that_is_not_a_number_is_refused(overrides: dict[str, Any]):
    token = jwt.encode(claims(**overrides), SECRET, algorithm="HS256")
    assert_refused(token, SECRET, 401, "token_malformed")


@pytest.mark.parametrize("identity", ["al\x00ice", "bob\n", "\x7f"], ids=["NUL", "newline", "DEL"])
def test_an_identity_with_control_characters_is_refused(identity: str):
    token = jwt.encode(claims(sub=identity), SECRET, algorithm="HS256")
    error = assert_refused(token, SECRET, 401, "token_malformed")
    assert "control characters" in error.message


def test_room_admin_moderates_its_room_and_instance_admin_every_room():
    host = Grants(room="standup", room_join=True, room_admin=True)
    assert host.moderates("standup") and not host.moderates("board")
    assert not Grants(room="standup", room_join=True).moderates("standup")  # a participant
    assert Grants(instance_admin=True).moderates("board")
    assert Grants(room_admin=True).mint_refusal() is not None  # which room would it moderate?
    assert host.mint_refusal() is None and host.link_refusal() is None  # a meeting host's link
    assert Grants(room="standup", room_join=True, instance_admin=True).link_refusal() is not None
