"""Bots' files in S3 (GBMEDIA_BOT_FILES_STORAGE=s3) against a real S3-compatible server (moto's, in a child).

The same dialogs as on disk give the same answers; the objects land under the node's
prefix and the instance; a node configured so serves SHARE FOLDER's links from the bucket.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.bots.context import Context
from gbmedia.bots.host import MemoryPort
from gbmedia.bots.s3_files import S3Files
from gbmedia.config import ConfigError, load_settings
from gbmedia.node import Node
from tests.bots.helpers import said, talk_with
from tests.conftest import make_settings
from tests.helpers import create_tenant
from tests.recording.test_s3 import CREDENTIALS, _boto, s3_endpoint  # noqa: F401 - the moto server fixture

BUCKET = "gbmedia-bot-files"
DIALOG = """
SAVE "hello" AS "notes/a.txt"
o = NEW OBJECT
o.n = 1
SAVE o AS "notes/o.json"
CREATE FOLDER "reports/2026"
CREATE FOLDER "reports/2026"
COPY "notes/a.txt", "reports"
COPY "notes/a.txt", "notes/b.txt"
TALK READFILE("reports/a.txt")
listing = DIR "notes"
TALK TOLIST(listing, "name"), listing[0].size, listing[0].folder
TALK TOLIST(DIR(""), "path"), TOLIST(DIR("reports"), "name")
n = DELETE "notes/a.txt"
m = DELETE "notes/none.txt"
TALK n, m
DELETE "reports"
TALK TOLIST(DIR(""), "name")
"""
SAID = ["hello", "a.txt, b.txt, o.json 5 false", "notes, reports 2026, a.txt", "1 0", "notes"]


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> Any:  # noqa: F811 - the imported fixture
    client = _boto(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


def keys(client: Any) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


async def test_dialogs_on_s3_files_answer_as_on_disk(bucket: Any, tmp_path: Path):
    files = S3Files(bucket, BUCKET, "pre/", f"inst-{uuid.uuid4().hex[:6]}")
    assert await said(DIALOG, files=files) == SAID
    assert [k for k in keys(bucket) if k.startswith(files.root)] == [
        f"{files.root}notes/b.txt",
        f"{files.root}notes/o.json",
    ]
    picture = np.zeros((20, 20, 3), np.uint8)
    picture[:, 10:] = 255
    await files.write("p.png", cv2.imencode(".png", picture)[1].tobytes())
    assert await said('TALK SHARPEN("p.png")\nTALK GETQRCODE("s3", "q")', files=files) == ["p-sharp.png", "q.png"]
    decoded = cv2.imdecode(np.frombuffer(await files.read("q.png", 10**6), np.uint8), cv2.IMREAD_COLOR)
    assert cv2.QRCodeDetector().detectAndDecode(decoded)[0] == "s3"
    assert (await files.kind("notes"), await files.kind("p.png"), await files.kind("nope"), await files.kind(".")) == (
        "folder",
        "file",
        None,
        "folder",
    )
    for source, message in [
        ('SAVE "x" AS "notes"', "notes is a folder"),
        ('x = READFILE("none.txt")', "no file none.txt"),
        ('x = DIR "none"', "no folder none"),
        ('COPY "none.txt", "x.txt"', "no file none.txt"),
        ('x = DELETE "."', "cannot be deleted"),
        ('SAVE "x" AS "../other/x.txt"', "is not a file name of this bot"),
    ]:
        outcome, _ = await talk_with(source, files=files)
        assert outcome.status == "failed" and message in outcome.error.message, (source, outcome.error)
    with pytest.raises(Exception, match="larger than 3 bytes"):
        await files.read("p.png", 3)
    broken = S3Files(bucket, "no-such-bucket", "", "i")
    outcome, _ = await talk_with('SAVE "x" AS "a.txt"', files=broken)
    assert "the bot's file store failed" in outcome.error.message


def test_s3_bot_files_need_a_bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("GBMEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GBMEDIA_BOT_FILES_STORAGE", "s3")
    monkeypatch.delenv("GBMEDIA_S3_BUCKET", raising=False)
    with pytest.raises(ConfigError, match="GBMEDIA_BOT_FILES_STORAGE=s3 needs GBMEDIA_S3_BUCKET"):
        load_settings()


@pytest.fixture
async def s3_node(tmp_path: Path, database_url: str, s3_endpoint: str, bucket: Any) -> AsyncIterator[Node]:  # noqa: F811
    settings = make_settings(
        tmp_path,
        database_url,
        bot_files_storage="s3",
        s3_bucket=BUCKET,
        s3_prefix="live",
        s3_endpoint_url=s3_endpoint,
        **CREDENTIALS,
    )
    node = await Node.start(settings)
    yield node
    await node.stop()


async def test_a_node_keeps_bot_files_in_s3_and_shares_them_from_there(s3_node: Node, bucket: Any):
    async with TestClient(TestServer(create_app(s3_node))) as client:
        tenant = await create_tenant(client, "s3bots")
        runner = s3_node.bots.engine.runner
        instance = await runner.instance(uuid.UUID(tenant.instance_id))
        port = MemoryPort()
        source = 'SAVE "a,b" AS "out/q.csv"\nx = SHARE FOLDER "out"\nTALK x'
        ctx: Context = runner.context(instance, "s3", port)
        from gbmedia.bots.compiler import load
        from gbmedia.bots.machine import converse

        outcome = await converse(load(source, "s3"), ctx, [])
        assert outcome.status == "done", outcome.error
        assert f"live/bots/{tenant.instance_id}/files/out/q.csv" in await asyncio.to_thread(keys, bucket)
        assert not (s3_node.settings.data_dir / "bots").exists()  # nothing on the node's disk
        [link] = port.said
        listing = await (await client.get(link)).json()
        assert [(f["name"], f["size"]) for f in listing["files"]] == [("q.csv", 3)]
        resp = await client.get(f"{link}/q.csv")
        assert (resp.status, await resp.text(), resp.headers["Content-Type"]) == (200, "a,b", "text/csv")
        resp = await client.get(f"{link}/none.csv")
        assert resp.status == 404
