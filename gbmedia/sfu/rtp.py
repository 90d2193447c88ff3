"""RTP bytes for the forwarding hot path, built without packet objects.

A forwarded packet differs between subscribers only in its first twelve bytes
(payload type, sequence number, timestamp, SSRC) and in the header extensions the
subscriber negotiated (the ids, and the mid of its transceiver). Everything after
the header (payload, padding) is the same for all of them. So the body is built
once per incoming packet, an extension block once per distinct extension layout,
and per subscriber only a 12-byte header is packed: no ``RtpPacket`` is allocated
and nothing is serialized per subscriber.

RFC 3550 section 5.1 (fixed header), RFC 8285 (one-byte header extensions).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")
ONE_BYTE_PROFILE = b"\xbe\xde"
RTP_VERSION_BITS = 0x80
EXTENSION_BIT = 0x10
PADDING_BIT = 0x20


@dataclass(frozen=True, slots=True)
class ExtensionLayout:
    """The header extensions one subscriber's sender writes: ids (0 = not negotiated)."""

    mid_id: int = 0
    mid: bytes = b""
    abs_send_time_id: int = 0
    audio_level_id: int = 0


def body(payload: bytes, padding_size: int) -> bytes:
    """Payload plus RFC 3550 padding (zeros, the last byte the padding count)."""
    if not padding_size:
        return payload
    return payload + bytes(padding_size - 1) + bytes((padding_size,))


def extension_block(layout: ExtensionLayout, abs_send_time: int | None, audio_level: tuple[bool, int] | None) -> bytes:
    """An RFC 8285 one-byte-header extension block, padded to 32 bits; b"" if empty."""
    elements = bytearray()
    if layout.mid_id and layout.mid:
        elements.append((layout.mid_id << 4) | (len(layout.mid) - 1))
        elements += layout.mid
    if layout.abs_send_time_id and abs_send_time is not None:
        elements.append((layout.abs_send_time_id << 4) | 2)
        elements += (abs_send_time & 0xFFFFFF).to_bytes(3, "big")
    if layout.audio_level_id and audio_level is not None:
        voice, level = audio_level
        elements.append(layout.audio_level_id << 4)
        elements.append((0x80 if voice else 0) | (level & 0x7F))
    if not elements:
        return b""
    elements += bytes(-len(elements) % 4)
    return ONE_BYTE_PROFILE + (len(elements) // 4).to_bytes(2, "big") + bytes(elements)


def first_bytes(has_extension: bool, has_padding: bool, marker: bool, payload_type: int) -> tuple[int, int]:
    """The header's first two bytes: version, padding and extension flags; marker, payload type."""
    b0 = RTP_VERSION_BITS | (EXTENSION_BIT if has_extension else 0) | (PADDING_BIT if has_padding else 0)
    return b0, (0x80 if marker else 0) | (payload_type & 0x7F)


def vp8_frame_offset(payload: bytes) -> int | None:
    """Where the VP8 frame starts in the first packet of a frame (after RFC 7741's descriptor), or None.

    None: the packet does not start partition 0 of a frame, or its descriptor is cut
    short. The SFU reads keyframes (``is_vp8_keyframe``) and their sizes
    (:func:`vp8_keyframe_size`) from there.
    """
    if not payload:
        return None
    first = payload[0]
    if not (first & 0x10) or (first & 0x0F) != 0:  # S clear or PID != 0: not the start of partition 0
        return None
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return None
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return None
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            offset += 1
    return offset if len(payload) > offset else None


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 keyframe (RFC 7741, RFC 6386 9.1).

    Used to learn each simulcast layer's resolution, which subscribers' size
    requests are matched against.
    """
    offset = vp8_frame_offset(payload)
    if offset is None:
        return None
    frame = payload[offset : offset + 10]
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height
