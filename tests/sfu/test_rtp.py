"""RTP bytes built by hand match what aiortc's own serializer and parser expect."""

from __future__ import annotations

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from gbmedia.sfu import rtp
from gbmedia.sfu.simulcast import SimulcastOffer, complete_answer, offered_simulcast


def ext_map(layout: rtp.ExtensionLayout) -> HeaderExtensionsMap:
    extensions = []
    if layout.mid_id:
        extensions.append(RTCRtpHeaderExtensionParameters(id=layout.mid_id, uri="urn:ietf:params:rtp-hdrext:sdes:mid"))
    if layout.abs_send_time_id:
        extensions.append(
            RTCRtpHeaderExtensionParameters(
                id=layout.abs_send_time_id, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            )
        )
    if layout.audio_level_id:
        extensions.append(
            RTCRtpHeaderExtensionParameters(id=layout.audio_level_id, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")
        )
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=extensions))
    return m


@pytest.mark.parametrize(
    "layout",
    [
        rtp.ExtensionLayout(mid_id=1, mid=b"0", abs_send_time_id=3),
        rtp.ExtensionLayout(mid_id=4, mid=b"12", abs_send_time_id=2, audio_level_id=1),
        rtp.ExtensionLayout(),
    ],
)
@pytest.mark.parametrize("padding", [0, 1, 37])
def test_built_packets_parse_back_with_every_field(layout: rtp.ExtensionLayout, padding: int):
    payload = bytes(range(200))
    block = rtp.extension_block(layout, 0x123456, (True, 42))
    b0, b1 = rtp.first_bytes(bool(block), bool(padding), True, 96)
    data = rtp.HEADER.pack(b0, b1, 65535, 0xFFFFFFF0, 0xDEADBEEF) + block + rtp.body(payload, padding)
    parsed = RtpPacket.parse(data, ext_map(layout))
    assert (parsed.version, parsed.marker, parsed.payload_type) == (2, 1, 96)
    assert (parsed.sequence_number, parsed.timestamp, parsed.ssrc) == (65535, 0xFFFFFFF0, 0xDEADBEEF)
    assert parsed.payload == payload and parsed.padding_size == padding
    if layout.mid_id:
        assert parsed.extensions.mid == layout.mid.decode()
    if layout.abs_send_time_id:
        assert parsed.extensions.abs_send_time == 0x123456
    if layout.audio_level_id:
        assert parsed.extensions.audio_level == (True, 42)
    if not block:
        assert not data[0] & 0x10


def test_the_same_as_aiortcs_serializer():
    layout = rtp.ExtensionLayout(mid_id=1, mid=b"3", abs_send_time_id=3)
    packet = RtpPacket(payload_type=100, marker=0, sequence_number=7, timestamp=9, ssrc=11, payload=b"abc")
    packet.extensions.mid, packet.extensions.abs_send_time = "3", 99
    ours = (
        rtp.HEADER.pack(*rtp.first_bytes(True, False, False, 100), 7, 9, 11)
        + rtp.extension_block(layout, 99, None)
        + rtp.body(b"abc", 0)
    )
    assert ours == packet.serialize(ext_map(layout))


def test_vp8_keyframe_sizes_and_non_keyframes():
    # descriptor X=1 I=1 (15-bit picture id), S=1 PID=0; then a keyframe header for 640x360
    key = (
        bytes([0x90, 0x80, 0x81, 0x23])
        + bytes([0x50, 0x1A, 0x00, 0x9D, 0x01, 0x2A])
        + (640).to_bytes(2, "little")
        + (360).to_bytes(2, "little")
    )
    assert rtp.vp8_keyframe_size(key) == (640, 360)
    assert rtp.vp8_keyframe_size(bytes([0x10, 0x50, 0x1A, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])) == (
        320,
        240,
    )
    inter = bytes([0x10, 0x51, 0x1A, 0x00]) + bytes(8)
    assert rtp.vp8_keyframe_size(inter) is None
    assert rtp.vp8_keyframe_size(bytes([0x00]) + key[4:]) is None  # not the start of a partition
    assert rtp.vp8_keyframe_size(b"") is None
    assert rtp.vp8_keyframe_size(b"\x80") is None
    assert rtp.vp8_keyframe_size(bytes([0x90, 0x80])) is None


OFFER = """v=0\r
o=- 1 2 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
a=mid:0\r
a=sendonly\r
m=video 9 UDP/TLS/RTP/SAVPF 96\r
a=mid:1\r
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r
a=rid:f send\r
a=rid:h send\r
a=rid:q send\r
a=simulcast:send f;h;~q\r
m=video 9 UDP/TLS/RTP/SAVPF 96\r
a=mid:2\r
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r
a=rid:a send\r
a=rid:b send\r
a=simulcast:send a,x;b\r
m=video 9 UDP/TLS/RTP/SAVPF 96\r
a=mid:3\r
a=rid:a send\r
a=rid:b send\r
a=simulcast:send a;b\r
"""


def test_simulcast_offers_are_read_lowest_first():
    offers = offered_simulcast(OFFER)
    assert offers["1"] == SimulcastOffer(("q", "h", "f"), 10)  # q/h/f by name, paused "~q" included
    assert offers["2"] == SimulcastOffer(("a", "b"), 10)  # other names: as offered, first alternative
    assert "3" not in offers and "0" not in offers  # no stream id extension; no simulcast


def test_the_answer_accepts_the_offered_layers():
    answer = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"
    completed = complete_answer(answer, offered_simulcast(OFFER))
    assert completed.endswith("a=mid:1\r\na=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n")
    assert completed.count("a=simulcast") == 1
    assert complete_answer(answer, {}) == answer
