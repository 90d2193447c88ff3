"""A minimal RFC 6455 WebSocket client on a plain asyncio protocol.

On a 2-core machine the chat benchmark's clients compete with the server and PostgreSQL for
the CPU; aiohttp's client costs a task wake-up and a message object per frame, this one parses
every frame of a read in one loop and hands each text message on synchronously.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import urllib.parse
from collections.abc import Callable

from bench.lib.errors import BenchError

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


class RawWebSocket(asyncio.Protocol):
    """A minimal RFC 6455 client on a plain asyncio protocol: the handshake (with its
    Sec-WebSocket-Accept check), masked text frames out, unmasked frames in (fragments
    reassembled, pings answered, close echoed), no extensions.

    Why not aiohttp's client: on a 2-core machine the clients compete with the server
    and PostgreSQL, and aiohttp costs a task wake-up and a message object per frame.
    This one parses every frame of a read in one loop and hands each text message to
    ``on_text`` synchronously: the same frames and JSON, a fraction of the CPU.
    """

    def __init__(self, on_text: Callable[[bytes], None], on_closed: Callable[[], None]) -> None:
        self.on_text = on_text
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._open = False
        self.closed = False

    @classmethod
    async def connect(cls, url: str, on_text: Callable[[bytes], None], on_closed: Callable[[], None]) -> RawWebSocket:
        parts = urllib.parse.urlsplit(url)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(on_text, on_closed), parts.hostname, parts.port)
        assert protocol.transport is not None
        protocol.transport.write(
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {protocol._key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await asyncio.wait_for(protocol.handshake, 30)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            accept = base64.b64encode(hashlib.sha1((self._key + WS_GUID).encode()).digest()).decode()
            if not head[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
                self.handshake.set_exception(BenchError(f"WebSocket handshake refused: {head[0]}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            if headers.get("sec-websocket-extensions"):
                self.handshake.set_exception(BenchError("the server chose an extension nobody asked for"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self._open = True
            self.handshake.set_result(None)
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0 = buffer[pos]
            length = buffer[pos + 1]
            if length & 0x80 or b0 & 0x70:
                raise BenchError("the server sent a masked frame or one with RSV bits (no extension was agreed)")
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            payload = bytes(buffer[start:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x0):  # text, continuation (no binary frames on /rtc)
                if b0 & 0x80 and not self._fragments:
                    self.on_text(payload)
                else:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        self.on_text(b"".join(self._fragments))
                        self._fragments.clear()
            elif opcode == 0x9:  # ping
                self._write(0xA, payload)
            elif opcode == 0x8:  # close: echo it, then the server closes the TCP connection
                if not self.closed:
                    self._write(0x8, payload[:2])
            elif opcode != 0xA:
                raise BenchError(f"unexpected WebSocket opcode {opcode}")
        if pos:
            del buffer[:pos]

    def _write(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        # Client frames are masked (RFC 6455 5.3): XOR with the key repeated, as one big integer.
        repeated = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def send_text(self, text: str) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("socket closed")
        self._write(0x1, text.encode())

    async def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._write(0x8, (1000).to_bytes(2, "big"))
            for _ in range(50):
                if self.closed:
                    break
                await asyncio.sleep(0.02)
            self.transport.close()
