"""Fragmented MP4 (ISO BMFF, CMAF-style) boxes for LL-HLS: an init segment and fragments.

Written by hand rather than through PyAV's mp4 muxer because LL-HLS needs control
over exactly where each fragment (partial segment) ends and what it holds: every
part is one ``moof`` + ``mdat`` with one ``traf`` per track, and a segment is simply
its parts back to back. The layout follows ISO/IEC 14496-12 (boxes) and 14496-15
(``avcC``), 14496-1 (``esds``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

VIDEO_TIMESCALE = 90000
AUDIO_TIMESCALE = 48000
VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2

# sample_flags (14496-12 8.8.3.1): a sync sample depends on nothing; others depend
# on earlier samples and are non-sync.
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000

_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payloads: bytes) -> bytes:
    body = b"".join(payloads)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payloads: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payloads)


# --- H.264 bitstream helpers ------------------------------------------------------------

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (start codes of 3 or 4 bytes removed).

    ``bytes.find`` does the scanning in C: it runs for every H.264 frame.
    """
    units: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
        end = len(data) if i == -1 else (i - 1 if data[i - 1] == 0 else i)  # a 4-byte start code's zero
        if end > start:
            units.append(data[start:end])
    return units


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F


def to_avcc(units: Iterable[bytes]) -> bytes:
    """Length-prefixed NAL units (4-byte lengths), as MP4 samples carry them."""
    return b"".join(struct.pack(">I", len(u)) + u for u in units)


# --- init segment -------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoTrackInfo:
    width: int
    height: int
    sps: bytes
    pps: bytes

    @property
    def codec_string(self) -> str:
        """RFC 6381 codecs value, e.g. ``avc1.42e01f``."""
        return "avc1." + self.sps[1:4].hex()


@dataclass(frozen=True)
class AudioTrackInfo:
    sample_rate: int
    channels: int
    audio_specific_config: bytes

    @property
    def codec_string(self) -> str:
        return "mp4a.40.2"


def _mvhd(next_track_id: int) -> bytes:
    return full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", next_track_id),
    )


def _tkhd(track_id: int, volume: int, width: int, height: int) -> bytes:
    return full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, volume, 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )


def _mdhd(timescale: int) -> bytes:
    language = 0x55C4  # "und", packed ISO-639-2/T
    return full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, language, 0))


def _hdlr(handler: bytes, name: bytes) -> bytes:
    return full_box(b"hdlr", 0, 0, struct.pack(">I", 0), handler, bytes(12), name + b"\0")


def _dinf() -> bytes:
    return box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))


def _stbl(sample_entry: bytes) -> bytes:
    return box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )


def _avc1(video: VideoTrackInfo) -> bytes:
    sps, pps = video.sps, video.pps
    avcc = box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)),
        sps,
        bytes([1]),
        struct.pack(">H", len(pps)),
        pps,
    )
    compressor = bytes(32)
    return box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),
        bytes(16),
        struct.pack(">HHIIIH", video.width, video.height, 0x00480000, 0x00480000, 0, 1),
        compressor,
        struct.pack(">Hh", 0x0018, -1),
        avcc,
    )


def _descriptor(tag: int, payload: bytes) -> bytes:
    size = len(payload)
    encoded = bytes(
        [0x80 | ((size >> 21) & 0x7F), 0x80 | ((size >> 14) & 0x7F), 0x80 | ((size >> 7) & 0x7F), size & 0x7F]
    )
    return bytes([tag]) + encoded + payload


def _mp4a(audio: AudioTrackInfo) -> bytes:
    decoder_specific = _descriptor(0x05, audio.audio_specific_config)
    decoder_config = _descriptor(0x04, bytes([0x40, 0x15]) + bytes(3) + struct.pack(">II", 0, 0) + decoder_specific)
    es = _descriptor(0x03, struct.pack(">HB", AUDIO_TRACK_ID, 0) + decoder_config + _descriptor(0x06, b"\x02"))
    esds = full_box(b"esds", 0, 0, es)
    return box(
        b"mp4a",
        bytes(6),
        struct.pack(">H", 1),
        bytes(8),
        struct.pack(">HHHHI", audio.channels, 16, 0, 0, audio.sample_rate << 16),
        esds,
    )


