"""RTP forwarding between real aiortc peers, without transcoding on the server."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import (
    RTCP_PSFB_APP,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
)

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.peers import NegotiationError, PublisherPeer, SubscriberPeer, TrackInfo
from tests.rtc import ColorVideoTrack, ToneAudioTrack, answer_to, close_to, mean_rgb, offer_from, wait_for

RED = (220, 30, 30)
BLUE = (30, 30, 220)


@dataclass
class Receiving:
    """A client-side subscriber that decodes everything it gets."""

    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    frames: dict[str, list[av.VideoFrame | av.AudioFrame]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    mids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = next(t.mid for t in self.pc.getTransceivers() if t.receiver.track is track)
        self.frames[mid] = []
        self.tasks.append(asyncio.ensure_future(self._pull(mid, track)))

    async def _pull(self, mid: str, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                self.frames[mid].append(await track.recv())

    def video(self, track_id: str) -> list[av.VideoFrame]:
        mid = next(m for m, t in self.mids.items() if t == track_id)
        return self.frames.get(mid, [])  # type: ignore[return-value]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def publish(server: PublisherPeer, client: RTCPeerConnection, infos: dict[str, TrackInfo] | None = None):
    offer = await offer_from(client)
    answer, added, ended = await server.answer(offer, infos)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return added, ended


async def subscribe(server: SubscriberPeer, client: Receiving) -> None:
    offer, mids = await server.offer()
    client.mids = mids
    await server.accept_answer(await answer_to(client.pc, offer))


@pytest.fixture
async def publisher() -> AsyncIterator[tuple[PublisherPeer, RTCPeerConnection]]:
    server, client = PublisherPeer("alice"), RTCPeerConnection()
    yield server, client
    await client.close()
    await server.close()


async def test_adapter_finds_every_aiortc_internal_it_uses():
    await aiortc_adapter.check_internals()


def test_sender_reports_are_the_bytes_aiortc_writes():
    """The loop's timer packs reports itself: byte for byte aiortc's SR + SDES, every padding case."""
    for cname in (None, "", "a", "ab", "abc", "abcd", "{7c2e-é}", "x" * 40):
        for counts in ((0, 0), (17, 20_400), (2**32 + 5, 2**40 + 9)):  # counters wrap at 32 bits, as aiortc's
            ours = aiortc_adapter.sender_report_bytes(
                0xDEADBEEF, 0xE1234567_89ABCDEF, 90_000, *counts, aiortc_adapter.sdes_bytes(0xDEADBEEF, cname)
            )
            info = RtcpSenderInfo(0xE1234567_89ABCDEF, 90_000, counts[0] & 0xFFFFFFFF, counts[1] & 0xFFFFFFFF)
            theirs = bytes(RtcpSrPacket(ssrc=0xDEADBEEF, sender_info=info))
            if cname is not None:
                chunk = RtcpSourceInfo(ssrc=0xDEADBEEF, items=[(1, cname.encode())])
                theirs += bytes(RtcpSdesPacket(chunks=[chunk]))
            assert ours == theirs, cname


async def test_forwarding_senders_report_from_the_loops_one_timer(publisher, monkeypatch: pytest.MonkeyPatch):
    """A subscriber's sender reports come from the shared timer: the viewer reads them (aiortc's
    remote-outbound-rtp), answers them (the round trip time the node then knows), and a
    stopped sender leaves the timer."""
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    (video,), _ = await publish(server, client)
    await wait_for(lambda: video.packets_in > 0)
    reports = aiortc_adapter.sender_reports()
    sent = reports.sent
    sub_server, viewer = SubscriberPeer("bob"), Receiving()
    try:
        sub_server.add(video)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 5)
        sender = next(iter(video.down_tracks)).slot.transceiver.sender
        assert sender in reports

        async def stats(of: object, kind: str) -> list[object]:
            return [s for s in (await of.getStats()).values() if s.type == kind]  # type: ignore[attr-defined]

        receiver = viewer.pc.getTransceivers()[0].receiver
        for _ in range(100):
            seen = await stats(receiver, "remote-outbound-rtp")
            answered = [s for s in await stats(sender, "remote-inbound-rtp") if s.roundTripTime is not None]
            if seen and answered:
                break
            await asyncio.sleep(0.1)
        assert seen and seen[0].packetsSent > 0  # the viewer read a report with the forwarded count
        assert answered and 0 <= answered[0].roundTripTime < 1  # the node matched the viewer's LSR/DLSR
        report = await sender.getStats()  # what the quality monitor reads instead: the same figures
        figures = aiortc_adapter.sender_figures(sender)
        outbound = next(s for s in report.values() if s.type == "outbound-rtp")
        remote = next(s for s in report.values() if s.type == "remote-inbound-rtp")
        assert figures == (outbound.packetsSent, outbound.bytesSent, remote) and figures[0] > 0
        assert reports.sent > sent

        def refuse(self: aiortc_adapter.RawSender, payload: bytes) -> None:
            raise OSError("refused")

        working = aiortc_adapter.RawSender.send_rtcp_now  # a report that fails (its socket refuses) stops no timer
        monkeypatch.setattr(aiortc_adapter.RawSender, "send_rtcp_now", refuse)
        failed = reports.failed
        await wait_for(lambda: reports.failed > failed, within=5)
        monkeypatch.setattr(aiortc_adapter.RawSender, "send_rtcp_now", working)
        sent = reports.sent
        await wait_for(lambda: reports.sent > sent, within=5)
    finally:
        await viewer.close()
        await sub_server.close()
    assert sender not in reports


async def test_subscriber_decodes_the_publishers_video_and_audio(publisher):
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    client.addTrack(ToneAudioTrack())
    added, _ = await publish(server, client, {"0": TrackInfo("camera", "cam")})
    assert sorted(t.kind for t in added) == ["audio", "video"]
    video = next(t for t in added if t.kind == "video")
    audio = next(t for t in added if t.kind == "audio")
    assert (video.source, video.name, video.codec.mimeType) == ("camera", "cam", "video/VP8")
    assert audio.codec.mimeType == "audio/opus"
    await wait_for(lambda: video.packets_in > 0 and audio.packets_in > 0)

    sub_server, viewer = SubscriberPeer("bob"), Receiving()
    try:
        sub_server.add(video)
        sub_server.add(audio)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 10)
        assert close_to(mean_rgb(viewer.video(video.id)[-1]), RED)
        audio_mid = next(m for m, t in viewer.mids.items() if t == audio.id)
        await wait_for(lambda: len(viewer.frames.get(audio_mid, [])) >= 10)
        assert viewer.frames[audio_mid][-1].sample_rate == 48000
        # The server forwarded RTP: its packet counters moved, and it never decoded.
        down = next(iter(video.down_tracks))
        assert down.packets_out > 0
    finally:
        await viewer.close()
        await sub_server.close()


async def test_late_joiner_gets_a_keyframe_promptly(publisher):
    """A subscriber arriving mid-stream triggers a PLI upstream instead of waiting for
    the publisher's next periodic keyframe (aiortc sends those every few seconds)."""
    server, client = publisher
    client.addTrack(ColorVideoTrack(BLUE))
    added, _ = await publish(server, client)
    video = added[0]
    await wait_for(lambda: video.packets_in > 150)  # several seconds into the stream

    sub_server, viewer = SubscriberPeer("carol"), Receiving()
    try:
        sub_server.add(video)
        started = asyncio.get_running_loop().time()
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 1, within=10)
        elapsed = asyncio.get_running_loop().time() - started
        assert close_to(mean_rgb(viewer.video(video.id)[0]), BLUE)
        # Generous bound, not a timing assertion on the server: without forwarding the
        # PLI the first decodable frame waits for a keyframe the publisher never sends
        # on its own (aiortc's encoder keyframe interval is far longer).
        assert elapsed < 8, elapsed
    finally:
        await viewer.close()
        await sub_server.close()


