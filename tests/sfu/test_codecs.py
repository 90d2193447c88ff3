"""Keyframe detection from RTP payload headers (RFC 7741 VP8, RFC 6184 H.264), no decoding."""

from __future__ import annotations

import av
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gbmedia.sfu.codecs import capability_for, is_h264_keyframe, is_keyframe, is_vp8_keyframe
from tests.rtc import ColorVideoTrack

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=102,
    parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1", "profile-level-id": "42e01f"},
)


async def encoded_payloads(codec: RTCRtpCodecParameters, frames: int = 3) -> list[list[bytes]]:
    """Real RTP payloads from aiortc's own encoder: a keyframe, then delta frames."""
    encoder = get_encoder(codec)
    track = ColorVideoTrack((120, 40, 200), 320, 240)
    out = []
    for index in range(frames):
        frame: av.VideoFrame = await track.recv()
        payloads, _ = encoder.encode(frame, force_keyframe=index == 0)
        out.append(payloads)
    return out


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
async def test_real_encoder_output_starts_with_exactly_one_keyframe(codec: RTCRtpCodecParameters):
    first, *deltas = await encoded_payloads(codec)
    assert is_keyframe(codec.mimeType, first[0])
    for payloads in deltas:
        assert not any(is_keyframe(codec.mimeType, p) for p in payloads)


def test_vp8_descriptor_variants():
    # S=1, PID=0, no extension; payload header P bit clear: a keyframe.
    assert is_vp8_keyframe(bytes([0x10, 0x00]))
    assert not is_vp8_keyframe(bytes([0x10, 0x01]))  # P bit set: interframe
    assert not is_vp8_keyframe(bytes([0x00, 0x00]))  # not the start of a partition
    assert not is_vp8_keyframe(bytes([0x11, 0x00]))  # partition 1
    # X with I (15-bit picture id), L (TL0PICIDX) and T/K (one more byte).
    assert is_vp8_keyframe(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x00]))
    assert is_vp8_keyframe(bytes([0x90, 0x80, 0x01, 0x00]))  # 7-bit picture id
    # Truncated descriptors are not keyframes (and never raise).
    for truncated in (b"", bytes([0x90]), bytes([0x90, 0x80]), bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20])):
        assert not is_vp8_keyframe(truncated)


def test_h264_nal_unit_types():
    assert is_h264_keyframe(bytes([0x65, 0x88]))  # IDR slice
    assert is_h264_keyframe(bytes([0x67, 0x42]))  # SPS
    assert not is_h264_keyframe(bytes([0x41, 0x9A]))  # non-IDR slice
    assert not is_h264_keyframe(b"")
    stap_with_sps = bytes([0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE])
    assert is_h264_keyframe(stap_with_sps)
    stap_without = bytes([0x78, 0x00, 0x02, 0x68, 0xCE, 0x00, 0x02, 0x06, 0x05])
    assert not is_h264_keyframe(stap_without)
    assert not is_h264_keyframe(bytes([0x78, 0x00, 0x00, 0x67]))  # a zero-length unit ends parsing
    assert is_h264_keyframe(bytes([0x7C, 0x85, 0x88]))  # FU-A start of an IDR
    assert not is_h264_keyframe(bytes([0x7C, 0x05, 0x88]))  # FU-A continuation
    assert not is_h264_keyframe(bytes([0x7C, 0x81, 0x88]))  # FU-A start of a non-IDR
    assert not is_h264_keyframe(bytes([0x7C]))  # FU-A without its header


def test_audio_packets_always_decode_on_their_own():
    assert is_keyframe("audio/opus", b"\x00")
    assert not is_keyframe("video/VP8", b"")


def test_capability_matches_codec_and_h264_profile():
    assert capability_for(VP8).mimeType == "video/VP8"
    h264 = capability_for(H264)
    assert h264 is not None and h264.parameters["profile-level-id"][:4] == "42e0"
    main_profile = RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=100,
        parameters={"packetization-mode": "1", "profile-level-id": "4d001f"},
    )
    assert capability_for(main_profile) is None  # aiortc cannot send it: not offered to subscribers
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    assert capability_for(opus).mimeType == "audio/opus"
    mono_opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=1, payloadType=111)
    assert capability_for(mono_opus) is None
    assert capability_for(RTCRtpCodecParameters(mimeType="video/AV1", clockRate=90000, payloadType=45)) is None


def test_one_codec_matching_rule_for_subscribers_and_players():
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from gbmedia.sfu.codecs import same_codec

    def h264(**parameters: str) -> RTCRtpCodecParameters:
        return RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102, parameters=parameters)

    constrained = h264(**{"packetization-mode": "1", "profile-level-id": "42e01f"})
    assert same_codec(constrained, h264(**{"packetization-mode": "1", "profile-level-id": "42E034"}))  # level aside
    assert not same_codec(constrained, h264(**{"packetization-mode": "1", "profile-level-id": "42001f"}))
    assert not same_codec(constrained, h264(**{"packetization-mode": "0", "profile-level-id": "42e01f"}))
    assert same_codec(h264(), h264(**{"profile-level-id": "420010"}))  # RFC 6184's default when absent
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    assert same_codec(vp8, RTCRtpCodecParameters(mimeType="video/vp8", clockRate=90000, payloadType=97))
    assert not same_codec(vp8, constrained)
