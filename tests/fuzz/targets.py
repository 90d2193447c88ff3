"""The fuzz targets: bytes from a client (or the network) in, and a property checked.

Each target feeds its bytes to one of the server's parsers exactly as the server
does and lets through only the failure the server answers with: the project's own
errors (:class:`~gbmedia.errors.ApiError` as a 4xx, :class:`~gbmedia.errors.ProtocolError`,
:class:`~gbmedia.sfu.peers.NegotiationError`), or for packets what aiortc's parsers
raise on a datagram the transport then drops (``aiortc_adapter.UNPARSABLE``). Anything else
escapes, and the fuzzer (:mod:`tests.fuzz.run`) or the corpus replay
(``tests/fuzz/test_fuzz.py``) reports it as a crash.

Pure functions of their input: no sockets, no database, so a few thousand inputs
a second get through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from gbmedia.errors import ApiError, ProtocolError
from gbmedia.http.responses import parse_json_body, validate_body
from gbmedia.messaging.api import ConversationCreate, MessageSend
from gbmedia.messaging.models import check_metadata
from gbmedia.messaging.protocol import ChatSend
from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu import rtp as rtp_bytes
from gbmedia.sfu.codecs import is_keyframe
from gbmedia.sfu.peers import NegotiationError, parse_sdp
from gbmedia.sfu.sdp_check import check_candidate
from gbmedia.sfu.simulcast import offered_simulcast
from gbmedia.sfu.speakers import LevelMeter
from gbmedia.signaling.protocol import parse_message
from gbmedia.signaling.whip import parse_sdpfrag

Target = Callable[[bytes], None]


def _text(data: bytes) -> str:
    """Bytes as the text a JSON string or an SDP body carries (anything undecodable replaced)."""
    return data.decode("utf-8", "replace")


def sdp(data: bytes) -> None:
    """An offer from /rtc ``publish``, WHIP or WHEP: parsed, or ``invalid_sdp``; then its simulcast read."""
    text = _text(data)
    try:
        description = parse_sdp(text, "offer")
    except NegotiationError as exc:
        assert exc.code == "invalid_sdp", exc.code
        return
    assert description.media
    offered_simulcast(text)


def sdpfrag(data: bytes) -> None:
    """A WHIP/WHEP ``PATCH`` body: an RFC 8840 fragment whose candidates aiortc then parses."""
    from aiortc.sdp import candidate_from_sdp

    try:
        _ufrag, candidates = parse_sdpfrag(_text(data))
    except ApiError as exc:
        assert exc.status == 400, exc
        return
    for _mid, line in candidates:
        value = line.split(":", 1)[1]
        try:
            check_candidate(value)
        except ValueError:
            continue
        candidate_from_sdp(value)  # what the checker passes, aiortc parses


def socket_message(data: bytes) -> None:
    """A frame on /rtc (text or binary): a typed message, or a protocol error; a chat send's metadata checked."""
    for raw in (data, _text(data)):
        try:
            message = parse_message(raw)
        except ProtocolError:
            continue
        if isinstance(message, ChatSend):
            _metadata(message.metadata)


def _metadata(metadata: dict[str, object]) -> None:
    """What chat does with metadata before storing it (gbmedia/messaging/messages.py ``prepare``)."""
    try:
        check_metadata(metadata)
    except ApiError as exc:
        assert exc.status == 400, exc
        return
    json.dumps(metadata)


def chat_body(data: bytes) -> None:
    """A REST chat body (a message sent, a conversation created): a model, or a 400."""
    try:
        body = parse_json_body(data)
    except ApiError as exc:
        assert exc.status == 400, exc
        return
    for model in (MessageSend, ConversationCreate):
        try:
            parsed = validate_body(body, model)
        except ApiError as exc:
            assert exc.status == 400, exc
            continue
        _metadata(parsed.metadata)


# --- packets ------------------------------------------------------------------------

# The extension ids a publisher's offer typically negotiates (tests/fuzz/seeds/sdp: Chrome's).
_NEGOTIATED = RTCRtpParameters(
    headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        RTCRtpHeaderExtensionParameters(id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=10, uri=aiortc_adapter.RID_URI),
    ]
)
_EXTENSIONS = HeaderExtensionsMap()
_EXTENSIONS.configure(_NEGOTIATED)
_CODECS = [
    RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102),
    RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111),
]
NTP = 0xE000_0000_8000_0000  # one fixed clock reading: the same input takes the same path every run
_LAYOUTS = [
    rtp_bytes.ExtensionLayout(),
    rtp_bytes.ExtensionLayout(mid_id=4, mid=b"0", abs_send_time_id=2, audio_level_id=1),
    rtp_bytes.ExtensionLayout(mid_id=14, mid=b"x" * 16, abs_send_time_id=13, audio_level_id=12),
]


