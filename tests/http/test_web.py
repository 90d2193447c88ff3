"""``/web/``: the browser clients as static files, with exact content types and no way out of ``web/``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.errors import ApiError
from gbmedia.http import web as web_files
from gbmedia.http.responses import error_response


async def raw_get(client: TestClient, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` exactly as written (no client-side normalising of ``..`` or ``%2e``)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


@web.middleware
async def api_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """What the node's middleware does with an ApiError, for an app serving another root."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)


def files_app(root: Path) -> web.Application:
    app = web.Application(middlewares=[api_errors])
    web_files.register(app, root)
    return app


def test_web_root_is_the_repository_web_folder():
    assert web_files.WEB_ROOT == Path(__file__).resolve().parents[2] / "web"
    assert (web_files.WEB_ROOT / "room" / "index.html").is_file()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/web/room/", "text/html; charset=utf-8"),
        ("/web/room/index.html", "text/html; charset=utf-8"),
        ("/web/room/room.js", "text/javascript; charset=utf-8"),
        ("/web/room/session.js", "text/javascript; charset=utf-8"),
        ("/web/room/signaling.js", "text/javascript; charset=utf-8"),
        ("/web/room/grid.js", "text/javascript; charset=utf-8"),
        ("/web/room/room.css", "text/css; charset=utf-8"),
    ],
)
async def test_files_are_served_with_their_content_type_and_no_cache(client: TestClient, path: str, content_type: str):
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == content_type
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    name = path.rsplit("/", 1)[1] or "index.html"
    assert await resp.read() == (web_files.WEB_ROOT / "room" / name).read_bytes()


async def test_the_page_has_a_content_security_policy(client: TestClient):
    resp = await client.get("/web/room/")
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert resp.headers["Referrer-Policy"] == "no-referrer"  # join links carry a token
    assert "Content-Security-Policy" not in (await client.get("/web/room/room.js")).headers


async def test_head_is_answered_like_get(client: TestClient):
    resp = await client.head("/web/room/room.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"


async def test_a_directory_without_its_slash_redirects_and_keeps_the_query(client: TestClient):
    resp = await client.get("/web/room?token=a.b-c_d&autojoin=1", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/web/room/?token=a.b-c_d&autojoin=1"
    assert resp.headers["X-Request-Id"]  # answered through the app middleware
    resp = await client.get("/web/room", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/web/room/")


@pytest.mark.parametrize(
    "path",
    [
        "/web/room/nope.js",
        "/web/nowhere/",
        "/web/",  # the folder has no index.html
        "/web/room/index.html/",
        "/web/room/.hidden",
    ],
)
async def test_missing_files_are_a_json_404(client: TestClient, path: str):
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"]


@pytest.mark.parametrize(
    "target",
    [
        "/web/../pyproject.toml",
        "/web/room/../../pyproject.toml",
        "/web/room/%2e%2e/%2e%2e/pyproject.toml",
        "/web/room/%2E%2E/%2E%2E/pyproject.toml",
        "/web/room/..%2f..%2fpyproject.toml",
        "/web/%2e%2e/gbmedia/__init__.py",
        "/web/room/..%5c..%5cpyproject.toml",
        "/web//etc/passwd",
        "/web/%2fetc%2fpasswd",
        "/web/room/%00index.html",
    ],
)
async def test_paths_out_of_the_web_folder_are_refused(client: TestClient, target: str):
    status, headers, body = await raw_get(client, target)
    assert status in (400, 404), (status, body)
    assert b"[project]" not in body and b"root:" not in body and b"gbmedia" not in body.split(b'"message"')[0]
    if status == 404:
        assert headers["content-type"].startswith("application/json")
        assert b'"not_found"' in body


async def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path):
    root = tmp_path / "web"
    (root / "room").mkdir(parents=True)
    (root / "room" / "index.html").write_text("<p>hi</p>")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "room" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    async with TestClient(TestServer(files_app(root))) as client:
        assert (await client.get("/web/room/")).status == 200
        resp = await client.get("/web/room/leak.txt")
        assert resp.status == 404 and "secret" not in await resp.text()
        assert (await resp.json())["error"]["code"] == "not_found"
        assert (await client.get("/web/room/unknown.bin")).status == 404


async def test_unknown_suffixes_are_octet_streams(tmp_path: Path):
    root = tmp_path / "web"
    root.mkdir()
    (root / "data.bin").write_bytes(b"\x00\x01")
    async with TestClient(TestServer(files_app(root))) as client:
        resp = await client.get("/web/data.bin")
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert await resp.read() == b"\x00\x01"


def test_an_installed_node_serves_the_copy_under_its_prefix(monkeypatch, tmp_path: Path):
    """``pip install .`` (a container image) has no checkout: the data-files copy is used."""
    import sys

    import gbmedia
    from gbmedia.http.web import find_web_root

    monkeypatch.setattr(gbmedia, "__file__", str(tmp_path / "site-packages" / "gbmedia" / "__init__.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert find_web_root() == tmp_path / "venv" / "share" / "gbmedia" / "web"
