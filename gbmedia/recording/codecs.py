"""Which codecs a recording stores as they were sent, without transcoding.

The packets-to-frames work (reordering, loss, keyframes, depayloading) is the
track's frame source's (:mod:`gbmedia.sfu.frames`), shared with the composite and
LL-HLS; what is left here is the recording's own rule: VP8 and Opus go into WebM,
H.264 into fragmented MP4 (:mod:`gbmedia.recording.writer`), anything else is
refused before a file is started.
"""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

SUPPORTED = ("VP8", "H264", "opus")


class UnsupportedCodec(ValueError):
    """The track's codec is not one a recording can store without transcoding."""


def check_supported(codec: RTCRtpCodecParameters) -> None:
    """Raise :class:`UnsupportedCodec` unless a recording can store ``codec``."""
    if codec.name not in SUPPORTED:
        raise UnsupportedCodec(f"recording does not store {codec.mimeType}")
