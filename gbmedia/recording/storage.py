"""Where finished recording files go: the local filesystem or an S3-compatible bucket.

Recorders always write to a local spool directory (``GBMEDIA_RECORDING_DIR``):
muxing needs a seekable local file, and a file written there survives a crash.
When a file is finished the storage backend takes it: the local backend keeps it
where it is (the spool *is* the store); the S3 backend uploads it under its key
and removes the local copy. Keys look like ``<instance_id>/<recording_id>/<file>``.

The S3 backend uses boto3 (blocking) in worker threads, so the event loop never
waits on the network; it works with AWS and with any S3-compatible server
(MinIO, Ceph, moto's server in the tests) through ``GBMEDIA_S3_ENDPOINT_URL``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

CHUNK = 256 * 1024


class StorageError(RuntimeError):
    """The store refused or failed an operation; the message says what and why."""


class Storage(Protocol):
    name: str
    spool: Path

    def spool_path(self, key: str) -> Path:
        """The local file a recorder writes for ``key``."""
        ...

    async def store(self, key: str, content_type: str) -> int:
        """Take the finished spool file of ``key`` into the store; returns its size."""
        ...

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The stored file's bytes, in chunks."""
        ...

    async def size(self, key: str) -> int: ...

    async def delete(self, key: str) -> None: ...

    async def check(self) -> None:
        """Raise :class:`StorageError` when the store cannot be written (start-up, readiness)."""
        ...


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    """Files stay in the spool directory, which is the store."""

    name = "local"

    def __init__(self, directory: Path) -> None:
        self.spool = directory

    def spool_path(self, key: str) -> Path:
        return self.spool / _safe_key(key)

    def path(self, key: str) -> Path:
        return self.spool_path(key)

    async def store(self, key: str, content_type: str) -> int:
        path = self.spool_path(key)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise StorageError(f"the recording file {key} is missing: {exc}") from exc

    async def size(self, key: str) -> int:
        return await self.store(key, "")

    async def read(self, key: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self.spool_path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self.spool_path(key)
        await asyncio.to_thread(lambda: path.unlink(missing_ok=True))

    async def check(self) -> None:
        def probe() -> None:
            self.spool.mkdir(parents=True, exist_ok=True)
            if not os.access(self.spool, os.W_OK):
                raise StorageError(f"the recording directory {self.spool} is not writable")

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageError(f"the recording directory {self.spool} is unusable: {exc}") from exc


class S3Storage:
    """An S3 bucket (AWS or compatible); the spool holds files until they are uploaded."""

    name = "s3"

    def __init__(
        self,
        spool: Path,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.spool = spool
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Credentials: the settings if given, else boto3's usual chain (env, profile, instance role).
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def _object(self, key: str) -> str:
        key = _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def spool_path(self, key: str) -> Path:
        return self.spool / _safe_key(key)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self._client, method), **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 {method} failed: {exc}") from exc

    async def store(self, key: str, content_type: str) -> int:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        path = self.spool_path(key)
        try:
            size = path.stat().st_size
            await asyncio.to_thread(
                self._client.upload_file,
                str(path),
                self.bucket,
                self._object(key),
                ExtraArgs={"ContentType": content_type or "application/octet-stream"},
            )
        except (OSError, BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageError(f"uploading {key} to s3://{self.bucket} failed: {exc}") from exc
        await asyncio.to_thread(lambda: path.unlink(missing_ok=True))
        return size

    async def size(self, key: str) -> int:
        head = await self._call("head_object", Bucket=self.bucket, Key=self._object(key))
        return int(head["ContentLength"])

    async def read(self, key: str) -> AsyncIterator[bytes]:
        response = await self._call("get_object", Bucket=self.bucket, Key=self._object(key))
        body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=self._object(key))

    async def check(self) -> None:
        await self._call("head_bucket", Bucket=self.bucket)
        await asyncio.to_thread(lambda: self.spool.mkdir(parents=True, exist_ok=True))


def storage_from_settings(settings: Any) -> LocalStorage | S3Storage:
    directory = settings.recording_dir or settings.data_dir / "recordings"
    if settings.recording_storage == "s3":
        return S3Storage(
            directory,
            bucket=settings.s3_bucket or "",
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    return LocalStorage(directory)
