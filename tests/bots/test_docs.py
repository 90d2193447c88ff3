"""Every ```basic block of docs/bots.md parses and runs, and says what its fence line says it says.

A fence line may name ``answers=[...]`` (given to the block's HEARs in order),
``said=[...]`` (what the bot must have said, in order), ``outcome=...`` (how the run
ends; ``done`` when not named) and ``name=...`` (the block is a dialog other blocks
INCLUDE). The blocks run against the real stores: a PostgreSQL instance's tables, a
folder of files, and for HTTP a local server standing in for ``api.example.com`` (the
block's text is pointed at it, and loopback allowed as an operator would with
``bots.http_allow``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gbmedia.bots import lib_dates
from gbmedia.bots.compiler import Compiled, load
from gbmedia.bots.context import Context
from gbmedia.bots.errors import Fault
from gbmedia.bots.fetch import GuardedFetcher, allowed_networks
from gbmedia.bots.files import InstanceFiles
from gbmedia.bots.host import MemoryPort, UserInfo
from gbmedia.bots.machine import converse
from gbmedia.bots.tables import PgTables
from tests.bots.test_lib_data import new_instance

DOC = Path(__file__).resolve().parents[2] / "docs" / "bots.md"
_FENCE = re.compile(r"^```basic([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass
class Block:
    line: int
    source: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_options(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    i = 0
    while i < len(text):
        match = re.compile(r"\s*(\w+)=").match(text, i)
        if not match:
            assert not text[i:].strip(), f"cannot read the fence options {text[i:]!r}"
            break
        i = match.end()
        if text[i] in '[{"':
            value, i = decoder.raw_decode(text, i)
        else:
            end = re.compile(r"\S*").match(text, i).end()
            value, i = text[i:end], end
        options[match[1]] = value
    return options


def blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    return [Block(text[: m.start()].count("\n") + 1, m[2], parse_options(m[1])) for m in _FENCE.finditer(text)]


@pytest.fixture
async def api() -> AsyncIterator[str]:
    async def weather(request: web.Request) -> web.Response:
        return web.json_response({"city": request.query["city"], "temp": 31})

    async def orders(request: web.Request) -> web.Response:
        if request.headers.get("X-Api-Key") != "secret":
            return web.Response(status=401)
        assert (await request.json()) == {"item": "book"}
        return web.json_response({"status": "created", "id": 7})

    app = web.Application()
    app.router.add_get("/weather", weather)
    app.router.add_post("/orders", orders)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def test_the_doc_has_examples_for_every_section():
    found = blocks()
    assert len(found) >= 20
    text = "\n".join(b.source.upper() for b in found)
    for statement in (
        "IF",
        "SELECT CASE",
        "FOR EACH",
        "DO WHILE",
        "FUNCTION",
        "INCLUDE",
        "HEAR",
        "INPUT",
        "TABLE",
        "SAVE",
        "FIND",
        "MERGE",
        "DELETE",
        "GET",
        "POST",
        "SET HEADER",
        "FORMAT",
        "DATEADD",
        "SET SCHEDULE",
        "GO TO",
        "ALLOW ROLE",
        "TRANSFER",
        "SEND MAIL",
        "FILL",
        "DIR",
    ):
        assert statement in text, f"docs/bots.md has no example of {statement}"


@pytest.mark.parametrize("block", blocks(), ids=lambda b: f"line{b.line}")
async def test_every_basic_block_runs(
    block: Block, pool: asyncpg.Pool, api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(lib_dates, "now", lambda: datetime(2026, 12, 6, 14, 30))
    library = {b.options["name"]: b.source for b in blocks() if "name" in b.options}
    config = {"bots": {"params": {"greeting": "Olá"}, "http_allow": ["127.0.0.0/8"]}}
    port = MemoryPort(user=UserInfo("u1", "Ana", roles=("admin",)))

    async def stored(name: str) -> Compiled:  # callVM: the doc's named blocks are the bot's stored dialogs
        if name not in library:
            raise Fault(f"the bot has no dialog {name}")
        return load(library[name], name, library.__getitem__)

    ctx = Context(
        instance_id="doc",
        dialogs=stored,
        port=port,
        tables=PgTables(pool, await new_instance(pool, f"doc-{uuid.uuid4().hex[:6]}")),
        files=InstanceFiles(tmp_path, "doc"),
        http=GuardedFetcher(allowed_networks(config)),
        config=config,
    )
    source = block.source.replace("https://api.example.com", api)
    outcome = await converse(load(source, "doc", library.__getitem__), ctx, list(block.options.get("answers", [])))
    assert outcome.status == block.options.get("outcome", "done"), outcome.error
    if "said" in block.options:
        assert port.said == block.options["said"]