def rtp(data: bytes) -> None:
    """A datagram on a publisher's connection: aiortc parses it (or drops it: ``ValueError``), then the SFU
    reads keyframes, frame sizes, audio levels and writes the subscribers' header extensions."""
    _dtls().run(_dtls().dtls._handle_rtp_data(data, 0))  # parsed and routed, or dropped
    try:
        packet = RtpPacket.parse(data, _EXTENSIONS)
    except aiortc_adapter.UNPARSABLE:
        return  # what the transport drops
    meter = LevelMeter("PA_fuzz", "TR_fuzz")
    for codec in _CODECS:
        is_keyframe(codec.mimeType, packet.payload)
        meter.on_rtp(packet, codec)
    size = rtp_bytes.vp8_keyframe_size(packet.payload)
    assert size is None or (0 <= size[0] < 2**14 and 0 <= size[1] < 2**14)
    body = rtp_bytes.body(packet.payload, packet.padding_size)
    assert len(body) == len(packet.payload) + packet.padding_size
    for layout in _LAYOUTS:
        block = rtp_bytes.extension_block(layout, aiortc_adapter.abs_send_time(NTP), packet.extensions.audio_level)
        assert len(block) % 4 == 0
        rtp_bytes.first_bytes(bool(block), bool(packet.padding_size), packet.marker, packet.payload_type)


class _Transport:
    """A DTLS transport as the SFU leaves it (unparsable packets dropped), with a receiver and a sender
    registered on its router and tapped as the SFU taps them; one event loop to run its handlers."""

    SSRC, REMOTE_SSRC = 1234, 5

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Made inside its own loop: aiortc asks for the current one, and a test before may have
        # left the thread with none (asyncio.run does).
        self.loop.run_until_complete(self._setup())

    async def _setup(self) -> None:
        self.pc = RTCPeerConnection()
        transceiver = self.pc.addTransceiver("video")
        self.sender, self.receiver = transceiver.sender, transceiver.receiver
        self.dtls = self.receiver.transport
        aiortc_adapter.drop_unparsable_packets(self.dtls)
        self.dtls._rtp_header_extensions_map.configure(_NEGOTIATED)
        self.dtls._rtp_router.register_sender(self.sender, self.SSRC)
        self.dtls._rtp_router.register_receiver(self.receiver, ssrcs=[self.REMOTE_SSRC], payload_types=[96], mid="0")
        self.seen: list[object] = []
        self.receiver._handle_rtp_packet = self._packet  # type: ignore[method-assign]
        aiortc_adapter.tap_sender_rtcp(self.sender, lambda: None, self.seen.append, self.seen.append)
        aiortc_adapter.tap_sender_reports(self.receiver, lambda ssrc, ntp, rtp: None)

    async def _packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.seen.append(packet)

    def run(self, handling: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(handling)
        self.seen.clear()


_transport: _Transport | None = None


def _dtls() -> _Transport:
    global _transport
    if _transport is None:
        _transport = _Transport()
    return _transport


def rtcp(data: bytes) -> None:
    """A compound RTCP datagram through the transport: parsed and routed (or dropped), then the SFU's taps
    handle each packet (PLI/FIR upstream, NACKs from its history, REMB estimates, sender reports)."""
    _dtls().run(_dtls().dtls._handle_rtcp_data(data))


TARGETS: dict[str, Target] = {
    "sdp": sdp,
    "sdpfrag": sdpfrag,
    "socket_message": socket_message,
    "chat_body": chat_body,
    "rtp": rtp,
    "rtcp": rtcp,
}
ORDER = sorted(TARGETS)  # the first byte of an input to every_target picks ORDER[byte % len(ORDER)]


def target_of(data: bytes) -> tuple[str, bytes]:
    """The target an input of :func:`every_target` goes to, and the bytes it gets."""
    return ORDER[data[0] % len(ORDER)], data[1:]


def every_target(data: bytes) -> None:
    """Every target behind one: a single fuzzing process (Python's start-up paid once)."""
    if data:
        name, rest = target_of(data)
        TARGETS[name](rest)