async def test_unpublish_and_republish_reuses_the_subscriber_transceiver(publisher):
    server, client = publisher
    sender = client.addTrack(ColorVideoTrack(RED))
    added, _ = await publish(server, client)
    first = added[0]
    sub_server, viewer = SubscriberPeer("dave"), Receiving()
    try:
        down = sub_server.add(first)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(first.id)) >= 5)

        # Unpublish: the publisher stops sending on its transceiver.
        transceiver = next(t for t in client.getTransceivers() if t.sender is sender)
        transceiver.direction = "inactive"
        _, ended = await publish(server, client)
        assert ended == [first]
        assert not first.down_tracks  # detached from every subscriber
        sub_server.remove(down)
        await subscribe(sub_server, viewer)

        # Republish a blue camera: a new track id, same subscriber transceiver.
        client.addTrack(ColorVideoTrack(BLUE))
        added, _ = await publish(server, client)
        second = added[0]
        assert second.id != first.id
        sub_server.add(second)
        assert len(sub_server.slots) == 1  # reused, not a new m-line
        await subscribe(sub_server, viewer)
        # generous: on a loaded machine the new track's first keyframe can take a while
        await wait_for(lambda: any(close_to(mean_rgb(f), BLUE) for f in viewer.video(second.id)[-5:]), within=40)
    finally:
        await viewer.close()
        await sub_server.close()


