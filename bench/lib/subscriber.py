"""Subscribers: receivers that count RTP packets and frames without decoding, and the worker loop that runs them.

A receiver that decoded would measure its own CPU, not the server's, and would need a
core per few subscribers; these tap the raw packets
(:func:`gbmedia.sfu.aiortc_adapter.tap_receiver`) and count distinct sequence numbers,
marker bits (frames) and keyframes. ``Subscriber`` joins gbmedia's ``/rtc``;
``JanusSubscriber`` Janus's VideoRoom; ``bench.lib.whep.WhepViewer`` plays over WHEP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.lib import janus
from bench.lib.errors import BenchError
from bench.lib.proc import cpu_seconds, udp_sockets
from bench.lib.rtc import NO_STUN, enlarge_receive_buffers
from bench.lib.signaling import Signaling
from bench.lib.workers import commands, reply
from gbmedia.sfu.aiortc_adapter import keep_consent_on, read_rtp_in_the_clear, tap_receiver
from gbmedia.sfu.codecs import is_keyframe

log = logging.getLogger(__name__)

POLL_MS = 5.0  # how often clear subscribers read their sockets by default (SocketPoller)


@dataclass
class Counts:
    """What one subscriber received so far."""

    packets: int = 0  # every packet received, retransmissions included (what the server sent)
    unique: int = 0  # distinct sequence numbers
    duplicates: int = 0  # retransmissions of a packet already received
    frames: int = 0  # marker bits of distinct packets
    keyframes: int = 0
    bytes: int = 0
    ext_seq: int | None = None  # highest extended sequence number seen
    first_at: float | None = None


class PacketCounter:
    """``Counts`` from raw RTP packets (a ``tap_receiver`` sink): duplicates told apart from new packets by
    the sequence numbers of the last 8192 distinct packets, loss from the extended sequence number."""

    def __init__(self) -> None:
        self.counts = Counts()
        self._seen = bytearray(65536)
        self._recent: collections.deque[int] = collections.deque()

    def __call__(self, packet: Any, codec: Any) -> None:
        """A packet aiortc decrypted and parsed (``tap_receiver``)."""
        if self._count(packet.sequence_number, packet.marker, len(packet.payload)):
            if packet.payload and is_keyframe(codec.mimeType, packet.payload):
                self.counts.keyframes += 1

    def clear(self, data: bytes) -> None:
        """An SRTP packet as it arrived (``read_rtp_in_the_clear``): its header is readable, its payload
        is not, so keyframes go uncounted and the bytes are the payload's plus padding (the 10-byte
        authentication tag of AES_CM_128_HMAC_SHA1_80, the profile aiortc offers first, taken off)."""
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= offset + 4:
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        self._count(int.from_bytes(data[2:4], "big"), data[1] >> 7, max(0, len(data) - offset - 10))

    def _count(self, seq: int, marker: int, size: int) -> bool:
        """Count one packet; True when it is new (not a retransmission of one already counted)."""
        c = self.counts
        if c.first_at is None:
            c.first_at = time.monotonic()
        c.packets += 1
        c.bytes += size
        if self._seen[seq]:
            c.duplicates += 1  # a NACK answered, or a resend: counted, not a new frame
            return False
        self._seen[seq] = 1
        self._recent.append(seq)
        if len(self._recent) > 8192:
            self._seen[self._recent.popleft()] = 0
        c.unique += 1
        c.frames += marker
        if c.ext_seq is None:
            c.ext_seq = seq
        else:
            delta = (seq - c.ext_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                c.ext_seq += delta
        return True


class SocketPoller:
    """Drains the clear subscribers' sockets of one worker process from one timer, every ``interval`` s.

    A subscriber that waits on its socket is woken by whoever sends to it. On one machine that
    sender is the server being measured: every wake-up of a subscriber process that a datagram
    causes is paid for on the server's CPU (the kernel's ``try_to_wake_up``; in a virtual machine an
    interrupt to the other core as well), a cost a server sending through a network card to other
    machines does not have. A socket no one waits on fills without waking anyone; the worker reads
    it on its own clock instead, each datagram at most ``interval`` late (the sequence numbers,
    frames and losses counted are the same). Each socket's datagrams go to the ``drain`` it was
    watched with (a :data:`gbmedia.sfu.aiortc_adapter.SocketWatch`).
    """

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("a poll interval must be positive")
        self.interval = interval
        self.ticks = 0
        self._drains: dict[int, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, fd: int, drain: Callable[[], None]) -> Callable[[], None]:
        self._drains[fd] = drain
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        return functools.partial(self._unwatch, fd, drain)

    def _unwatch(self, fd: int, drain: Callable[[], None]) -> None:
        if self._drains.get(fd) is drain:
            del self._drains[fd]
        if not self._drains and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        self.ticks += 1
        for drain in list(self._drains.values()):
            try:
                drain()
            except Exception:  # one subscriber's failure must not stop the others' counting
                log.exception("draining a subscriber's socket failed")


@functools.cache
def socket_poller(interval_ms: float) -> SocketPoller | None:
    """This process's poller for ``interval_ms`` (one for all its subscribers); None for 0: each socket
    is drained when it becomes readable, as before."""
    return SocketPoller(interval_ms / 1000) if interval_ms > 0 else None


class Subscriber:
    """One participant that only receives: one socket, one peer connection.

    ``clear``: once connected, count packets from their clear RTP headers, many per socket read,
    without aiortc decrypting them (:func:`read_rtp_in_the_clear`): a subscriber then costs a few
    microseconds per packet, so one machine can offer a server hundreds of them. ``poller``: read
    those on its clock instead of when each socket becomes readable (:class:`SocketPoller`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        clear: bool = False,
        poller: SocketPoller | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.token = token
        self.pc = RTCPeerConnection(NO_STUN)
        self.counter = PacketCounter()
        self.clear = clear
        self.poller = poller
        self._release_socket: Callable[[], None] | None = None
        if clear:
            self.pc.on("connectionstatechange", self._take_the_socket)
        self.signaling: Signaling | None = None
        self.errors: list[str] = []
        self._tapped: set[int] = set()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.rtx_removed = 0  # RTX payload types taken out of the server's offers

    @property
    def counts(self) -> Counts:
        return self.counter.counts

    def _take_the_socket(self) -> None:
        if self.pc.connectionState == "connected" and self._release_socket is None:
            watch = self.poller.watch if self.poller is not None else None
            self._release_socket = read_rtp_in_the_clear(self.pc, self.counter.clear, watch=watch)

    async def join(self) -> None:
        self.signaling = await Signaling.connect(self.session, self.url, self._on_event)
        await self.signaling.request({"type": "join", "token": self.token, "protocol": 1, "auto_subscribe": True})

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "offer":
            task = asyncio.ensure_future(self._answer(event["sdp"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.get("type") in ("error", "removed", "room_closed"):
            self.errors.append(json.dumps(event))

    async def _answer(self, sdp: str) -> None:
        try:
            async with self._lock:
                answer = await self._apply_offer(sdp)
                assert self.signaling is not None
                await self.signaling.send({"type": "answer", "sdp": answer})
        except Exception as exc:  # reported to the orchestrator in snapshots
            self.errors.append(f"answer failed: {exc!r}")

    async def _apply_offer(self, sdp: str) -> str:
        """The server's offer in, the answer out: the same for every server (only the signaling differs).

        RTX is taken out of the offer first (gbmedia offers none; Janus does): ``tap_receiver`` skips RTX
        packets, so without RTX both servers' repairs arrive as the original packets and count alike."""
        sdp, removed = janus.strip_rtx(sdp)
        self.rtx_removed += removed
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) not in self._tapped:
                self._tapped.add(id(receiver))
                tap_receiver(receiver, self.counter)  # raw RTP, never decoded (before a clear reader, if any)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        enlarge_receive_buffers(self.pc)
        return self.pc.localDescription.sdp

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self.counts)
        data["errors"] = self.errors[-3:]
        data["state"] = self.pc.connectionState
        data["rtx_removed"] = self.rtx_removed
        data["clear"] = self._release_socket is not None
        return data

    async def close(self) -> None:
        await self._leave()
        for task in list(self._tasks):
            task.cancel()
        if self._release_socket is not None:
            self._release_socket()
        with contextlib.suppress(Exception):
            await self.pc.close()

    async def _leave(self) -> None:
        if self.signaling is not None:
            await self.signaling.leave()


class JanusSubscriber(Subscriber):
    """The same subscriber, signaled over Janus's HTTP API: its own session and VideoRoom handle, ``join``
    as a subscriber to the publisher's feed; Janus's offer comes in the event, the answer goes with
    ``start``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        room: int,
        feed: int,
        name: str,
        *,
        clear: bool = False,
        poller: SocketPoller | None = None,
    ) -> None:
        super().__init__(session, url, "", clear=clear, poller=poller)
        self.room, self.feed, self.name = room, feed, name
        self.janus: janus.JanusSession | None = None
        self.handle = 0

    async def join(self) -> None:
        self.janus = janus.JanusSession(self.session, self.url, self._on_janus_event)
        await self.janus.create()
        handle = self.handle = await self.janus.attach()
        attached = await self.janus.message(
            handle,
            {"request": "join", "room": self.room, "ptype": "subscriber", "streams": [{"feed": self.feed}]},
            timeout=60,
        )
        if "jsep" not in attached:
            raise BenchError(f"janus sent the subscriber no offer: {attached}")
        async with self._lock:
            answer = await self._apply_offer(attached["jsep"]["sdp"])
        await self.janus.message(handle, {"request": "start"}, janus.jsep("answer", answer), timeout=60)

    def snapshot(self) -> dict[str, Any]:
        data = super().snapshot()
        data["janus_handle"] = [self.janus.id, self.handle] if self.janus is not None and self.handle else None
        return data

    def _on_janus_event(self, event: dict[str, Any]) -> None:
        if event.get("janus") in ("hangup", "detached") or "error" in event.get("plugindata", {}).get("data", {}):
            self.errors.append(json.dumps(event))

    async def _leave(self) -> None:
        if self.janus is not None:
            await self.janus.destroy()


async def join_all(subscribers: list[Subscriber], concurrency: int | None = None) -> list[BaseException | None]:
    """Every subscriber's ``join``, at most ``concurrency`` at once (None or 0: all at once): each one's
    exception, or None where it joined.

    A worker holding a hundred clear subscribers would otherwise open a hundred offers, ICE checks and
    DTLS handshakes in the same instant, against a server pinned to one core: the handshakes queue up
    behind each other and time out, which would measure the stampede, not how many viewers it holds."""
    limit = asyncio.Semaphore(concurrency if concurrency and concurrency > 0 else max(1, len(subscribers)))

    async def one(subscriber: Subscriber) -> None:
        async with limit:
            await subscriber.join()

    return list(await asyncio.gather(*(one(s) for s in subscribers), return_exceptions=True))


async def serve_subscribers(make: Callable[[aiohttp.ClientSession, dict[str, Any]], list[Subscriber]]) -> None:
    """A subscriber worker process: JSON commands on stdin, one JSON reply line each on stdout.

    ``join`` (``make`` builds its subscribers from the command; its ``concurrency``, if any, bounds the
    joins in flight) answers how many joined; ``snapshot``
    answers every subscriber's counts with this process's CPU and UDP figures; ``leave`` closes them."""
    subscribers: list[Subscriber] = []
    async with aiohttp.ClientSession() as session:
        try:
            async for command in commands():
                if command["cmd"] == "join":
                    subscribers = make(session, command)
                    results = await join_all(subscribers, command.get("concurrency"))
                    reply(
                        {
                            "joined": sum(r is None for r in results),
                            "errors": [repr(r) for r in results if r is not None],
                        }
                    )
                elif command["cmd"] == "snapshot":
                    drops, queued = udp_sockets(os.getpid())
                    reply(
                        {
                            "t": time.monotonic(),
                            "cpu": cpu_seconds(os.getpid()),
                            "udp_drops": drops,
                            "udp_queued": queued,
                            "subs": [s.snapshot() for s in subscribers],
                        }
                    )
                elif command["cmd"] == "leave":
                    await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
                    subscribers = []
                    reply({"left": True})
                    break
        finally:
            for s in subscribers:
                with contextlib.suppress(Exception):
                    await s.close()
