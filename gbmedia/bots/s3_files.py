"""An instance's bot files in an S3 bucket (``GBMEDIA_BOT_FILES_STORAGE=s3``), with the recordings' S3 settings.

The same FileStore as :class:`~gbmedia.bots.files.InstanceFiles`, so every keyword works
on either: objects under ``<GBMEDIA_S3_PREFIX>/bots/<instance_id>/files/<path>``, the
same path rules (:func:`~gbmedia.bots.files.clean_name`: no ``..``, no absolute paths,
so no key outside the instance's prefix), folders as key prefixes plus an empty
``<folder>/`` marker so a created folder is listed before it holds anything. boto3 is
blocking: every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gbmedia.bots.errors import Fault
from gbmedia.bots.files import clean_name


def s3_client(settings: Any) -> Any:
    """A boto3 S3 client from the node's ``GBMEDIA_S3_*`` settings (credentials: boto3's chain when unset)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


@dataclass
class S3Files:
    client: Any
    bucket: str
    prefix: str  # the node's GBMEDIA_S3_PREFIX
    instance_id: str

    @property
    def root(self) -> str:
        base = f"{self.prefix.strip('/')}/" if self.prefix.strip("/") else ""
        return f"{base}bots/{self.instance_id}/files/"

    def key(self, name: str) -> str:
        return self.root + clean_name(name)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self.client, method), Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise Fault(f"the bot's file store failed: {exc}") from None
        except BotoCoreError as exc:
            raise Fault(f"the bot's file store failed: {exc}") from None

    async def _keys(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: dict[str, Any] = {}
        while True:
            page = await self._call("list_objects_v2", Prefix=prefix, **token)
            found.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def kind(self, name: str) -> str | None:
        key = self.key(name)
        if key == self.root:
            return "folder"
        if await self._call("head_object", Key=key) is not None:
            return "file"
        page = await self._call("list_objects_v2", Prefix=key + "/", MaxKeys=1)
        return "folder" if page.get("KeyCount", 0) else None

    async def write(self, name: str, data: bytes) -> str:
        cleaned = clean_name(name)
        if await self.kind(cleaned) == "folder":
            raise Fault(f"{name} is a folder")
        await self._call("put_object", Key=self.root + cleaned, Body=data)
        return cleaned

    async def read(self, name: str, limit: int) -> bytes:
        answer = await self._call("get_object", Key=self.key(name))
        if answer is None:
            raise Fault(f"no file {name}")
        if answer["ContentLength"] > limit:
            answer["Body"].close()
            raise Fault(f"file {name} is larger than {limit} bytes")
        data: bytes = await asyncio.to_thread(answer["Body"].read)
        return data

    async def listing(self, name: str) -> list[dict[str, Any]]:
        folder = clean_name(name) if name and name.strip() not in ("", ".") else ""
        prefix = self.root + (folder + "/" if folder else "")
        if folder and await self.kind(folder) != "folder":
            raise Fault(f"no folder {name}")
        entries: dict[str, dict[str, Any]] = {}
        for item in await self._keys(prefix):
            rest = item["Key"][len(prefix) :]
            if not rest:
                continue  # the folder's own marker
            first, _, below = rest.partition("/")
            path = f"{folder}/{first}" if folder else first
            if below or rest.endswith("/"):
                entries.setdefault(first, {"name": first, "path": path, "folder": True, "size": 0})
            else:
                entries[first] = {"name": first, "path": path, "folder": False, "size": int(item["Size"])}
        return [entries[k] for k in sorted(entries)]

    async def delete(self, name: str) -> bool:
        key = self.key(name)
        if key == self.root:
            raise Fault("the bot's root folder cannot be deleted")
        doomed = [item["Key"] for item in await self._keys(key + "/")]
        if await self._call("head_object", Key=key) is not None:
            doomed.append(key)
        for start in range(0, len(doomed), 1000):
            batch = [{"Key": k} for k in doomed[start : start + 1000]]
            await self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
        return bool(doomed)

    async def make_folder(self, name: str) -> str:
        cleaned = clean_name(name)
        if cleaned and await self.kind(cleaned) != "folder":
            await self._call("put_object", Key=self.root + cleaned + "/", Body=b"")
        return cleaned

    async def copy(self, source: str, target: str) -> str:
        src, dst = clean_name(source), clean_name(target)
        if await self.kind(src) != "file":
            raise Fault(f"no file {source}")
        if await self.kind(dst) == "folder":
            dst = f"{dst}/{PurePosixPath(src).name}" if dst else PurePosixPath(src).name
        await self._call("copy_object", Key=self.root + dst, CopySource={"Bucket": self.bucket, "Key": self.root + src})
        return dst
