"""An instance's files: a directory of its own under the node's data dir.

Every path a dialog names is relative to that directory; absolute paths, ``..`` and
symbolic links leading out of it are refused after resolving, so a dialog reaches only
its instance's files. Disk work runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from gbmedia.bots.errors import Fault


def clean_name(name: str) -> str:
    """``name`` as a relative POSIX path with no ``..`` and no absolute start, or a Fault (every store's rule)."""
    cleaned = name.strip().replace("\\", "/")
    if not cleaned or "\0" in cleaned or cleaned.startswith("/") or any(p == ".." for p in cleaned.split("/")):
        raise Fault(f"{name!r} is not a file name of this bot (no absolute paths, no '..')")
    return "/".join(p for p in cleaned.split("/") if p not in ("", "."))


class InstanceFiles:
    """The FileStore of one instance, rooted at ``<data_dir>/bots/<instance_id>/files``."""

    def __init__(self, data_dir: Path, instance_id: str) -> None:
        self.root = (Path(data_dir) / "bots" / instance_id / "files").resolve()

    @classmethod
    def rooted(cls, root: Path) -> InstanceFiles:
        """Files under ``root`` itself (``gbmedia bot run --files DIR``), with the same path rules."""
        files = cls.__new__(cls)
        files.root = Path(root).resolve()
        return files

    def path(self, name: str) -> Path:
        """The real path of ``name`` inside the root, or a Fault."""
        cleaned = clean_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        resolved = (self.root / cleaned).resolve() if cleaned else self.root
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise Fault(f"{name!r} leads outside this bot's files")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    async def kind(self, name: str) -> str | None:
        """``file``, ``folder``, or None when nothing is there."""

        def work() -> str | None:
            path = self.path(name)
            return "folder" if path.is_dir() else "file" if path.is_file() else None

        return await asyncio.to_thread(work)

    async def write(self, name: str, data: bytes) -> str:
        def work() -> str:
            path = self.path(name)
            if path.is_dir():
                raise Fault(f"{name} is a folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return self.relative(path)

        return await asyncio.to_thread(work)

    async def read(self, name: str, limit: int) -> bytes:
        def work() -> bytes:
            path = self.path(name)
            if not path.is_file():
                raise Fault(f"no file {name}")
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise Fault(f"file {name} is larger than {limit} bytes")
            return data

        return await asyncio.to_thread(work)

    async def listing(self, name: str) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            path = self.path(name or ".")
            if not path.is_dir():
                raise Fault(f"no folder {name}")
            entries = []
            for child in sorted(path.iterdir()):
                info = child.stat()
                entries.append(
                    {
                        "name": child.name,
                        "path": self.relative(child),
                        "folder": child.is_dir(),
                        "size": 0 if child.is_dir() else info.st_size,
                    }
                )
            return entries

        return await asyncio.to_thread(work)

    async def delete(self, name: str) -> bool:
        def work() -> bool:
            path = self.path(name)
            if path == self.root:
                raise Fault("the bot's root folder cannot be deleted")
            if path.is_dir():
                shutil.rmtree(path)
                return True
            if path.exists():
                path.unlink()
                return True
            return False

        return await asyncio.to_thread(work)

    async def make_folder(self, name: str) -> str:
        def work() -> str:
            path = self.path(name)
            path.mkdir(parents=True, exist_ok=True)
            return self.relative(path)

        return await asyncio.to_thread(work)

    async def copy(self, source: str, target: str) -> str:
        def work() -> str:
            src, dst = self.path(source), self.path(target)
            if not src.is_file():
                raise Fault(f"no file {source}")
            if dst.is_dir():
                dst = dst / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            return self.relative(dst)

        return await asyncio.to_thread(work)
