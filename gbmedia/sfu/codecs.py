"""What the forwarder must know about codecs without decoding: keyframes and matching.

A subscriber's decoder can only start on a keyframe, so a down track holds video
back until one arrives; these parsers read just enough of the RTP payload headers
(RFC 7741 for VP8, RFC 6184 for H.264) to tell.
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from gbmedia.sfu.rtp import vp8_frame_offset

_H264_IDR, _H264_SPS, _H264_STAP_A, _H264_FU_A = 5, 7, 24, 28


def is_vp8_keyframe(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe."""
    offset = vp8_frame_offset(payload)
    return offset is not None and (payload[offset] & 0x01) == 0  # P bit clear: keyframe


def is_h264_keyframe(payload: bytes) -> bool:
    """True for a packet carrying an IDR slice or SPS (start of a keyframe)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            if size == 0 or offset + 2 >= len(payload):
                break
            if payload[offset + 2] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            offset += 2 + size
        return False
    if nal_type == _H264_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in (_H264_IDR, _H264_SPS)
    return False


def is_keyframe(mime_type: str, payload: bytes) -> bool:
    mime = mime_type.lower()
    if mime == "video/vp8":
        return is_vp8_keyframe(payload)
    if mime == "video/h264":
        return is_h264_keyframe(payload)
    return True  # audio: every packet decodes on its own


H264_DEFAULT_PROFILE_LEVEL_ID = "420010"  # RFC 6184 section 8.1: when the SDP gives none


def _h264_key(parameters: dict) -> tuple[str, str]:
    """Packetization mode and profile (profile_idc plus constraint flags: 42e0 is constrained baseline)."""
    return (
        str(parameters.get("packetization-mode", "0")),
        str(parameters.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID)).lower()[:4],
    )


def same_codec(
    a: RTCRtpCodecParameters | RTCRtpCodecCapability, b: RTCRtpCodecParameters | RTCRtpCodecCapability
) -> bool:
    """Whether a stream encoded as ``a`` can be forwarded to a receiver that negotiated ``b``.

    The one rule for matching a publisher's codec: offering it to subscribers, answering
    a WHEP viewer with it, and deciding which published track a viewer can play.
    """
    if a.mimeType.lower() != b.mimeType.lower() or a.clockRate != b.clockRate:
        return False
    if a.mimeType.lower() == "video/h264":
        return _h264_key(a.parameters) == _h264_key(b.parameters)
    return True


def capability_for(codec: RTCRtpCodecParameters) -> RTCRtpCodecCapability | None:
    """The sender capability matching a publisher's codec, to offer it to subscribers."""
    kind = codec.mimeType.split("/")[0].lower()
    for capability in RTCRtpSender.getCapabilities(kind).codecs:
        if capability.channels == codec.channels and same_codec(capability, codec):
            return capability
    return None