def init_segment(video: VideoTrackInfo, audio: AudioTrackInfo | None) -> bytes:
    """``ftyp`` + ``moov`` describing the tracks, with ``mvex`` (the samples come in fragments)."""
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"isom", b"mp41")
    video_trak = box(
        b"trak",
        _tkhd(VIDEO_TRACK_ID, 0, video.width, video.height),
        box(
            b"mdia",
            _mdhd(VIDEO_TIMESCALE),
            _hdlr(b"vide", b"VideoHandler"),
            box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), _dinf(), _stbl(_avc1(video))),
        ),
    )
    traks = [video_trak]
    trexes = [full_box(b"trex", 0, 0, struct.pack(">IIIII", VIDEO_TRACK_ID, 1, 0, 0, 0))]
    if audio is not None:
        traks.append(
            box(
                b"trak",
                _tkhd(AUDIO_TRACK_ID, 0x0100, 0, 0),
                box(
                    b"mdia",
                    _mdhd(audio.sample_rate),
                    _hdlr(b"soun", b"SoundHandler"),
                    box(b"minf", full_box(b"smhd", 0, 0, bytes(4)), _dinf(), _stbl(_mp4a(audio))),
                ),
            )
        )
        trexes.append(full_box(b"trex", 0, 0, struct.pack(">IIIII", AUDIO_TRACK_ID, 1, 0, 0, 0)))
    next_id = (AUDIO_TRACK_ID if audio is not None else VIDEO_TRACK_ID) + 1
    return ftyp + box(b"moov", _mvhd(next_id), *traks, box(b"mvex", *trexes))


# --- fragments -----------------------------------------------------------------------------


@dataclass
class Sample:
    """One coded sample: a video access unit (AVCC) or an AAC frame; times in the track's timescale."""

    dts: int
    data: bytes
    keyframe: bool = True
    duration: int = 0


@dataclass
class TrackRun:
    track_id: int
    samples: list[Sample] = field(default_factory=list)


def _traf(run: TrackRun, data_offset: int) -> bytes:
    flags = 0x000001 | 0x000100 | 0x000200 | 0x000400  # data offset, duration, size, flags per sample
    entries = b"".join(
        struct.pack(">III", s.duration, len(s.data), SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS)
        for s in run.samples
    )
    return box(
        b"traf",
        full_box(b"tfhd", 0, 0x020000, struct.pack(">I", run.track_id)),  # default-base-is-moof
        full_box(b"tfdt", 1, 0, struct.pack(">Q", run.samples[0].dts)),
        full_box(b"trun", 0, flags, struct.pack(">Ii", len(run.samples), data_offset), entries),
    )


def fragment(sequence_number: int, runs: list[TrackRun]) -> bytes:
    """One ``moof`` + ``mdat``: the samples of each non-empty run, in run order."""
    runs = [r for r in runs if r.samples]
    if not runs:
        raise ValueError("a fragment needs at least one sample")

    def moof(offsets: list[int]) -> bytes:
        return box(
            b"moof",
            full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number)),
            *(_traf(run, offset) for run, offset in zip(runs, offsets, strict=True)),
        )

    size = len(moof([0] * len(runs)))  # offsets never change the size
    offsets, position = [], size + 8
    for run in runs:
        offsets.append(position)
        position += sum(len(s.data) for s in run.samples)
    mdat = box(b"mdat", *(s.data for run in runs for s in run.samples))
    return moof(offsets) + mdat


def iter_boxes(data: bytes, offset: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, size) of each top-level box in ``data[offset:end]``: for checks and tests."""
    end = len(data) if end is None else end
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8 or offset + size > end:
            raise ValueError(f"bad box size {size} at {offset}")
        yield kind, offset, size
        offset += size
