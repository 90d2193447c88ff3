"""One-time dashboard login links (gbmedia/tenancy/dashboard_login.py) against the node's route."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gbmedia import cli
from gbmedia.config import Settings
from gbmedia.server import dashboard_line
from gbmedia.tenancy.dashboard_login import LOGIN_FILE, issue_code, login_link, redeem_code
from tests.conftest import make_settings
from tests.helpers import OPERATOR_TOKEN


async def login(client: TestClient, body: object) -> tuple[int, dict]:
    resp = await client.post("/dashboard/login", json=body)
    return resp.status, await resp.json()


def test_only_the_codes_digest_is_stored_readable_by_the_owner_alone(tmp_path: Path):
    code = issue_code(tmp_path, now=lambda: 1000.0, ttl=60)
    stored = (tmp_path / LOGIN_FILE).read_text()
    assert code not in stored
    assert json.loads(stored)["expires_at"] == 1060.0
    assert stat.S_IMODE((tmp_path / LOGIN_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [LOGIN_FILE]  # no staging file left behind
    assert login_link("http://192.0.2.1:7880/", code) == f"http://192.0.2.1:7880/web/dashboard/#login={code}"


async def test_a_code_is_traded_for_the_operator_token_once(client: TestClient, settings: Settings):
    code = issue_code(settings.data_dir)
    # A wrong guess does not burn the operator's link.
    status, body = await login(client, {"code": "guess"})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")
    resp = await client.post("/dashboard/login", json={"code": code})
    assert resp.status == 200
    assert await resp.json() == {"token": OPERATOR_TOKEN, "kind": "operator"}
    assert resp.headers["Cache-Control"] == "no-store"
    # Used: the same link does nothing a second time.
    status, body = await login(client, {"code": code})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")
    assert "gbmedia dashboard" in body["error"]["message"]


async def test_a_new_code_replaces_the_old_one(client: TestClient, settings: Settings):
    old = issue_code(settings.data_dir)
    new = issue_code(settings.data_dir)
    status, body = await login(client, {"code": old})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")
    assert (await login(client, {"code": new}))[0] == 200


async def test_an_expired_code_is_refused_and_gone(client: TestClient, settings: Settings):
    code = issue_code(settings.data_dir, ttl=-1)
    status, body = await login(client, {"code": code})
    assert (status, body["error"]["code"]) == (401, "login_code_expired")
    status, body = await login(client, {"code": code})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")


async def test_malformed_bodies_are_400_and_leave_the_code_usable(client: TestClient, settings: Settings):
    code = issue_code(settings.data_dir)
    for body in ({}, {"code": ""}, {"code": 7}, {"code": "x", "more": 1}, {"code": "x" * 201}):
        status, answer = await login(client, body)
        assert (status, answer["error"]["code"]) == (400, "validation_failed"), body
    resp = await client.post("/dashboard/login", data=b"{not json", headers={"Content-Type": "application/json"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_json")
    assert (await login(client, {"code": code}))[0] == 200


async def test_no_code_issued_or_a_damaged_file_is_invalid(client: TestClient, settings: Settings):
    status, body = await login(client, {"code": "anything"})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / LOGIN_FILE).write_text("{not json")
    status, body = await login(client, {"code": "anything"})
    assert (status, body["error"]["code"]) == (401, "login_code_invalid")


async def test_of_two_racing_redeemers_exactly_one_gets_in(tmp_path: Path):
    code = issue_code(tmp_path)
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(redeem_code, tmp_path, code) for _ in range(8)), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 1
    assert all(getattr(o, "code", None) == "login_code_invalid" for o in outcomes if o is not None)


def test_the_cli_prints_a_fresh_link_for_the_nodes_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("GBMEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GBMEDIA_PUBLIC_URL", "https://meet.example.com")
    assert cli.main(["dashboard"]) == 0
    out, err = capsys.readouterr()
    link = out.strip()
    assert link.startswith("https://meet.example.com/web/dashboard/#login=")
    assert "works once" in err
    redeem_code(tmp_path, link.split("#login=", 1)[1])  # the printed code is the stored one


def test_the_start_line_carries_a_link_unless_turned_off(tmp_path: Path):
    on = make_settings(tmp_path / "on", None)
    line = dashboard_line(on, "http://192.0.2.1:7880")
    assert line.startswith(
        "open the dashboard (one-time login link, 60 minutes): http://192.0.2.1:7880/web/dashboard/#login="
    )
    redeem_code(on.data_dir, line.rsplit("#login=", 1)[1])
    # Off (stdout shipped to shared logs): where the dashboard is, no code, nothing stored.
    off = make_settings(tmp_path / "off", None, dashboard_login_link=False)
    line = dashboard_line(off, "http://192.0.2.1:7880")
    assert (
        line == "dashboard at http://192.0.2.1:7880/web/dashboard/ (`gbmedia dashboard` prints a one-time login link)"
    )
    assert not (off.data_dir / LOGIN_FILE).exists()
