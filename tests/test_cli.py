"""The gbmedia command: an operator creates a customer and an instance and mints a token."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet

from gbmedia.cli import build_parser, main
from gbmedia.tenancy.tokens import Grants, verify_token


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    monkeypatch.setenv("GBMEDIA_DATABASE_URL", database_url)
    monkeypatch.setenv("GBMEDIA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GBMEDIA_SECRET_KEY", Fernet.generate_key().decode())
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_operator_flow_customer_instance_credentials_token(cli_env: Path, capsys, monkeypatch):
    code, out, _ = run(
        capsys, "tenant", "customer", "create", "Acme", "--tier", "starter", "--metadata", '{"owner": "ops"}'
    )
    assert code == 0
    customer = json.loads(out)
    assert (customer["name"], customer["subscription_tier"], customer["metadata"]) == (
        "Acme",
        "starter",
        {"owner": "ops"},
    )
    code, out, _ = run(capsys, "tenant", "instance", "create", customer["id"], "main", "--region", "eu")
    created = json.loads(out)
    instance_id = created["instance"]["id"]
    assert created["instance"]["region"] == "eu"
    assert created["credentials"]["key"].startswith("API")

    code, out, _ = run(capsys, "tenant", "instance", "credentials", instance_id)
    credentials = json.loads(out)
    assert credentials == {"instance_id": instance_id, **created["credentials"]}

    code, out, _ = run(
        capsys,
        "token",
        "--instance",
        instance_id,
        "--identity",
        "alice",
        "--room",
        "standup",
        "--name",
        "Alice",
        "--ttl",
        "120",
    )
    assert code == 0
    token = verify_token(out.strip(), credentials["secret"])
    assert (token.identity, token.name, token.grants) == ("alice", "Alice", Grants.participant("standup"))

    # A join link for a newcomer: the room page with the token, on GBMEDIA_PUBLIC_URL.
    monkeypatch.setenv("GBMEDIA_PUBLIC_URL", "https://meet.example.com/")
    code, out, _ = run(capsys, "token", "--instance", instance_id, "--identity", "carol", "--room", "standup", "--url")
    assert code == 0
    link = urlsplit(out.strip())
    assert (link.scheme, link.netloc, link.path) == ("https", "meet.example.com", "/web/room/")
    token = verify_token(parse_qs(link.query)["token"][0], credentials["secret"])
    assert (token.identity, token.grants.room) == ("carol", "standup")
    code, _, err = run(
        capsys, "token", "--instance", instance_id, "--identity", "svc", "--grant", "room_create", "--url"
    )
    assert code == 1 and "url_needs_room" in err
    # The instance's administration never travels in a link; a moderator moderates a named room.
    admin_link = ("--grant", "instance_admin", "--grant", "room_join", "--room", "standup", "--url")
    code, out, err = run(capsys, "token", "--instance", instance_id, "--identity", "ops", *admin_link)
    assert (code, out) == (1, "") and "grant_not_linkable" in err
    code, out, err = run(capsys, "token", "--instance", instance_id, "--identity", "host", "--grant", "room_admin")
    assert (code, out) == (1, "") and "room_required" in err
    code, out, _ = run(
        capsys,
        "token",
        "--instance",
        instance_id,
        "--identity",
        "host",
        "--room",
        "standup",
        "--grant",
        "room_join",
        "--grant",
        "room_admin",
        "--url",
    )
    token = verify_token(parse_qs(urlsplit(out.strip()).query)["token"][0], credentials["secret"])
    assert token.grants == Grants(room="standup", room_join=True, room_admin=True)  # a host's link

    code, out, _ = run(
        capsys,
        "token",
        "--instance",
        instance_id,
        "--identity",
        "svc",
        "--grant",
        "instance_admin",
        "--grant",
        "room_create",
    )
    token = verify_token(out.strip(), credentials["secret"])
    assert token.grants == Grants(instance_admin=True, room_create=True)

    code, out, _ = run(capsys, "tenant", "customer", "list")
    assert [c["name"] for c in json.loads(out)] == ["Acme"]
    code, out, _ = run(capsys, "tenant", "instance", "list", customer["id"])
    assert [i["name"] for i in json.loads(out)] == ["main"]

    code, out, _ = run(capsys, "tenant", "instance", "new-key", instance_id, "--description", "rotation")
    new_key = json.loads(out)
    code, out, _ = run(capsys, "tenant", "instance", "credentials", instance_id)
    assert json.loads(out)["key"] == new_key["key"]  # the newest key signs from now on


def test_cli_errors_are_clear_and_exit_nonzero(cli_env: Path, capsys):
    code, out, _ = run(capsys, "tenant", "customer", "create", "Tiny", "--tier", "free")
    customer_id = json.loads(out)["id"]
    run(capsys, "tenant", "instance", "create", customer_id, "one")
    code, _, err = run(capsys, "tenant", "instance", "create", customer_id, "two")
    assert code == 1
    assert "quota_max_instances_exceeded" in err
    code, _, err = run(capsys, "tenant", "customer", "create", "X", "--tier", "gold")
    assert (code, "unknown_tier" in err) == (1, True)
    code, _, err = run(capsys, "tenant", "customer", "create", "X", "--metadata", "{oops")
    assert code == 2 and "invalid JSON" in err
    code, _, err = run(capsys, "token", "--instance", customer_id, "--identity", "a", "--room", "r")
    assert code == 1 and "instance_not_found" in err
    code, _, err = run(capsys, "token", "--instance", customer_id, "--identity", "a")
    assert code == 1 and "grants_required" in err


def test_cli_rejects_bad_arguments_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tenant", "instance", "list", "not-a-uuid"])
    assert exit_info.value.code == 2
    assert "not a UUID" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["token", "--instance", "00000000-0000-0000-0000-000000000000", "--identity", "a", "--grant", "fly"])


def test_help_is_available_on_every_command(capsys):
    parser = build_parser()
    commands = [
        [],
        ["serve"],
        ["migrate"],
        ["secret-key"],
        ["token"],
        ["tenant"],
        ["tenant", "customer"],
        ["tenant", "customer", "create"],
        ["tenant", "customer", "list"],
        ["tenant", "instance"],
        ["tenant", "instance", "create"],
        ["tenant", "instance", "list"],
        ["tenant", "instance", "credentials"],
        ["tenant", "instance", "new-key"],
    ]
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*argv, "--help"])
        assert exit_info.value.code == 0
        assert "usage: gbmedia" in capsys.readouterr().out


def test_secret_key_prints_a_usable_key(capsys):
    code, out, _ = run(capsys, "secret-key")
    Fernet(out.strip().encode())  # raises if it is not a valid key
    assert code == 0


def test_migrate_on_an_empty_database_applies_everything_then_nothing(
    monkeypatch, tmp_path, empty_database_url, capsys
):
    monkeypatch.setenv("GBMEDIA_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("GBMEDIA_DATA_DIR", str(tmp_path))
    code, out, _ = run(capsys, "migrate")
    applied = json.loads(out)["applied"]
    assert code == 0 and applied[:2] == ["0001_core", "0002_bot_platform"]
    code, out, _ = run(capsys, "migrate")
    assert json.loads(out)["applied"] == []
