"""Encryption of API secrets at rest and generation of credentials."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from gbmedia.tenancy.secrets import (
    SecretBox,
    SecretKeyMismatch,
    load_or_create_file_secret,
    new_api_key,
    new_api_secret,
)


def test_encrypt_decrypt_round_trip():
    box = SecretBox(Fernet.generate_key().decode())
    plaintext = "api-secret-ÄÖÜ-" + new_api_secret()
    ciphertext = box.encrypt(plaintext)
    assert isinstance(ciphertext, bytes)
    assert plaintext.encode() not in ciphertext
    assert b"api-secret" not in ciphertext
    assert box.decrypt(ciphertext) == plaintext


def test_decrypt_accepts_memoryview_from_database():
    box = SecretBox(Fernet.generate_key().decode())
    assert box.decrypt(memoryview(box.encrypt("abc"))) == "abc"  # type: ignore[arg-type]


def test_encryption_is_randomised():
    box = SecretBox(Fernet.generate_key().decode())
    assert box.encrypt("same") != box.encrypt("same")


def test_decrypt_with_another_key_raises_mismatch():
    ciphertext = SecretBox(Fernet.generate_key().decode()).encrypt("secret")
    with pytest.raises(SecretKeyMismatch, match="GBMEDIA_SECRET_KEY"):
        SecretBox(Fernet.generate_key().decode()).decrypt(ciphertext)


def test_decrypt_garbage_raises_mismatch():
    with pytest.raises(SecretKeyMismatch):
        SecretBox(Fernet.generate_key().decode()).decrypt(b"not a fernet token")


def test_for_node_generates_key_file_with_mode_0600_and_reuses_it(tmp_path: Path):
    data_dir = tmp_path / "data" / "nested"
    first = SecretBox.for_node(None, data_dir)
    key_file = data_dir / "secret.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text(encoding="utf-8").strip()
    Fernet(key.encode())  # a valid Fernet key
    ciphertext = first.encrypt("hello")

    second = SecretBox.for_node(None, data_dir)
    assert key_file.read_text(encoding="utf-8").strip() == key  # not regenerated
    assert second.decrypt(ciphertext) == "hello"
    assert SecretBox(key).decrypt(ciphertext) == "hello"


def test_for_node_uses_configured_key_without_touching_data_dir(tmp_path: Path):
    key = Fernet.generate_key().decode()
    box = SecretBox.for_node(key, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert SecretBox(key).decrypt(box.encrypt("x")) == "x"


def test_for_node_with_empty_configured_key_falls_back_to_file(tmp_path: Path):
    SecretBox.for_node("", tmp_path)
    assert (tmp_path / "secret.key").is_file()


def test_load_or_create_file_secret_creates_parents_and_reads_back(tmp_path: Path):
    path = tmp_path / "a" / "b" / "c" / "token"
    calls: list[int] = []

    def make() -> str:
        calls.append(1)
        return "generated-value"

    assert load_or_create_file_secret(path, make) == "generated-value"
    assert path.read_text(encoding="utf-8") == "generated-value\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_file_secret(path, make) == "generated-value"
    assert calls == [1]


def test_load_or_create_file_secret_strips_whitespace_of_existing_file(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("  operator-token \n\n", encoding="utf-8")
    assert load_or_create_file_secret(path, lambda: pytest.fail("must not generate")) == "operator-token"


def test_new_api_key_format_and_uniqueness():
    keys = [new_api_key() for _ in range(500)]
    for key in keys:
        assert re.fullmatch(r"API[A-Za-z0-9]{12}", key)
    assert len(set(keys)) == len(keys)


def test_new_api_secret_length_and_uniqueness():
    secrets = [new_api_secret() for _ in range(200)]
    for secret in secrets:
        assert len(secret) >= 40
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert len(set(secrets)) == len(secrets)
