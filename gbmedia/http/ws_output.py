"""A WebSocket's outgoing frames, written without ever waiting for its client; cut off past a bound.

A server that awaits each socket's drain lets one client that stops reading hold up
whoever sends to it: a room's broadcast, and with it the join that caused it, would
wait until the heartbeat gives up on that client (tens of seconds). So frames go
straight to the socket's transport, in one synchronous write each, and nothing waits:
the transport's buffer is the socket's queue. Its size is the bound: once more than
``limit`` bytes are unsent the client is **cut off**. It gets nothing more, its
listeners are told (the signaling removes its participant from the room; chat
forgets it when the socket has closed), and the socket is closed with
:data:`CLOSE_SLOW_READER`; that close frame queues behind what
the client has not read, so if it has not gone out within :data:`CUT_OFF_GRACE`
seconds the connection is aborted. Either way the client reconnects and catches up
(``chat_history``, a new ``join``).

One :class:`SocketOutput` per socket, shared by everything that writes to it (the
signaling replies and room events, chat's deliveries), so the bound is the socket's.
aiohttp writes its own frames (pings, close) to the same transport, each in one
synchronous write, so frames never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 4 * 1024 * 1024  # unsent bytes of one socket before it is cut off (GBMEDIA_SOCKET_MAX_BUFFERED_BYTES)
CLOSE_SLOW_READER = 4008  # the close code of a socket cut off for not reading (docs/protocol.md)
SLOW_READER = "slow_reader"
CUT_OFF_GRACE = 5.0  # seconds the close frame has to get past the unread output before the connection is dropped


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it.

    Built once per event and written as is to every recipient. A socket that
    negotiated permessage-deflate may still get uncompressed frames (RSV1 clear,
    RFC 7692 6), and writing them leaves its compression context untouched.
    """
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


class SocketOutput:
    """Where one socket's frames go: its transport, now (:meth:`write`) or at the end of the turn (:meth:`push`)."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.limit = limit
        self.cut_off = False
        self._backlog: list[bytes] = []
        self._listeners: list[Callable[[], None]] = []
        self._closing: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def on_cut_off(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (once) when the client is cut off for not reading."""
        self._listeners.append(listener)

    def open(self) -> bool:
        return (
            not self.cut_off and self.transport is not None and not self.ws.closed and not self.transport.is_closing()
        )

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write(self, frame: bytes) -> bool:
        """Write ``frame`` now, after anything pushed before it; False when the socket takes no more."""
        self._backlog.append(frame)
        return self._flush()

    def push(self, frame: bytes) -> None:
        """Queue ``frame`` to leave with the others of this turn and the next, in one write (chat's
        deliveries: on a busy node a socket costs one system call per turn, not one per event)."""
        if self.cut_off:
            return
        if not self._backlog:
            self._loop.call_soon(self._flush_next_turn)
        self._backlog.append(frame)

    def _flush_next_turn(self) -> None:
        # A batch's events reach the sessions in the turn it commits, its acks one turn later (when the
        # senders' tasks resume): waiting one more turn puts a sender's ack in the same write as its events.
        self._loop.call_soon(self._flush)

    def _flush(self) -> bool:
        frames, self._backlog = self._backlog, []
        if not self.open():
            return False  # closing: what it missed, the client catches up with after reconnecting
        if self.buffered() > self.limit:
            self._cut_off()
            return False
        if frames:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))  # type: ignore[union-attr]
        return True

    def _cut_off(self) -> None:
        self.cut_off = True
        log.warning("client too slow; cutting it off", extra={"buffered": self.buffered(), "limit": self.limit})
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # one listener's failure must not keep the socket open
                log.exception("a cut-off listener failed")
        self._closing = asyncio.ensure_future(self._close())
        self._loop.call_later(CUT_OFF_GRACE, self._abort_if_stuck)

    async def _close(self) -> None:
        """Close with :data:`CLOSE_SLOW_READER` (the frame goes out after what the client has not read)."""
        with contextlib.suppress(Exception):
            await self.ws.close(code=CLOSE_SLOW_READER, message=SLOW_READER.encode())

    def _abort_if_stuck(self) -> None:
        """Drop the connection if its output, the close frame last, still has not gone out.

        A closing transport waits for its unsent output to be read, which from this
        client may never happen; one whose output did go out has closed, or is closing, by itself.
        """
        if self.transport is not None and self.transport.get_write_buffer_size() > 0:
            log.info("slow client's close did not get through; dropping the connection")
            self.transport.abort()
