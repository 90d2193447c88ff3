"""SRTP and SRTCP on the shared UDP port go from the socket to their handlers in one call.

(gbmedia.sfu.aiortc_adapter.receive_rtp_directly, gbmedia.sfu.udp_mux.MuxedTransport.receive_media.)
A publisher's RTP reaches its track, a publisher's and a subscriber's RTCP their receiver and sender.
Everything aiortc did with them still happens: the DTLS transport's counters, the receiver's
statistics (its receiver reports to the publisher), REMB, NACK, sender and receiver reports, and the
same drops of what is not authentic or does not parse; DTLS still goes aiortc's way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import HeaderExtensionsMap, RtcpRrPacket, RtpPacket, is_rtcp
from pylibsrtp import Session

from gbmedia.config import detect_public_host
from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.forwarder import DownTrack
from gbmedia.sfu.peers import PublisherPeer, SubscriberPeer
from gbmedia.sfu.track import PublishedTrack
from gbmedia.sfu.udp_mux import UdpMux
from tests.rtc import ColorVideoTrack, close_to, mean_rgb, wait_for
from tests.sfu.test_fanout import address, native, policy
from tests.sfu.test_forwarding import Receiving, publish, subscribe
from tests.sfu.test_remb import rembs_to

BLUE = (30, 30, 200)


@pytest.fixture(params=["python", "native"])
async def on_port(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[UdpMux, PublisherPeer, RTCPeerConnection, SubscriberPeer, Receiving]]:
    """A publisher and a subscriber, both on one shared port; the publisher sends a blue camera. On a
    natively forwarding node's port (``native``) too, where the RTP is unprotected in C."""
    mux = await UdpMux.bind(detect_public_host(), 0)
    if request.param == "native":
        native()  # built by scripts/test: a missing one fails in CI, skips elsewhere
        mux.native_fanout = True
    server = PublisherPeer("alice", address=address(mux))
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sub_server, viewer = SubscriberPeer("bob", address=address(mux)), Receiving()
    yield mux, server, client, sub_server, viewer
    await viewer.close()
    await sub_server.close()
    await client.close()
    await server.close()
    mux.close()


async def test_a_publishers_rtp_goes_straight_to_its_track_and_everything_else_still_happens(on_port):
    mux, server, client, sub_server, viewer = on_port
    client.addTrack(ColorVideoTrack(BLUE))
    rembs = rembs_to(client)
    (video,), _ = await publish(server, client)
    await wait_for(lambda: video.packets_in > 60)
    # Every RTP packet the track counted came the direct way (none through aioice's queue).
    assert mux.counters.rtp_direct >= video.packets_in
    dtls = server.pc.getTransceivers()[0].receiver.transport
    transport_stats = next(s for s in dtls._get_stats().values() if s.type == "transport")
    assert transport_stats.packetsReceived >= mux.counters.rtp_direct  # aiortc's counters still count them
    # Which session unprotected them: a native one on a native node's port, made once; aiortc's elsewhere.
    made = dtls.__dict__.get("_gbmedia_rx_native")
    assert (made is not None) == mux.native_fanout
    if made is not None:
        assert made[0] is dtls._rx_srtp and type(made[1]).__name__ == "Session"

    sub_server.add(video)
    await subscribe(sub_server, viewer)
    await wait_for(lambda: len(viewer.video(video.id)) >= 10)
    assert close_to(mean_rgb(viewer.video(video.id)[-1]), BLUE)

    # The publisher hears about its stream as before: receiver reports and REMB (aiortc's rate control
    # waits 3 s of measured throughput for its first estimate).
    async def remote_inbound() -> Any:
        stats = await client.getSenders()[0].getStats()
        return next((s for s in stats.values() if s.type == "remote-inbound-rtp"), None)

    await wait_for(lambda: len(rembs) >= 1, within=20)
    assert client.getSenders()[0]._ssrc in rembs[0][1]
    assert await remote_inbound() is not None
    # The publisher's sender reports (SRTCP) reach the node's receiver.
    receiver_stats = await server.pc.getTransceivers()[0].receiver.getStats()
    assert any(s.type == "remote-outbound-rtp" for s in receiver_stats.values())


