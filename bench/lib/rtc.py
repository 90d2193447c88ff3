"""aiortc peer-connection helpers every benchmark peer uses the same way."""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver

from bench.lib.errors import BenchError

NO_STUN = RTCConfiguration(iceServers=[])  # everything runs on one machine: host candidates only
RECEIVE_BUFFER = 4 << 20  # bytes asked for each receiving socket (the kernel caps it at rmem_max)


def prefer_codec(transceiver: RTCRtpTransceiver, mime_type: str) -> None:
    """Offer only ``mime_type`` (e.g. ``video/VP8``) on ``transceiver``: every run sends the same codec."""
    kind = mime_type.split("/")[0]
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType == mime_type])


async def wait_connected(pc: RTCPeerConnection, timeout: float, what: str = "the publisher") -> None:
    """Until ``pc`` is connected; raise if it fails or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState == "failed" or time.monotonic() > deadline:
            raise BenchError(f"{what} connection did not connect ({pc.connectionState})")
        await asyncio.sleep(0.05)


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER) -> None:
    """Let a worker that loses the CPU for a moment catch up instead of dropping datagrams."""
    for transceiver in pc.getTransceivers():
        with contextlib.suppress(Exception):  # aioice internals; a bench may lean on them
            connection = transceiver.receiver.transport.transport.iceGatherer._connection
            for protocol in connection._protocols:
                sock = protocol.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
