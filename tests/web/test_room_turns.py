"""TURN over TLS (``turns:``) from Chromium: what a browser behind a proxy that lets only TLS out uses.

Chromium checks the TURN server's certificate like a web server's: it refused the
embedded coturn's self-signed one (no relayed candidate). Here coturn is given a
certificate for the node's address issued by a test certificate authority, and the
browser trusts that authority the way a managed machine would: in its NSS store
(``$HOME/.pki/nssdb``, filled with Debian's ``certutil``). Two pages then meet over
TURN/TLS only (``?ice=relay-tls``), and WebRTC's statistics say ``tls``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.async_api import Playwright

from gbmedia.config import Settings, detect_public_host
from gbmedia.node import Node
from tests.browser import Browser
from tests.conftest import make_settings, service_missing
from tests.helpers import Tenant
from tests.web.test_room_page import open_joined, wait_decoding
from tests.web.test_room_turn import assert_relayed


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_certificates(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a test CA and a certificate it issues for ``address``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gbmedia test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "turn.pem", directory / "turn.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    return issue_certificates(tmp_path / "pki", detect_public_host())


@pytest.fixture
def settings(tmp_path: Path, database_url: str, turnserver: str, certificates: tuple[Path, Path, Path]) -> Settings:
    _ca, cert, key = certificates
    return make_settings(
        tmp_path, database_url, turn_embedded=True, turn_relay_ports="48000-48999", turn_tls_cert=cert, turn_tls_key=key
    )


async def run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"{args}: {output.decode(errors='replace')}"


@pytest.fixture
async def trusting_browser(
    playwright_driver: Playwright, chromium_executable: str, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> AsyncIterator[Browser]:
    """Chromium whose NSS store (under its own HOME) trusts the test CA, as an administrator would set it up."""
    certutil = shutil.which("certutil")
    if certutil is None:
        service_missing("certutil (Debian package libnss3-tools)")
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    await run(certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password")
    await run(certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "gbmedia-test-ca", "-i", str(certificates[0]))
    async with Browser(playwright_driver, chromium_executable, env={"HOME": str(home)}) as opened:
        yield opened
        if opened.tabs:
            print(opened.report())


async def test_two_pages_meet_over_turn_over_tls_with_a_certificate_the_browser_trusts(
    trusting_browser: Browser, site: TestClient, tenant: Tenant, node: Node
):
    assert node.coturn is not None and any(u.startswith("turns:") for u in node.coturn.urls)
    alice = await open_joined(trusting_browser, site, tenant, "alice", ice="relay-tls")
    bob = await open_joined(trusting_browser, site, tenant, "bob", ice="relay-tls")
    await wait_decoding(alice, "Bob")
    await wait_decoding(bob, "Alice")
    await assert_relayed((alice, bob), "tls")
    alice.assert_no_errors()
    bob.assert_no_errors()
