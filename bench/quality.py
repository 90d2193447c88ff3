"""What media quality and active speaker detection add to the forwarding path.

Both features are packet sinks on every published track (gbmedia/sfu/stats.py
``TrackMeter``, gbmedia/sfu/speakers.py ``LevelMeter``), called for every RTP packet
on the event loop, plus a periodic tick per room. This measures, in one process:

* CPU per packet of each sink, on real aiortc packets parsed with the audio level
  extension (as the server's transport hands them over);
* CPU of one detector tick for rooms of N participants;
* CPU of one quality sample (aiortc ``getStats()`` on a real connected receiver and
  sender pair, plus the rate arithmetic) per track;
* CPU per packet of the publisher's receive path pieces that run in Python: aiortc's RTP
  parse and its REMB estimator (``RemoteBitrateEstimator.add``), fed a 30 fps stream at
  VGA's 1 Mbps (4 packets a frame) and at 4K's 18 Mbps (68): the estimator does part of
  its work per frame and per millisecond, so its cost per packet depends on the stream.

Prints a table and JSON. Asserts nothing about time.

    python -m bench.quality [--packets 200000] [--json out.json]
    python -m bench.quality --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from aiortc import RTCPeerConnection
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from bench.lib.media import ToneAudioTrack
from gbmedia.sfu.speakers import SpeakerDetector
from gbmedia.sfu.stats import RateTracker, TrackMeter

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def cpu() -> float:
    """This process's CPU time, every thread: what the figures here are made of."""
    return time.process_time()