async def test_server_mute_stops_forwarding(publisher):
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    video = (await publish(server, client))[0][0]
    sub_server, viewer = SubscriberPeer("erin"), Receiving()
    try:
        down = sub_server.add(video)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 3)
        video.muted = True
        await asyncio.sleep(0.2)
        sent = down.packets_out
        await asyncio.sleep(0.5)
        assert down.packets_out == sent
        video.muted = False
        video.unmuted()
        # The subscriber's decoder restarts on a keyframe: nothing until one comes (a camera turned
        # back on may take a while to have one; a delta frame without its reference is useless).
        assert down.waiting_keyframe
        await wait_for(lambda: down.packets_out > sent and not down.waiting_keyframe)
        frames = len(viewer.video(video.id))
        await wait_for(lambda: len(viewer.video(video.id)) >= frames + 3)  # decoded again
    finally:
        await viewer.close()
        await sub_server.close()


@pytest.mark.parametrize(
    ("sdp", "code"),
    [
        ("hello", "invalid_sdp"),
        ("v=0\r\nthis is not sdp\r\n", "invalid_sdp"),
    ],
)
async def test_bad_offers_are_refused_with_a_code(sdp: str, code: str):
    server = PublisherPeer("mallory")
    try:
        with pytest.raises(NegotiationError) as info:
            await server.answer(sdp)
        assert info.value.code == code
    finally:
        await server.close()


async def test_an_offer_without_a_supported_codec_is_refused(publisher):
    _, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    offer = await offer_from(client)
    # Keep only a codec aiortc cannot use on the video m-line.
    lines = []
    for line in offer.split("\r\n"):
        if line.startswith("m=video"):
            parts = line.split(" ")
            line = " ".join([*parts[:3], "120"])
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            continue
        lines.append(line)
    lines.insert(-1, "a=rtpmap:120 AV1X/90000")
    server = PublisherPeer("mallory")
    try:
        with pytest.raises(NegotiationError) as info:
            await server.answer("\r\n".join(lines))
        assert info.value.code == "no_usable_codec"
    finally:
        await server.close()


async def test_an_answer_without_an_offer_is_refused():
    server = SubscriberPeer("zed")
    try:
        with pytest.raises(NegotiationError) as info:
            await server.accept_answer("v=0\r\n")
        assert info.value.code in ("invalid_sdp", "unexpected_answer")
    finally:
        await server.close()


@dataclass
class CountingSink:
    """A packet consumer like a recorder: counts what it is fed, notes the close."""

    packets: int = 0
    keyframes: int = 0
    closed: bool = False
    fail_after: int | None = None

    def on_rtp(self, packet, codec) -> None:  # type: ignore[no-untyped-def]
        from gbmedia.sfu.codecs import is_keyframe

        if self.fail_after is not None and self.packets >= self.fail_after:
            raise RuntimeError("disk full")
        self.packets += 1
        if packet.payload and is_keyframe(codec.mimeType, packet.payload):
            self.keyframes += 1

    def on_track_closed(self) -> None:
        self.closed = True


async def test_packet_sinks_see_every_packet_and_the_close(publisher):
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    added, _ = await publish(server, client)
    video = added[0]
    await wait_for(lambda: video.packets_in > 60)
    sink, failing = CountingSink(), CountingSink(fail_after=3)
    video.add_sink(sink)
    video.add_sink(failing)
    video.add_sink(sink)  # adding twice feeds it once
    # Joining mid-stream asks the publisher for a keyframe, so the sink can start.
    await wait_for(lambda: sink.keyframes >= 1 and sink.packets > 30, within=10)
    assert failing.packets == 3 and failing not in video.sinks  # a failing sink is dropped, others go on
    before = video.packets_in - sink.packets
    await wait_for(lambda: sink.packets > 60)
    assert video.packets_in - sink.packets - before <= 2  # it gets every packet since it joined
    video.remove_sink(sink)
    stopped_at = sink.packets
    await wait_for(lambda: video.packets_in > stopped_at + before + 30)
    assert sink.packets == stopped_at
    video.add_sink(sink)
    video.close()
    assert sink.closed and not video.sinks


