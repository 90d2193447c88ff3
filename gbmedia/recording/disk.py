"""The free-space reserve recordings leave on their filesystem (``GBMEDIA_MIN_FREE_DISK_MB``).

The recording directory usually shares a filesystem with the data directory, and so
with the embedded PostgreSQL: a recording that filled the disk would leave the
database unable to write its WAL, and the whole node down. Recordings therefore stop
short of a reserve: a start is refused (507 ``insufficient_storage``) when free
space is below it, and running recordings are stopped cleanly (their files
finalized, ``stop_reason`` ``disk_full``) when a periodic check finds it crossed.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from gbmedia.errors import ApiError, insufficient_storage

MB = 1024 * 1024


@dataclass(frozen=True)
class DiskGuard:
    """Free space of the filesystem holding ``path``, against ``min_free_bytes`` (0: no guard)."""

    path: Path
    min_free_bytes: int
    interval: float = 2.0  # seconds between checks while a recording writes

    @property
    def enabled(self) -> bool:
        return self.min_free_bytes > 0

    async def free_bytes(self) -> int:
        """Free bytes (for an unprivileged writer) where recordings go; statvfs runs off the loop."""
        return await asyncio.to_thread(self._free_bytes)

    def _free_bytes(self) -> int:
        path = self.path
        while not path.exists() and path != path.parent:  # the directory may not exist yet
            path = path.parent
        return shutil.disk_usage(path).free

    async def shortage(self) -> ApiError | None:
        """The 507 a new recording gets when free space is below the reserve, else None."""
        if not self.enabled:
            return None
        free = await self.free_bytes()
        if free >= self.min_free_bytes:
            return None
        return insufficient_storage(
            f"only {free // MB} MB free where recordings are written, below the "
            f"{self.min_free_bytes // MB} MB kept for the database (GBMEDIA_MIN_FREE_DISK_MB)",
            free_mb=free // MB,
            min_free_mb=self.min_free_bytes // MB,
        )
