"""A known synthetic stream as RTP packets, made by aiortc's own encoders and packetisers.

``rtp_stream("VP8", seconds=3)`` gives the packets a WebRTC publisher would send for
three seconds of a solid-colour 320x240 video at 30 fps (or a 440 Hz Opus tone at
50 frames/s): real VP8/H.264/Opus payloads, RFC payload formats, marker bits,
sequence numbers and RTP timestamps. Used by the recording tests, the crash test's
child process and bench/recording.py.

A recorder takes frames, not packets: :func:`frame_feed` puts a frame source (what
a published track gives its frame sinks) between packets and a recorder.

Run as a script it records such a stream in real time into a file, the way the
server's recorder does, so a test can SIGKILL it mid-way:
``python -m tests.recording.synthetic VP8 out.webm 20``.
"""

from __future__ import annotations

import fractions
import sys
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from bench.lib.media import audio_frame  # the benchmarks' tone, shared with the tests
from gbmedia.sfu.frames import FrameSink, FrameSource

CODECS = {
    "VP8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    "H264": RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=102,
        parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1", "profile-level-id": "42e01f"},
    ),
    "opus": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111),
}


@dataclass(frozen=True)
class Timed:
    packet: RtpPacket
    at: float  # seconds from the stream's start


def video_frame(index: int, rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> av.VideoFrame:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, :] = rgb
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
    return frame


def rtp_stream(
    codec_name: str,
    seconds: float,
    *,
    rgb: tuple[int, int, int] = (220, 30, 30),
    frequency: float = 440.0,
    ssrc: int = 1234,
    first_seq: int = 65000,
    keyframe_every: int = 90,
) -> list[Timed]:
    """Packets of ``seconds`` of media; sequence numbers and timestamps wrap early on purpose."""
    codec = CODECS[codec_name]
    encoder = get_encoder(codec)
    packets: list[Timed] = []
    seq = first_seq
    video = codec_name != "opus"
    count = round(seconds * (30 if video else 50))
    for i in range(count):
        if video:
            payloads, timestamp = encoder.encode(video_frame(i, rgb), force_keyframe=i % keyframe_every == 0)
            at = i / 30
        else:
            payloads, timestamp = encoder.encode(audio_frame(i, frequency))
            at = i / 50
        for n, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=codec.payloadType or 96,
                sequence_number=seq & 0xFFFF,
                timestamp=(timestamp + 0xFFFF0000) & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=payload,
                marker=1 if n == len(payloads) - 1 else 0,
            )
            packets.append(Timed(packet, at))
            seq += 1
    return packets


def frame_feed(sink: FrameSink, codec_name: str) -> FrameSource:
    """A frame source feeding ``sink``, as a published track's would: give it packets with
    ``on_rtp(packet, CODECS[codec_name])``, end with ``on_track_closed()``."""
    source = FrameSource("audio" if codec_name == "opus" else "video", lambda: None)
    source.subscribe(sink)
    return source


def _record_live(codec_name: str, path: str, seconds: float) -> None:
    """Record in real time with the server's recorder; prints 'started' at the first frame."""
    import asyncio
    from pathlib import Path

    from gbmedia.recording.track_recorder import TrackRecorder

    stream = rtp_stream(codec_name, seconds)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        recorder = TrackRecorder(
            Path(path), CODECS[codec_name], loop=loop, on_started=lambda: print("started", flush=True)
        )
        feed = frame_feed(recorder, codec_name)
        start = time.monotonic()
        for timed in stream:
            wait = start + timed.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            feed.on_rtp(timed.packet, CODECS[codec_name])
        feed.on_track_closed()
        await recorder.result()
        print("finished", flush=True)

    asyncio.run(main())


if __name__ == "__main__":
    _record_live(sys.argv[1], sys.argv[2], float(sys.argv[3]))
