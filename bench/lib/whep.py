"""WHIP and WHEP clients: a publisher and viewers that signal over HTTP (``POST /whip/{room}``, ``/whep/{room}``).

The live benchmark's scenario is a broadcast: one encoder publishing, players watching,
each with one HTTP exchange and no socket. Both count and report exactly as the ``/rtc``
publisher and subscribers do, so the figures compare.
"""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import contextlib

import aiohttp
from aiortc import RTCSessionDescription

from bench.lib.errors import BenchError
from bench.lib.publisher import Publisher
from bench.lib.rtc import enlarge_receive_buffers, wait_connected
from bench.lib.signaling import Signaling
from bench.lib.subscriber import SocketPoller, Subscriber
from gbmedia.sfu.aiortc_adapter import keep_consent_on, tap_receiver

SDP = {"Content-Type": "application/sdp"}


async def exchange(session: aiohttp.ClientSession, url: str, offer: str, token: str, what: str) -> tuple[str, str]:
    """POST an SDP offer to a WHIP or WHEP endpoint: (the resource's ``Location``, the answer)."""
    async with session.post(url, data=offer, headers={**SDP, "Authorization": f"Bearer {token}"}) as resp:
        if resp.status != 201:
            raise BenchError(f"{what}: HTTP {resp.status}: {await resp.text()}")
        return resp.headers["Location"], await resp.text()


async def delete(session: aiohttp.ClientSession, url: str, token: str) -> None:
    """DELETE a WHIP or WHEP resource, as a client that leaves does (a failure is ignored: it is going anyway)."""
    with contextlib.suppress(Exception):
        async with session.delete(url, headers={"Authorization": f"Bearer {token}"}):
            pass


class WhipPublisher(Publisher):
    """The ``/rtc`` publisher's track and encoder, publishing over WHIP instead of the socket.

    It still opens a signaling socket (without joining) to ping the server all along:
    the reply time is the server's event-loop lag.
    """

    def __init__(self, bitrate: int, width: int, height: int, room: str) -> None:
        super().__init__(bitrate, width, height)
        self.room = room
        self.location = ""
        self.token = ""
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self, session: aiohttp.ClientSession, url: str, token: str, timeout: float) -> None:
        self.session, self.url, self.token = session, url, token
        self.signaling = await Signaling.connect(session, url)
        _, offer = await self._offer()
        self.location, answer = await exchange(session, f"{url}/whip/{self.room}", offer, token, "WHIP publish")
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser (or OBS)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self.track_id = self.location.rsplit("/", 1)[-1]
        await self._connected(timeout)

    async def _leave(self) -> None:
        if self.session is not None and self.location:
            await delete(self.session, f"{self.url}{self.location}", self.token)
        if self.signaling is not None:
            await self.signaling.close()


class WhepViewer(Subscriber):
    """One WHEP player that counts packets like the ``/rtc`` subscribers (no decoding).

    ``clear``: once connected, count from the clear RTP headers without decrypting, as the forwarding
    benchmark's clear subscribers do (``Subscriber``): the viewer is then cheap enough that one machine
    can offer a server the hundreds of viewers a live stream has.

    ``connect_timeout``: ``join`` returns only once ICE and DTLS completed (or raises after that many
    seconds), so that a worker bounding its joins in flight bounds the handshakes the server works on,
    not only the HTTP exchanges that precede them."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        room: str,
        *,
        clear: bool = False,
        connect_timeout: float | None = None,
        poller: SocketPoller | None = None,
    ) -> None:
        super().__init__(session, url, token, clear=clear, poller=poller)
        self.room = room
        self.location = ""
        self.connect_timeout = connect_timeout

    async def join(self) -> None:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        tap_receiver(transceiver.receiver, self.counter)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        enlarge_receive_buffers(self.pc)
        self.location, answer = await exchange(
            self.session, f"{self.url}/whep/{self.room}", self.pc.localDescription.sdp, self.token, "WHEP play"
        )
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        if self.connect_timeout is not None:
            await wait_connected(self.pc, self.connect_timeout, "a WHEP viewer's")

    async def _leave(self) -> None:
        if self.location:
            await delete(self.session, f"{self.url}{self.location}", self.token)
