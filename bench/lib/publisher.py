"""Publishers: the one sender of a run, in the orchestrator's process (or an HLS worker's).

``Publisher`` sends pinned-bitrate VP8 over gbmedia's ``/rtc`` (or replays a pre-encoded
clip: ``bench.lib.clip``, 4K) and keeps pinging the server all along (the reply time is
the server's event-loop lag, beside its CPU);
``JanusPublisher`` is the same over Janus's VideoRoom, only the signaling differs;
``AvPublisher`` sends video and audio into a ``live`` room for the HLS packager.
"""

# ruff: noqa: ASYNC109 - explicit timeouts

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from bench.lib import janus
from bench.lib.errors import BenchError
from bench.lib.media import FixedBitrateVp8Encoder, MovingVideo, PlasmaVideoTrack, ReplayVideoTrack, ToneAudioTrack
from bench.lib.rtc import NO_STUN, prefer_codec, wait_connected
from bench.lib.signaling import Signaling
from gbmedia.sfu.aiortc_adapter import keep_consent_on


class Publisher:
    """One VP8 video track published over ``/rtc``: ``PlasmaVideoTrack`` with the encoder pinned at
    ``bitrate``, or, given ``clip``, that VP8 file's packets replayed at its frame rate without encoding
    (``ReplayVideoTrack``; ``bitrate`` then unused: the clip's own is what goes out)."""

    can_mute = True  # gbmedia's `mute` message (bench.forwarding --upkeep)

    def __init__(self, bitrate: int, width: int = 640, height: int = 480, clip: Path | None = None) -> None:
        self.bitrate = bitrate
        self.pc = RTCPeerConnection(NO_STUN)
        self.track: MediaStreamTrack = PlasmaVideoTrack(width, height) if clip is None else ReplayVideoTrack(clip)
        # Also the packer of a replayed clip: its frame counter then counts the frames replayed.
        self.encoder = FixedBitrateVp8Encoder(bitrate)
        self.signaling: Signaling | None = None
        self.sender: RTCRtpSender | None = None
        self.track_id = ""
        self.states: list[tuple[float, str]] = []
        self.closing = False
        self.pings: list[tuple[float, float]] = []  # (sent at, reply time in s)
        self._pinger: asyncio.Future[None] | None = None
        self.lags: list[tuple[float, float]] = []  # (at, lag in s) of this process's event loop
        self._watcher: asyncio.Future[None] | None = None
        self.pc.on("connectionstatechange", self._on_state)

    def start_pinging(self, interval: float = 0.5) -> None:
        """Ping the server over the signaling socket all along: its reply time shows event-loop lag."""

        async def loop() -> None:
            while True:
                sent = time.monotonic()
                try:
                    await self._ping()
                    self.pings.append((sent, time.monotonic() - sent))
                except (TimeoutError, BenchError, ConnectionError, aiohttp.ClientError):
                    self.pings.append((sent, time.monotonic() - sent))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - sent)))

        self._pinger = asyncio.ensure_future(loop())

    def watch_loop(self, interval: float = 0.1) -> None:
        """Record this process's own event-loop lag, to tell it apart from the server's in the pings."""

        async def loop() -> None:
            while True:
                before = time.monotonic()
                await asyncio.sleep(interval)
                self.lags.append((before, time.monotonic() - before - interval))

        self._watcher = asyncio.ensure_future(loop())

    def lag_ms_max(self, start: float, end: float) -> float | None:
        lags = [lag * 1000 for at, lag in self.lags if start <= at <= end]
        return max(lags) if lags else None

    def ping_ms(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(median, max) reply time in ms of the pings sent between ``start`` and ``end``."""
        rtts = [rtt * 1000 for sent, rtt in self.pings if start <= sent <= end]
        return (statistics.median(rtts), max(rtts)) if rtts else (None, None)

    def state_log(self) -> str:
        start = self.states[0][0] if self.states else 0.0
        return ", ".join(f"{t - start:+.1f} s {state}" for t, state in self.states)

    def _on_state(self) -> None:
        self.states.append((time.monotonic(), self.pc.connectionState))
        if self.pc.connectionState in ("failed", "closed") and not self.closing:
            print(f"  publisher connection {self.pc.connectionState}", file=sys.stderr)

    async def start(self, session: aiohttp.ClientSession, url: str, token: str, timeout: float) -> None:
        self.signaling = await Signaling.connect(session, url)
        await self.signaling.request({"type": "join", "token": token, "protocol": 1, "auto_subscribe": False})
        mid, offer = await self._offer()
        reply = await self.signaling.request(
            {"type": "publish", "sdp": offer, "tracks": {mid: {"source": "camera", "name": "bench"}}},
            timeout=timeout,
        )
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        self.track_id = reply["tracks"][0]["id"]
        await self._connected(timeout)

    async def _offer(self) -> tuple[str, str]:
        """The publisher's offer, the same for every server: (mid, sdp) of one VP8 sendonly transceiver."""
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        prefer_codec(transceiver, "video/VP8")
        self.sender = transceiver.sender
        # aiortc creates its encoder lazily on the first frame; give it ours first.
        self.sender._RTCRtpSender__encoder = self.encoder  # type: ignore[attr-defined]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(transceiver.mid), self.pc.localDescription.sdp

    async def _connected(self, timeout: float) -> None:
        await wait_connected(self.pc, timeout)
        self.start_pinging()
        self.watch_loop()

    async def _ping(self) -> None:
        assert self.signaling is not None
        await self.signaling.request({"type": "ping"}, timeout=10)

    async def mute(self, muted: bool) -> None:
        """Mute (or unmute) the published track on the server: it keeps receiving, forwards nothing."""
        assert self.signaling is not None
        await self.signaling.request({"type": "mute", "track_id": self.track_id, "muted": muted}, timeout=10)

    async def _leave(self) -> None:
        if self.signaling is not None:
            await self.signaling.leave()

    async def counters(self) -> dict[str, float]:
        """What it sent so far: packets and bytes (``getStats``), frames encoded (or replayed) and keyframes forced."""
        packets = octets = 0
        if self.sender is not None:
            for stats in (await self.sender.getStats()).values():
                if stats.type == "outbound-rtp":
                    packets, octets = stats.packetsSent, stats.bytesSent
        return {
            "packets": packets,
            "bytes": octets,
            "frames": self.encoder.frames,
            "forced_keyframes": self.encoder.forced_keyframes,
            "state": self.pc.connectionState,
        }

    async def close(self) -> None:
        self.closing = True
        for task in (self._pinger, self._watcher):
            if task is not None:
                task.cancel()
        await self._leave()
        await self.pc.close()


class JanusPublisher(Publisher):
    """The same publisher, signaled over Janus's HTTP API: VideoRoom ``join`` as a publisher, ``publish``
    with the offer; the answer comes in the event. Its pings are Janus ``ping`` requests."""

    can_mute = False

    def __init__(self, bitrate: int, clip: Path | None = None) -> None:
        super().__init__(bitrate, clip=clip)
        self.janus: janus.JanusSession | None = None
        self.feed_id = 0

    async def start(  # type: ignore[override]
        self, session: aiohttp.ClientSession, url: str, room: int, timeout: float
    ) -> None:
        self.janus = janus.JanusSession(session, url)
        await self.janus.create()
        handle = await self.janus.attach()
        joined = await self.janus.message(
            handle, {"request": "join", "room": room, "ptype": "publisher", "display": "bench"}, timeout=timeout
        )
        self.feed_id = int(joined["plugindata"]["data"]["id"])
        _, offer = await self._offer()
        reply = await self.janus.message(handle, {"request": "publish"}, janus.jsep("offer", offer), timeout=timeout)
        if "jsep" not in reply:
            raise BenchError(f"janus answered the publisher without an SDP: {reply}")
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["jsep"]["sdp"], type="answer"))
        self.track_id = f"janus-feed-{self.feed_id}"
        await self._connected(timeout)

    async def _ping(self) -> None:
        assert self.janus is not None
        await self.janus.ping()

    async def _leave(self) -> None:
        if self.janus is not None:
            await self.janus.destroy()


