"""S3 storage against a real S3-compatible server: moto's server mode, in a child process.

Files are written to the local spool as always, uploaded when finished, removed
locally, and downloaded through the API from the bucket. A bucket that goes away
makes the upload fail: the recording fails with the store's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.config import ConfigError, load_settings
from gbmedia.node import Node
from gbmedia.recording.storage import S3Storage, StorageError
from tests.conftest import make_settings, service_missing
from tests.helpers import create_tenant
from tests.recording.helpers import create_room, download, ffprobe, join, poll_recording, recorder_frames
from tests.rtc import ToneAudioTrack, wait_for

BUCKET = "gbmedia-recordings"
CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        service_missing(f"moto[server] is not installed: {exc}")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def _boto(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
async def s3_client(tmp_path: Path, database_url: str, s3_endpoint: str) -> AsyncIterator[TestClient]:
    s3 = _boto(s3_endpoint)
    await asyncio.to_thread(s3.create_bucket, Bucket=BUCKET)
    settings = make_settings(
        tmp_path,
        database_url,
        recording_storage="s3",
        s3_bucket=BUCKET,
        s3_prefix="rec",
        s3_endpoint_url=s3_endpoint,
        **CREDENTIALS,
    )
    node = await Node.start(settings)
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield client
    finally:
        await node.stop()
        listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=BUCKET)
        for item in listed.get("Contents", []):
            await asyncio.to_thread(s3.delete_object, Bucket=BUCKET, Key=item["Key"])
        with contextlib.suppress(Exception):
            await asyncio.to_thread(s3.delete_bucket, Bucket=BUCKET)


async def _record_a_tone(client: TestClient, tenant: Any, frames: int = 100) -> tuple[str, str]:
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        audio = (await alice.publish(ToneAudioTrack()))["tracks"][0]["id"]
        await wait_for(lambda: _frames(client, rid, audio) >= frames, within=40)
    finally:
        await alice.close()
    return rid, audio


def _frames(client: TestClient, rid: str, track: str) -> int:
    from gbmedia.app import NODE

    return recorder_frames(client.server.app[NODE], rid).get(track, 0)


async def test_files_are_uploaded_to_the_bucket_and_downloaded_from_it(
    s3_client: TestClient, s3_endpoint: str, tmp_path: Path
):
    from gbmedia.app import NODE

    client = s3_client
    node = client.server.app[NODE]
    tenant = await create_tenant(client)
    rid, audio = await _record_a_tone(client, tenant)
    # The track ended when alice left: its file is finished and uploaded while the recording goes on.
    await poll_recording(client, tenant.admin, rid, lambda r: r["files"][0]["status"] == "completed")
    resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
    recording = await resp.json()
    assert (recording["status"], recording["storage"]) == ("completed", "s3")
    (entry,) = recording["files"]
    assert entry["status"] == "completed" and entry["duration_seconds"] >= 2
    key = f"rec/{tenant.instance_id}/{rid}/{audio}.webm"
    head = await asyncio.to_thread(_boto(s3_endpoint).head_object, Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == entry["size_bytes"] and head["ContentType"] == "audio/webm"
    assert not node.recordings.storage.spool_path(f"{tenant.instance_id}/{rid}/{audio}.webm").exists()
    path = await download(client, tenant.admin, rid, entry["name"], tmp_path / "from-s3.webm")
    assert path.stat().st_size == entry["size_bytes"]
    assert [s["codec_name"] for s in ffprobe(path)["streams"]] == ["opus"]
    # The object removed behind the node's back: the download says the store failed.
    await asyncio.to_thread(_boto(s3_endpoint).delete_object, Bucket=BUCKET, Key=key)
    resp = await client.get(f"/api/v1/recordings/{rid}/files/{entry['name']}", headers=tenant.admin)
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "storage_unavailable"


async def test_an_upload_that_fails_fails_the_recording(s3_client: TestClient, s3_endpoint: str):
    client = s3_client
    tenant = await create_tenant(client)
    room = await create_room(client, tenant)
    resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
    rid = (await resp.json())["id"]
    alice = await join(client, tenant, "alice")
    try:
        audio = (await alice.publish(ToneAudioTrack()))["tracks"][0]["id"]
        await wait_for(lambda: _frames(client, rid, audio) >= 50, within=40)
        await asyncio.to_thread(_boto(s3_endpoint).delete_bucket, Bucket=BUCKET)  # the store goes away
        resp = await client.post(f"/api/v1/recordings/{rid}/stop", headers=tenant.admin)
        stopped = await resp.json()
        assert stopped["status"] == "failed" and "NoSuchBucket" in stopped["error"], stopped
        assert stopped["files"][0]["status"] == "failed"
        # The room is untouched.
        resp = await client.get(f"/api/v1/rooms/{room['id']}/participants", headers=tenant.admin)
        assert [p["identity"] for p in (await resp.json())["participants"]] == ["alice"]
    finally:
        await alice.close()
        await asyncio.to_thread(_boto(s3_endpoint).create_bucket, Bucket=BUCKET)


async def test_s3_storage_checks_its_bucket_and_settings(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    storage = S3Storage(
        tmp_path,
        bucket="no-such-bucket",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    with pytest.raises(StorageError, match="head_bucket"):
        await storage.check()
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.spool_path("../escape")
    monkeypatch.setenv("GBMEDIA_RECORDING_STORAGE", "s3")
    with pytest.raises(ConfigError, match="needs GBMEDIA_S3_BUCKET"):
        load_settings()
    monkeypatch.setenv("GBMEDIA_S3_BUCKET", "ok-bucket")
    monkeypatch.setenv("GBMEDIA_S3_ENDPOINT_URL", "ftp://x")
    with pytest.raises(ConfigError, match="GBMEDIA_S3_ENDPOINT_URL"):
        load_settings()
    monkeypatch.setenv("GBMEDIA_S3_ENDPOINT_URL", "")
    assert load_settings().s3_endpoint_url is None
