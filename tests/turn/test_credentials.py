"""TURN REST API credentials and the URLs and Link headers that carry them (coturn checks them in test_coturn)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from gbmedia.turn.credentials import TurnCredentials, parse_ice_urls, turn_password

URLS = ("turn:198.51.100.7:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp")


def test_a_credential_is_expiry_colon_session_with_the_hmac_sha1_password():
    issued = TurnCredentials(URLS, "s3cret-s3cret-s3cret", ttl_seconds=600).issue("p_abc", now=1_700_000_000)
    assert issued.username == "1700000600:p_abc" and issued.expires_at == 1_700_000_600
    expected = base64.b64encode(hmac.new(b"s3cret-s3cret-s3cret", b"1700000600:p_abc", hashlib.sha1).digest())
    assert issued.credential == expected.decode() == turn_password("s3cret-s3cret-s3cret", issued.username)
    assert issued.to_json() == [{"urls": list(URLS), "username": issued.username, "credential": issued.credential}]
    assert "s3cret" not in repr(issued.to_json()) + "".join(issued.link_headers())


def test_a_session_id_cannot_smuggle_a_separator_or_a_quote_into_the_username():
    issued = TurnCredentials(URLS, "x" * 16, 60).issue('a:b"c\\d' + "e" * 100, now=0)
    expiry, _, rest = issued.username.partition(":")
    assert expiry == "60" and ":" not in rest and '"' not in rest and len(rest) == 64


def test_link_headers_follow_rfc_9725():
    issued = TurnCredentials(URLS, "x" * 16, 60).issue("s1", now=0)
    assert issued.link_headers() == [
        f'<{url}>; rel="ice-server"; username="60:s1"; credential="{issued.credential}"; credential-type="password"'
        for url in URLS
    ]


def test_urls_are_checked():
    assert parse_ice_urls(" turn:[2001:db8::1]:3478?transport=tcp , stun:stun.example.com ") == (
        "turn:[2001:db8::1]:3478?transport=tcp",
        "stun:stun.example.com",
    )
    for bad in ("http://turn.example.com", "turn:host:99999", "turns:host:5349?transport=udp", "turn:host?x=1"):
        with pytest.raises(ValueError):
            parse_ice_urls(bad)