class AvPublisher:
    """640x480 video at 30 fps (``MovingVideo``: VP8, or H.264 to be remuxed rather than transcoded) and an
    Opus tone, published over ``/rtc`` into a room: what a live room's HLS packager takes in."""

    def __init__(self, h264: bool = False) -> None:
        self.h264 = h264
        self.pc = RTCPeerConnection(NO_STUN)
        self.signaling: Signaling | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, url: str, token: str) -> None:
        # Its own HTTP session: it lives in a worker beside the players' session, apart from their pool.
        self._session = aiohttp.ClientSession()
        # The socket's reader also answers the server's heartbeats: a silent socket would be dropped.
        self.signaling = await Signaling.connect(self._session, url)
        await self.signaling.request({"type": "join", "token": token})
        video = self.pc.addTransceiver(MovingVideo(), direction="sendonly")
        if self.h264:
            prefer_codec(video, "video/H264")
        self.pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        reply = await self.signaling.request({"type": "publish", "sdp": self.pc.localDescription.sdp, "tracks": {}})
        if reply["type"] != "publish_answer":
            raise BenchError(f"publish refused: {reply}")
        keep_consent_on(self.pc)  # as tolerant of a late consent answer as a browser
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        if self.signaling is not None:
            await self.signaling.close()
        if self._session is not None:
            await self._session.close()
