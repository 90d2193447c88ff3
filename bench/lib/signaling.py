"""A client of gbmedia's ``/rtc`` signaling socket: requests with ids, everything else to a callback."""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.lib.errors import BenchError


def ws_url(http_url: str) -> str:
    """The ``/rtc`` WebSocket URL of a server at ``http_url``."""
    return http_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/") + "/rtc"


class Signaling:
    """One /rtc socket: requests with ids, other server messages to ``on_event``."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.ws = ws
        self.on_event = on_event
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Signaling:
        """A socket to the server at ``url`` (its HTTP URL)."""
        return cls(await session.ws_connect(ws_url(url)), on_event)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            future = self._pending.pop(str(event.get("id")), None) if "id" in event else None
            if future is not None and not future.done():
                future.set_result(event)
            elif self.on_event is not None:
                self.on_event(event)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("signaling socket closed"))

    async def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send ``message`` with a fresh id and wait for the reply with that id; an ``error`` reply raises."""
        self._next += 1
        request_id = f"b{self._next}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send_json({**message, "id": request_id})
        reply = await asyncio.wait_for(future, timeout)
        if reply.get("type") == "error":
            raise BenchError(f"{message['type']} refused: {reply.get('code')}: {reply.get('message')}")
        return reply

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def leave(self) -> None:
        """``leave`` (a failure ignored: the socket may be gone already), then close the socket."""
        with contextlib.suppress(Exception):
            await self.request({"type": "leave"}, timeout=5)
        await self.close()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self.ws.close()
