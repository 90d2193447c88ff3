"""A real aiortc peer that publishes one video track as three simulcast layers.

aiortc cannot send simulcast, so this client does what a browser does by hand: its
offer announces rids q/h/f (RFC 8853) with the RTP stream id extension and no SSRCs,
and once connected it encodes the same picture at three sizes with three VP8
encoders and sends each as its own RTP stream (own SSRC, sequence numbers and
timestamp base, rid in every packet) over the connection's DTLS transport. It
answers keyframe requests per layer and honours the server's dynacast messages
(``active``). Test-only: it reaches into aiortc like the product's adapter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import VIDEO_TIME_BASE
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import RTCP_PSFB_PLI, HeaderExtensionsMap, RtcpPsfbPacket, RtpPacket

from gbmedia.sfu.aiortc_adapter import RID_URI, abs_send_time
from tests.rtc import wait_for

SIZES = {"q": (80, 60), "h": (160, 120), "f": (320, 240)}
BITRATES = {"q": 60_000, "h": 180_000, "f": 500_000}  # each layer's encoder target
RID_EXTENSION_ID = 10
FPS = 15


class _Silent(MediaStreamTrack):
    """Gives the transceiver a track; aiortc's own sender waits on it forever."""

    kind = "video"

    async def recv(self) -> av.VideoFrame:
        await asyncio.Event().wait()
        raise AssertionError  # pragma: no cover


def simulcast_offer(sdp: str, rids: tuple[str, ...] = ("q", "h", "f")) -> str:
    """The browser's shape: rids and the simulcast line, the stream id extension, no SSRCs."""
    out: list[str] = []
    in_video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        if in_video and (line.startswith("a=ssrc") or line.startswith("a=ssrc-group")):
            continue
        out.append(line)
        if in_video and line.startswith("a=mid:"):
            out.append(f"a=extmap:{RID_EXTENSION_ID} {RID_URI}")
            out += [f"a=rid:{rid} send" for rid in rids]
            out.append("a=simulcast:send " + ";".join(rids))
    return "\r\n".join(out) + "\r\n"


@dataclass
class _Layer:
    rid: str
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    seq: int = field(default_factory=lambda: random.getrandbits(16))
    ts_base: int = field(default_factory=lambda: random.getrandbits(32))
    encoder: Vp8Encoder = field(default_factory=Vp8Encoder)
    force_keyframe: bool = True

    def __post_init__(self) -> None:
        self.encoder.target_bitrate = BITRATES[self.rid]


class _KeyframeResponder:
    """Stands in the client's RTP router for one layer's SSRC: PLI → keyframe."""

    def __init__(self, publisher: SimulcastPublisher, layer: _Layer) -> None:
        self.publisher, self.layer = publisher, layer

    async def _handle_rtcp_packet(self, packet: object) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            self.layer.force_keyframe = True
            self.publisher.keyframe_requests[self.layer.rid] += 1


class SimulcastPublisher:
    def __init__(self, rgb: tuple[int, int, int] = (30, 200, 30), rids: tuple[str, ...] = ("q", "h", "f")) -> None:
        self.pc = RTCPeerConnection()
        self.transceiver = self.pc.addTransceiver(_Silent(), direction="sendonly")
        self.rgb = rgb
        self.layers = {rid: _Layer(rid) for rid in rids}
        self.active = set(rids)
        self.sent: Counter[str] = Counter()
        self.keyframe_requests: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._rng = np.random.default_rng(7)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return simulcast_offer(self.pc.localDescription.sdp, tuple(self.layers))

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        dtls = self.transceiver.sender.transport
        for layer in self.layers.values():
            dtls._rtp_router.senders[layer.ssrc] = _KeyframeResponder(self, layer)
        self._task = asyncio.ensure_future(self._run())

    def set_active(self, rids: list[str]) -> None:
        """Dynacast: encode only what the server says someone watches."""
        resumed = set(rids) - self.active
        self.active = set(rids)
        for rid in resumed:
            self.layers[rid].force_keyframe = True

    async def _run(self) -> None:
        dtls = self.transceiver.sender.transport
        await wait_for(lambda: dtls.state == "connected")
        sender = self.transceiver.sender
        codec = next(c for c in self.transceiver._codecs if c.mimeType == "video/VP8")
        ext_map = HeaderExtensionsMap()
        ext_map.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                    RTCRtpHeaderExtensionParameters(
                        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                    ),
                    RTCRtpHeaderExtensionParameters(id=RID_EXTENSION_ID, uri=RID_URI),
                ]
            )
        )
        mid = self.transceiver.mid
        loop = asyncio.get_running_loop()
        start, frame_no = loop.time(), 0
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                pts = frame_no * (90000 // FPS)
                for rid in [r for r in self.layers if r in self.active]:
                    layer = self.layers[rid]
                    width, height = SIZES[rid]
                    # the colour plus noise: every layer really needs its bitrate (a flat
                    # picture would cost almost nothing at any size)
                    image = self._rng.integers(-24, 24, (height, width, 3), dtype=np.int16)
                    image = np.clip(image + np.array(self.rgb, dtype=np.int16), 0, 255).astype(np.uint8)
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                    frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
                    payloads, timestamp = layer.encoder.encode(frame, force_keyframe=layer.force_keyframe)
                    layer.force_keyframe = False
                    for i, payload in enumerate(payloads):
                        packet = RtpPacket(
                            payload_type=codec.payloadType,
                            marker=int(i == len(payloads) - 1),
                            sequence_number=layer.seq,
                            ssrc=layer.ssrc,
                            payload=payload,
                            timestamp=(timestamp + layer.ts_base) & 0xFFFFFFFF,
                        )
                        packet.extensions.mid = mid
                        packet.extensions.rtp_stream_id = rid
                        packet.extensions.abs_send_time = abs_send_time()
                        layer.seq = (layer.seq + 1) & 0xFFFF
                        await sender.transport._send_rtp(packet.serialize(ext_map))
                        self.sent[rid] += 1
                frame_no += 1
                await asyncio.sleep(max(0.0, start + frame_no / FPS - loop.time()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pc.close()
