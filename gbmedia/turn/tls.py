"""A self-signed certificate for the embedded coturn's ``turns:`` port, made at start when none is configured.

It gives clients that do not check the certificate (aiortc/aioice, most encoders) TURN
over TLS without an operator step. Browsers check it: Chromium refuses a self-signed
one and accepts one whose issuer it trusts (measured, tests/web/test_room_turns.py), so
for browsers behind TLS-only proxies give coturn a real certificate for its address or
host name (``GBMEDIA_TURN_TLS_CERT``/``_KEY``, or deploy/'s coturn with
``GBMEDIA_TURN_URLS`` naming that host). Key generation
runs in a thread: it is CPU work off the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write_self_signed(cert: Path, key: Path, host: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gbmedia turn")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


async def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """(certificate, key) for ``host``, generated afresh under ``directory``."""
    cert, key = directory / "turn.crt", directory / "turn.key"
    await asyncio.to_thread(_write_self_signed, cert, key, host)
    return cert, key
