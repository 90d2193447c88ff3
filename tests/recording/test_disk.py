"""The free-space reserve (gbmedia/recording/disk.py) on real filesystems."""

from __future__ import annotations

import shutil
from pathlib import Path

from gbmedia.recording.disk import MB, DiskGuard


async def test_free_space_is_that_of_the_filesystem_even_before_the_directory_exists(tmp_path: Path):
    guard = DiskGuard(tmp_path / "recordings" / "not" / "yet", 1)
    free = await guard.free_bytes()
    assert abs(free - shutil.disk_usage(tmp_path).free) < 64 * MB  # the same filesystem, read moments apart
    assert not (tmp_path / "recordings").exists()  # only read, nothing created


async def test_below_the_reserve_a_start_gets_507_with_what_is_free(tmp_path: Path):
    free = shutil.disk_usage(tmp_path).free
    short = await DiskGuard(tmp_path, free + 1024 * MB).shortage()
    assert short is not None and (short.status, short.code) == (507, "insufficient_storage")
    assert short.details["min_free_mb"] == (free + 1024 * MB) // MB
    assert short.details["free_mb"] < short.details["min_free_mb"]
    assert "GBMEDIA_MIN_FREE_DISK_MB" in short.message
    assert await DiskGuard(tmp_path, 1).shortage() is None  # above it


async def test_a_reserve_of_zero_turns_the_guard_off(tmp_path: Path):
    guard = DiskGuard(tmp_path, 0)
    assert not guard.enabled
    assert await guard.shortage() is None
