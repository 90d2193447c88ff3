"""The SSRF guard shared by bots and webhooks: what it refuses before and after resolving."""

from __future__ import annotations

import ipaddress
import re

import pytest

from gbmedia.http.guard import DestinationGuard, DestinationRefused, parse_networks


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "[::1]",
        "10.0.0.7",
        "169.254.169.254",
        "fd00::1",
        "::ffff:10.0.0.1",
        "100.64.1.1",
        "localhost",
        "api.localhost",
        "LOCALHOST.",
        "224.0.0.1",
    ],
)
def test_literals_and_localhost_names_are_refused_without_resolving(host: str):
    refusal = DestinationGuard(hint="GBMEDIA_WEBHOOK_ALLOW_NETWORKS").literal_refusal(host)
    assert refusal is not None and "GBMEDIA_WEBHOOK_ALLOW_NETWORKS" in refusal


def test_public_literals_and_other_names_wait_for_resolution():
    guard = DestinationGuard()
    assert guard.literal_refusal("93.184.216.34") is None
    assert guard.literal_refusal("2606:4700::1111") is None
    assert guard.literal_refusal("hooks.example.com") is None  # resolved and checked at each request


def test_allowed_networks_pass():
    guard = DestinationGuard(parse_networks(["127.0.0.0/8", "10.20.0.0/16"]))
    assert guard.literal_refusal("127.0.0.1") is None
    assert guard.literal_refusal("localhost") is None
    assert guard.literal_refusal("10.20.3.4") is None
    assert guard.literal_refusal("10.21.3.4") is not None
    assert guard.allowed(ipaddress.ip_address("10.20.0.1"))


async def test_a_name_is_checked_after_resolution():
    """``localhost`` resolves (from /etc/hosts) to loopback: refused unless allowed."""
    with pytest.raises(DestinationRefused, match="not a public address"):
        await DestinationGuard().checked_addresses("localhost")
    allowed = await DestinationGuard(parse_networks(["127.0.0.0/8", "::1/128"])).checked_addresses("localhost")
    assert allowed and all(a.is_loopback for a in allowed)


async def test_a_name_that_does_not_resolve_is_refused():
    with pytest.raises(DestinationRefused, match="cannot resolve"):
        await DestinationGuard().checked_addresses("hooks.example.invalid")


def test_bad_networks_are_named():
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
