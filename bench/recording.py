"""Recording benchmark: CPU to record one track, gbmedia's recorder against aiortc's MediaRecorder.

Both record the same stream: RTP packets of ``--seconds`` of 640x480 VP8 at 30 fps
(a scrolling pattern, aiortc's encoder near its default bitrate) and of Opus at 50
frames/s, made in advance by aiortc's own encoders and packetisers, so making them is
not measured.

* gbmedia: what the server attaches to a published track: its frame source
  (:mod:`gbmedia.sfu.frames`: reorder, depacketise) feeding a
  :class:`gbmedia.recording.track_recorder.TrackRecorder` (mux into WebM), no decoding.
* aiortc: what recording a received track costs with aiortc alone: its jitter buffer
  and decoder (as ``RTCRtpReceiver`` runs them) feed a ``MediaStreamTrack`` into
  ``aiortc.contrib.media.MediaRecorder`` writing WebM, which re-encodes (libvpx,
  libopus).

Packets are fed as fast as each pipeline takes them; the figure is process CPU
(user + system, every thread: ``time.process_time``) from the first packet to the
closed file, per second of media. Each pipeline runs ``--repeat`` times in a fresh
child process and the median is printed. It asserts nothing: it is a measurement.

    python -m bench.recording --seconds 20
    python -m bench.recording --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.contrib.media import MediaRecorder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from bench.lib import REPO_ROOT
from bench.lib.media import CODECS, audio_frame
from gbmedia.recording.track_recorder import TrackRecorder
from gbmedia.sfu.frames import FrameSource

Stream = list[tuple[bytes, int, int, int]]  # (payload, sequence, timestamp, marker): picklable for the children


def make_stream(codec: str, seconds: float, width: int, height: int) -> Stream:
    """The RTP stream of ``seconds`` of ``codec`` (VP8 ``width`` x ``height`` at 30 fps, or Opus), made in
    advance by aiortc's own encoder and packetiser, so that making it is not measured."""
    encoder = get_encoder(CODECS[codec])
    out: list[tuple[bytes, int, int, int]] = []
    seq = 1000
    if codec == "VP8":
        y, x = np.mgrid[0:height, 0:width]
        for i in range(round(seconds * 30)):
            image = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + 3 * i) % 256], axis=-1)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
            payloads, timestamp = encoder.encode(frame, force_keyframe=i % 90 == 0)
            for n, payload in enumerate(payloads):
                out.append((payload, seq & 0xFFFF, timestamp & 0xFFFFFFFF, int(n == len(payloads) - 1)))
                seq += 1
    else:
        for i in range(round(seconds * 50)):
            payloads, timestamp = encoder.encode(audio_frame(i))
            out.append((payloads[0], seq & 0xFFFF, timestamp & 0xFFFFFFFF, 1))
            seq += 1
    return out


def rtp_packets(raw: Stream, codec: str) -> list[RtpPacket]:
    """The stream as aiortc's packet objects, what a pipeline is fed."""
    pt = CODECS[codec].payloadType or 96
    return [
        RtpPacket(payload_type=pt, sequence_number=s, timestamp=t, ssrc=1, payload=p, marker=m) for p, s, t, m in raw
    ]


async def run_gbmedia(raw: Stream, codec: str, out: Path) -> float:
    """CPU seconds for gbmedia's recorder to write the stream into ``out``: reorder, depacketise, mux."""
    packets = rtp_packets(raw, codec)
    started = time.process_time()
    recorder = TrackRecorder(out, CODECS[codec], loop=asyncio.get_running_loop())
    feed = FrameSource("audio" if codec == "opus" else "video", lambda: None)  # a published track's: reorder, assemble
    feed.subscribe(recorder)
    for packet in packets:
        feed.on_rtp(packet, CODECS[codec])
    feed.on_track_closed()
    result = await recorder.result()
    used = time.process_time() - started
    assert result.error is None and result.stats.frames > 0, result
    return used


