"""HTTP players of a live room's HLS stream, as the players of a real audience fetch it.

``ll_player`` does what hls.js does in low-latency mode (a blocking playlist reload for the
preload-hinted part, then every new part); ``segment_player`` what a player without LL-HLS
does (poll the playlist once a second, fetch whole segments). Each fetch is timed; nothing
is decoded: the benchmark measures what the server spends serving them.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import aiohttp

_HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[0-9a-f]{8}-(\d+)\.(\d+)\.m4s"')
_PART = re.compile(r'#EXT-X-PART:[^\n]*URI="([^"]+)"')


class Stats:
    """What one worker's players fetched in the measured window (``window``, CLOCK_MONOTONIC): requests,
    bytes, errors by status, and each fetch's latency (request to last byte), media and playlist reloads apart."""

    def __init__(self) -> None:
        self.window: tuple[float, float] = (math.inf, math.inf)
        self.requests = 0
        self.bytes = 0
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.media_ms: list[float] = []
        self.reload_ms: list[float] = []

    def record(self, started: float, ended: float, size: int, status: int, reload: bool) -> None:
        if not self.window[0] <= ended <= self.window[1]:
            return
        self.requests += 1
        self.bytes += size
        if status != 200:
            self.errors += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            return
        (self.reload_ms if reload else self.media_ms).append((ended - started) * 1000)


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    stats: Stats,
    *,
    reload: bool = False,
    params: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET ``url``, timed into ``stats``: (status, body), (0, b"") where it failed."""
    started = time.monotonic()
    try:
        async with session.get(url, params=params) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        stats.record(started, time.monotonic(), 0, 0, reload)
        return 0, b""
    stats.record(started, time.monotonic(), len(body), status, reload)
    return status, body


async def ll_player(session: aiohttp.ClientSession, base: str, stats: Stats, stop: asyncio.Event) -> None:
    """Like hls.js in low-latency mode: blocking reload for the hinted part, then the new parts."""
    fetched: set[str] = set()
    params: dict[str, str] | None = None
    while not stop.is_set():
        status, body = await fetch(session, base + "/live.m3u8", stats, reload=params is not None, params=params)
        if status != 200:
            await asyncio.sleep(0.2)
            params = None
            continue
        text = body.decode()
        new = [uri for uri in _PART.findall(text) if uri not in fetched]
        for uri in new[-4:] if not fetched else new:  # a fresh player starts near the edge
            fetched.add(uri)
            await fetch(session, f"{base}/{uri}", stats)
        hint = _HINT.search(text)
        params = {"_HLS_msn": hint[1], "_HLS_part": hint[2]} if hint else None


async def segment_player(session: aiohttp.ClientSession, base: str, stats: Stats, stop: asyncio.Event) -> None:
    """A player without LL-HLS: poll the playlist, fetch whole new segments."""
    fetched: set[str] = set()
    while not stop.is_set():
        status, body = await fetch(session, base + "/live.m3u8", stats)
        if status == 200:
            segments = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
            for uri in segments[-1:] if not fetched else segments:
                if uri not in fetched:
                    fetched.add(uri)
                    await fetch(session, f"{base}/{uri}", stats)
        await asyncio.sleep(1.0)