async def watched(
    server: PublisherPeer, client: RTCPeerConnection, sub_server: SubscriberPeer, viewer: Receiving
) -> PublishedTrack:
    """The client's blue camera, published and shown to the viewer."""
    client.addTrack(ColorVideoTrack(BLUE))
    (video,), _ = await publish(server, client)
    sub_server.add(video)
    await subscribe(sub_server, viewer)
    await wait_for(lambda: len(viewer.video(video.id)) >= 3)
    return video


async def test_forged_unparsable_and_failing_packets_are_dropped_and_the_publisher_lives(on_port, caplog):
    _, server, client, sub_server, viewer = on_port
    video = await watched(server, client, sub_server, viewer)
    sender = client.getTransceivers()[0].sender
    ice = sender.transport.transport

    # Not authentic: RTP-looking bytes no SRTP key signed.
    for _ in range(5):
        await ice._send(bytes([0x80, 96]) + os.urandom(200))
    # Authentic but unparsable: an abs-send-time extension cut short (aiortc's parser raises struct.error).
    ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids
    raw = bytearray(
        RtpPacket(payload_type=97, sequence_number=1, timestamp=1, ssrc=0x5EED).serialize(HeaderExtensionsMap())
    )
    raw[0] |= 0x10
    raw[12:12] = b"\xbe\xde\x00\x01" + bytes([(ids.abs_send_time << 4) | 1, 0, 0, 0])
    with pytest.raises(struct.error):
        RtpPacket.parse(bytes(raw), sender._RTCRtpSender__rtp_header_extensions_map)
    await sender.transport._send_rtp(bytes(raw))
    seen_in, seen_out = video.packets_in, len(viewer.video(video.id))
    await wait_for(lambda: video.packets_in > seen_in + 30 and len(viewer.video(video.id)) > seen_out + 10)
    assert close_to(mean_rgb(viewer.video(video.id)[-1]), BLUE)

    # What handles a packet fails once: logged, that packet dropped, the next ones handled. (SRTP has
    # seen that packet, so a retransmission of it is a replay: as with a packet aiortc cannot parse,
    # the subscribers recover on the next keyframe, not by NACK.)
    receiver = server.pc.getTransceivers()[0].receiver
    handle_now, failures = receiver._gbmedia_handle_now, []

    def failing_once(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not failures:
            failures.append(packet.sequence_number)
            raise RuntimeError("a bug in what handles packets")
        handle_now(packet, arrival_time_ms)

    receiver._gbmedia_handle_now = failing_once
    down = next(iter(video.down_tracks))
    with caplog.at_level(logging.ERROR, logger="gbmedia.sfu.aiortc_adapter"):
        seen_in, sent = video.packets_in, down.packets_out
        await wait_for(lambda: video.packets_in > seen_in + 30 and down.packets_out > sent + 30)
    assert failures and "handling an RTP packet failed; dropped" in caplog.text
    assert {t.receiver.transport.state for t in server.pc.getTransceivers()} == {"connected"}


@pytest.mark.parametrize("on_port", ["native"], indirect=True)
async def test_a_native_receiving_session_is_made_anew_when_the_transport_is_keyed_anew(on_port):
    _, server, client, _, _ = on_port
    client.addTrack(ColorVideoTrack(BLUE))
    (video,), _ = await publish(server, client)
    await wait_for(lambda: video.packets_in > 10)
    dtls = server.pc.getTransceivers()[0].receiver.transport
    first = dtls._gbmedia_rx_native
    key, profile = aiortc_adapter.srtp_receiving_key(dtls)
    dtls._rx_srtp = Session(policy(key, profile, inbound=True))  # as a new handshake would leave it
    seen = video.packets_in
    await wait_for(lambda: video.packets_in > seen + 10)  # same keys: the packets still come through
    assert dtls._gbmedia_rx_native[0] is dtls._rx_srtp and dtls._gbmedia_rx_native[1] is not first[1]


async def test_a_transport_off_the_shared_port_keeps_aiortcs_way():
    server, client = PublisherPeer("carol"), RTCPeerConnection()
    try:
        client.addTrack(ColorVideoTrack(BLUE))
        (video,), _ = await publish(server, client)
        await wait_for(lambda: video.packets_in > 10)
        dtls = server.pc.getTransceivers()[0].receiver.transport
        assert aiortc_adapter.receive_rtp_directly(dtls) is False  # its own socket: nothing to hook into
    finally:
        await client.close()
        await server.close()


def srtcp(datagrams: list[bytes]) -> list[bytes]:
    return [d for d in datagrams if 127 < d[0] < 192 and is_rtcp(d)]


async def test_a_subscribers_rtcp_goes_straight_to_its_sender(on_port, monkeypatch):
    _, server, client, sub_server, viewer = on_port
    video = await watched(server, client, sub_server, viewer)
    sender = sub_server.pc.getTransceivers()[0].sender
    connection = sender.transport.transport._connection
    queued: list[bytes] = []  # what still takes aioice's queue (and the DTLS transport's task)
    enqueue = connection.data_received
    connection.data_received = lambda data, component: (queued.append(data), enqueue(data, component))
    tapped, reports = sender._handle_rtcp_packet, []

    async def handle(packet):
        if isinstance(packet, RtcpRrPacket):
            reports.append(packet)
        await tapped(packet)

    sender._handle_rtcp_packet = handle
    # The viewer's receiver reports (aiortc sends one about every second) reach the sender, and aiortc's
    # statistics from them still come out of getStats(); none of them took the queue.
    await wait_for(lambda: len(reports) >= 2, within=10)
    assert any(r.ssrc == sender._ssrc for rr in reports for r in rr.reports)
    assert any(s.type == "remote-inbound-rtp" for s in (await sender.getStats()).values())
    assert srtcp(queued) == []
    # A keyframe request (PLI) the viewer sends takes the same way to its down track.
    asked: list[DownTrack] = []
    monkeypatch.setattr(DownTrack, "keyframe_requested", lambda down: asked.append(down))
    await viewer.pc.getTransceivers()[0].receiver._send_rtcp_pli(sender._ssrc)
    await wait_for(lambda: len(asked) == 1)
    assert asked[0].track is video and srtcp(queued) == []


async def test_an_rtcp_handler_that_waits_finishes_in_a_task_and_one_that_fails_is_logged(caplog):
    finished: list[str] = []

    async def waits() -> None:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        finished.append("waited")

    async def at_once() -> None:
        finished.append("at once")

    aiortc_adapter.run_now(at_once(), "failed")
    assert finished == ["at once"]  # in the call itself: no task, no loop turn
    aiortc_adapter.run_now(waits(), "failed")
    assert finished == ["at once"]
    await wait_for(lambda: finished == ["at once", "waited"])

    async def fails_at_once() -> None:
        raise RuntimeError("a bug in an RTCP handler")

    async def fails_later() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("a later bug in an RTCP handler")

    with caplog.at_level(logging.ERROR, logger="gbmedia.sfu.aiortc_adapter"):
        aiortc_adapter.run_now(fails_at_once(), "handling an RTCP packet failed; dropped")
        aiortc_adapter.run_now(fails_later(), "handling an RTCP packet failed; dropped")
        await wait_for(lambda: caplog.text.count("handling an RTCP packet failed; dropped") == 2)
    assert "a bug in an RTCP handler" in caplog.text and "a later bug in an RTCP handler" in caplog.text