async def run_aiortc(raw: Stream, codec: str, out: Path) -> float:
    """CPU seconds for aiortc alone to record the stream into ``out``: jitter buffer, decoder, MediaRecorder
    (which re-encodes)."""
    packets = rtp_packets(raw, codec)
    video = codec == "VP8"
    frames: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue(maxsize=8)  # the recorder drains it
    ended = asyncio.Event()

    class Received(MediaStreamTrack):
        kind = "video" if video else "audio"

        async def recv(self) -> av.VideoFrame | av.AudioFrame:
            frame = await frames.get()
            if frame is None:
                ended.set()
                self.stop()
                raise MediaStreamError
            return frame

    started = time.process_time()
    recorder = MediaRecorder(str(out), format="webm")
    recorder.addTrack(Received())
    await recorder.start()
    # aiortc's receive path: jitter buffer (its sizes), then the decoder (in its own thread there).
    buffer = JitterBuffer(capacity=128, is_video=True) if video else JitterBuffer(capacity=16, prefetch=4)
    decoder = get_decoder(CODECS[codec])
    loop = asyncio.get_running_loop()
    for packet in packets:
        packet._data = depayload(CODECS[codec], packet.payload)  # what RTCRtpReceiver does before buffering
        _, encoded = buffer.add(packet)
        if encoded is not None:
            for frame in await loop.run_in_executor(None, decoder.decode, encoded):
                await frames.put(frame)
    await frames.put(None)
    await ended.wait()
    await recorder.stop()
    return time.process_time() - started


def child(kind: str, stream_file: str, codec: str, out: str) -> None:
    """One pipeline on one stream, in a fresh process (``--child``): its CPU seconds as a JSON line."""
    with open(stream_file, "rb") as f:
        raw = pickle.load(f)
    runner = run_gbmedia if kind == "gbmedia" else run_aiortc
    used = asyncio.run(runner(raw, codec, Path(out)))
    print(json.dumps({"cpu": used}))


def probe_duration(path: Path) -> float | None:
    """The file's duration as ffprobe reads it: the check that a pipeline wrote the whole stream."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )
    try:
        return float(done.stdout.strip())
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    """The orchestrator (or, with ``--child``, one pipeline): the table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="3 s, one run each: does it run?")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.smoke:
        args.seconds, args.repeat = 3.0, 1
    results = []
    with tempfile.TemporaryDirectory(prefix="gbmedia-bench-rec-") as tmp:
        for codec in ("VP8", "opus"):
            t0 = time.process_time()
            raw = make_stream(codec, args.seconds, args.width, args.height)
            made = time.process_time() - t0
            stream_file = Path(tmp) / f"{codec}.pkl"
            stream_file.write_bytes(pickle.dumps(raw))
            row = {
                "codec": codec,
                "seconds": args.seconds,
                "packets": len(raw),
                "kbps": round(sum(len(p[0]) for p in raw) * 8 / args.seconds / 1000, 1),
                "stream_made_cpu_s": round(made, 2),
            }
            for kind in ("gbmedia", "aiortc"):
                cpus, durations = [], []
                for i in range(args.repeat):
                    out = Path(tmp) / f"{kind}-{codec}-{i}.webm"
                    done = subprocess.run(
                        [sys.executable, "-m", "bench.recording", "--child", kind, str(stream_file), codec, str(out)],
                        capture_output=True,
                        text=True,
                        cwd=REPO_ROOT,
                    )
                    if done.returncode != 0:
                        raise SystemExit(f"{kind} {codec} failed:\n{done.stderr[-3000:]}")
                    cpus.append(json.loads(done.stdout.strip().splitlines()[-1])["cpu"])
                    durations.append(probe_duration(out))
                row[f"{kind}_cpu_s"] = round(statistics.median(cpus), 3)
                row[f"{kind}_cpu_ms_per_media_s"] = round(statistics.median(cpus) / args.seconds * 1000, 2)
                row[f"{kind}_file_duration_s"] = durations[0]
            row["ratio"] = round(row["aiortc_cpu_s"] / row["gbmedia_cpu_s"], 1)
            results.append(row)
    load = os.getloadavg()
    print(
        f"\nRecording one track for {args.seconds:g} s of media "
        f"({args.width}x{args.height} VP8 at 30 fps; Opus 48 kHz), median of {args.repeat} run(s)"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(f"{'track':6} {'kbps':>7} {'gbmedia CPU s':>14} {'aiortc CPU s':>13} {'ms CPU per media s':>22} {'ratio':>6}")
    for r in results:
        per = f"{r['gbmedia_cpu_ms_per_media_s']} vs {r['aiortc_cpu_ms_per_media_s']}"
        print(
            f"{r['codec']:6} {r['kbps']:>7} {r['gbmedia_cpu_s']:>14} {r['aiortc_cpu_s']:>13} {per:>22} {r['ratio']:>5}x"
        )
    report = {"load_average": load, "cpus": os.cpu_count(), "results": results}
    print("\n" + json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