async def test_lost_packets_are_repaired_by_nack_without_a_freeze(publisher):
    """The subscriber's link drops one packet in five (first copies only): its NACKs are
    answered from the down track's history, so frames keep decoding and it never
    needs to ask for a keyframe to recover."""
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    added, _ = await publish(server, client)
    video = added[0]
    await wait_for(lambda: video.packets_in > 30)

    sub_server, viewer = SubscriberPeer("bob"), Receiving()
    dropped: set[int] = set()
    keyframe_requests = 0
    try:
        down = sub_server.add(video)
        original_request = down.slot.on_keyframe_request

        def counting_request() -> None:
            nonlocal keyframe_requests
            keyframe_requests += 1
            original_request()

        down.slot.on_keyframe_request = counting_request  # type: ignore[method-assign]
        await subscribe(sub_server, viewer)
        ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
        receive = ice._recv

        async def lossy() -> bytes:
            """Drop datagrams before SRTP sees them, as a lossy link would (SRTP headers are clear)."""
            while True:
                data = await receive()
                is_rtp = 128 <= data[0] < 192 and not 192 <= data[1] <= 223
                seq = int.from_bytes(data[2:4], "big")
                if is_rtp and seq % 5 == 3 and seq not in dropped:
                    dropped.add(seq)
                    continue
                return data

        await wait_for(lambda: len(viewer.video(video.id)) >= 5)
        ice._recv = lossy
        before, requests_before = len(viewer.video(video.id)), keyframe_requests
        await asyncio.sleep(4)
        decoded = len(viewer.video(video.id)) - before
        assert len(dropped) >= 15
        assert down.resent >= len(dropped) * 0.8  # answered from the history
        assert decoded >= 4 * 30 * 0.8, decoded  # ~30 fps kept: no freeze
        assert keyframe_requests - requests_before <= 1
        assert close_to(mean_rgb(viewer.video(video.id)[-1]), RED)
    finally:
        await viewer.close()
        await sub_server.close()


async def test_packets_aiortc_cannot_parse_are_dropped_and_the_connections_live(publisher):
    """Found by the fuzzer (tests/fuzz/corpus/rtp, rtcp): an abs-send-time extension cut short, or a REMB
    whose SSRC count runs past its end, raised struct.error in aiortc's parser (which drops only
    ValueError) and ended the DTLS transport's receive loop: one authenticated packet closed the
    publisher's (or the subscriber's) whole connection."""
    server, client = publisher
    client.addTrack(ColorVideoTrack(RED))
    (video,), _ = await publish(server, client)
    await wait_for(lambda: video.packets_in > 0)
    sub_server, viewer = SubscriberPeer("bob"), Receiving()
    try:
        sub_server.add(video)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 3)

        sender = client.getTransceivers()[0].sender
        ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids
        short_abs_send_time = RtpPacket(payload_type=97, sequence_number=1, timestamp=1, ssrc=0x5EED)
        raw = bytearray(short_abs_send_time.serialize(HeaderExtensionsMap()))
        raw[0] |= 0x10  # X: a one-byte extension block with abs-send-time of 2 bytes instead of 3
        raw[12:12] = b"\xbe\xde\x00\x01" + bytes([(ids.abs_send_time << 4) | 1, 0, 0, 0])
        with pytest.raises(struct.error):
            RtpPacket.parse(bytes(raw), sender._RTCRtpSender__rtp_header_extensions_map)
        await sender.transport._send_rtp(bytes(raw))

        two_ssrcs_one_given = b"REMB\x02\x00\x10\x00\x00\x00\x00\x01"
        short_remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=two_ssrcs_one_given)
        with pytest.raises(struct.error):
            unpack_remb_fci(short_remb.fci)
        await viewer.pc.getTransceivers()[0].receiver.transport._send_rtp(bytes(short_remb))

        seen_in, seen_out = video.packets_in, len(viewer.video(video.id))
        await wait_for(lambda: video.packets_in > seen_in + 30 and len(viewer.video(video.id)) > seen_out + 10)
        for pc in (server.pc, sub_server.pc):
            assert {t.receiver.transport.state for t in pc.getTransceivers()} == {"connected"}
    finally:
        await viewer.close()
        await sub_server.close()