def packets(count: int) -> list[RtpPacket]:
    """``count`` Opus packets as the server's transport hands them over: parsed, with the audio level extension."""
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")]
        )
    )
    out = []
    for seq in range(min(count, 5000)):
        sent = RtpPacket(
            payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=1, marker=seq % 3 == 0, payload=bytes(120)
        )
        sent.extensions.audio_level = (False, seq % 128)
        out.append(RtpPacket.parse(sent.serialize(extensions), extensions))
    return (out * (count // len(out) + 1))[:count]


def per_packet(sink: object, batch: list[RtpPacket]) -> float:
    """µs of CPU per ``sink.on_rtp`` call over ``batch``, the loop included."""
    on_rtp = sink.on_rtp  # type: ignore[attr-defined]
    started = cpu()
    for packet in batch:
        on_rtp(packet, OPUS)
    return (cpu() - started) / len(batch) * 1e6


def baseline(batch: list[RtpPacket]) -> float:
    """The loop alone, to subtract: a sink that does nothing."""

    def nothing(packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        return None

    started = cpu()
    for packet in batch:
        nothing(packet, OPUS)
    return (cpu() - started) / len(batch) * 1e6


def tick_cost(participants: int, rounds: int = 200) -> float:
    """µs of CPU per ``SpeakerDetector.tick`` for a room of ``participants``, a quarter of them talking."""
    detector = SpeakerDetector()
    meters = [detector.add(f"PA_{i}", f"TR_{i}") for i in range(participants)]
    batch = packets(25)
    total = 0.0
    for r in range(rounds):
        for i, meter in enumerate(meters):
            if (i + r) % 4 == 0:  # a quarter of them talk at a time
                for packet in batch:
                    meter.on_rtp(packet, OPUS)
        started = cpu()
        detector.tick()
        total += cpu() - started
    return total / rounds * 1e6


async def sample_cost(rounds: int = 200) -> tuple[float, float]:
    """µs of CPU per receiver.getStats() and per sender.getStats() on a connected pair."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    try:
        a.addTrack(ToneAudioTrack())
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        receiver = b.getReceivers()[0]
        sender = a.getSenders()[0]
        for _ in range(100):
            if any(s.type == "inbound-rtp" for s in (await receiver.getStats()).values()):
                break
            await asyncio.sleep(0.05)
        rates = RateTracker()
        started = cpu()
        for n in range(rounds):
            report = await receiver.getStats()
            inbound = next(s for s in report.values() if s.type == "inbound-rtp")
            rates.rates("r", {"received": inbound.packetsReceived, "lost": inbound.packetsLost}, now=float(n + 1))
        receive = (cpu() - started) / rounds * 1e6
        started = cpu()
        for n in range(rounds):
            report = await sender.getStats()
            outbound = next(s for s in report.values() if s.type == "outbound-rtp")
            rates.rates("s", {"bytes": outbound.bytesSent}, now=float(n + 1))
        send = (cpu() - started) / rounds * 1e6
        return receive, send
    finally:
        await a.close()
        await b.close()


VIDEO_EXTENSIONS = (
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
)
STREAMS = {"vga": 1_000_000, "4k": 18_000_000}  # bits/s of a 30 fps VP8 stream, 1,100-byte payloads


def video_extensions() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=list(VIDEO_EXTENSIONS)))
    return extensions


def video_stream(bitrate: int, seconds: float) -> list[tuple[bytes, int]]:
    """A 30 fps stream's packets as they arrive, serialized with mid and abs-send-time: (datagram, arrival ms).

    A frame's packets leave together (abs-send-time 0.1 ms apart) and arrive 0.1 ms apart."""
    extensions = video_extensions()
    per_frame = max(1, round(bitrate / 30 / 8 / 1100))
    out: list[tuple[bytes, int]] = []
    seq = 0
    for frame in range(int(seconds * 30)):
        sent_ms = frame * 1000 / 30
        for i in range(per_frame):
            packet = RtpPacket(
                payload_type=96,
                sequence_number=seq % 65536,
                timestamp=frame * 3000,
                ssrc=1,
                marker=i == per_frame - 1,
                payload=bytes(1100),
            )
            packet.extensions.mid = "0"
            packet.extensions.abs_send_time = int((sent_ms + i * 0.1) / 1000 * (1 << 18)) & 0xFFFFFF
            out.append((packet.serialize(extensions), int(sent_ms + 20 + i * 0.1)))
            seq += 1
    return out


def receive_cost(bitrate: int, seconds: float) -> tuple[float, float, int]:
    """µs of CPU per packet of aiortc's RTP parse and of its REMB estimator on a ``bitrate`` stream;
    packets per frame."""
    stream = video_stream(bitrate, seconds)
    extensions = video_extensions()
    started = cpu()
    parsed = [(RtpPacket.parse(data, extensions), arrival) for data, arrival in stream]
    parse = (cpu() - started) / len(stream) * 1e6
    estimator = RemoteBitrateEstimator()
    started = cpu()
    for packet, arrival in parsed:
        estimator.add(
            abs_send_time=packet.extensions.abs_send_time,
            arrival_time_ms=arrival,
            payload_size=len(packet.payload),
            ssrc=packet.ssrc,
        )
    remb = (cpu() - started) / len(stream) * 1e6
    return parse, remb, len(stream) // int(seconds * 30)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and the JSON; ``--smoke`` measures fewer packets, ticks and samples."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="quick check: 20,000 packets, 20 ticks and samples: does it run?"
    )
    args = parser.parse_args(argv)
    rounds = 200
    if args.smoke:
        args.packets, rounds = 20_000, 20

    batch = packets(args.packets)
    base = min(baseline(batch) for _ in range(3))
    track_meter = min(per_packet(TrackMeter("video"), batch) for _ in range(3)) - base
    level_meter = min(per_packet(SpeakerDetector().add("PA", "TR"), batch) for _ in range(3)) - base
    ticks = {n: tick_cost(n, rounds) for n in (2, 10, 50, 200)}
    receive, send = asyncio.run(sample_cost(rounds))
    seconds = 10.0 if args.smoke else 60.0
    received = {name: min(receive_cost(bitrate, seconds) for _ in range(3)) for name, bitrate in STREAMS.items()}
    load = os.getloadavg()

    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print("| figure | CPU |")
    print("| --- | --- |")
    print(f"| TrackMeter.on_rtp, per packet (loop overhead {base:.3f} µs subtracted) | {track_meter:.3f} µs |")
    print(f"| LevelMeter.on_rtp, per audio packet | {level_meter:.3f} µs |")
    for n, cost in ticks.items():
        print(f"| SpeakerDetector.tick, room of {n} audio participants | {cost:.1f} µs |")
    print(f"| receiver.getStats() + rates, per published track and sample | {receive:.1f} µs |")
    print(f"| sender.getStats() + rates, per down track and sample | {send:.1f} µs |")
    for name, (parse, remb, per_frame) in received.items():
        print(f"| RtpPacket.parse, per {name} packet | {parse:.2f} µs |")
        print(f"| RemoteBitrateEstimator.add (REMB), per {name} packet ({per_frame} a frame) | {remb:.2f} µs |")
    result = {
        "load": load,
        "per_packet_us": {"track_meter": track_meter, "level_meter": level_meter, "loop": base},
        "tick_us": ticks,
        "sample_us": {"receiver": receive, "sender": send},
        "receive_us": {
            name: {"parse": parse, "remb_estimator": remb, "packets_per_frame": per_frame}
            for name, (parse, remb, per_frame) in received.items()
        },
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
