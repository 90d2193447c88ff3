"""Subscribers that count RTP from its clear header (bench/lib/subscriber.py, ``--clear-subscribers``)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aiortc import RTCPeerConnection

from bench.lib.subscriber import PacketCounter, SocketPoller, socket_poller
from gbmedia.sfu.aiortc_adapter import read_rtp_in_the_clear
from tests.rtc import ColorVideoTrack, wait_for


async def test_a_receiver_counts_every_packet_from_the_clear_headers_without_aiortc():
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(ColorVideoTrack((200, 0, 0)))
    receiver.addTransceiver("video", direction="recvonly")
    frames_decoded = []
    receiver.on("track", lambda track: frames_decoded.append(track))
    counter = PacketCounter()
    release = None
    try:
        assert read_rtp_in_the_clear(receiver, counter.clear) is None  # not connected yet: nothing to take
        await receiver.setLocalDescription(await receiver.createOffer())
        await sender.setRemoteDescription(receiver.localDescription)
        await sender.setLocalDescription(await sender.createAnswer())
        await receiver.setRemoteDescription(sender.localDescription)
        await wait_for(lambda: receiver.connectionState == "connected", within=20)
        release = read_rtp_in_the_clear(receiver, counter.clear)
        assert release is not None
        pair = receiver.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        assert pair.local_candidate.port in udp_ports_the_loop_waits_on(asyncio.get_running_loop())  # woken by each
        await wait_for(lambda: counter.counts.frames >= 20, within=20)
        c = counter.counts
        assert c.duplicates == 0 and c.keyframes == 0  # keyframes are inside the encrypted payload
        assert c.ext_seq is not None and c.unique >= 20 and c.bytes > 0
        first = c.ext_seq - c.unique + 1  # loopback loses nothing: every number from the first is there
        assert all(counter._seen[seq & 0xFFFF] for seq in range(first, c.ext_seq + 1))
        stats = await receiver.getTransceivers()[0].receiver.getStats()
        inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
        assert all(s.packetsReceived < c.unique for s in inbound)  # aiortc saw none of what was counted here
        assert receiver.connectionState == "connected"  # consent checks (STUN) still answered by aiortc
    finally:
        if release is not None:
            release()
            release()  # twice is harmless
        await sender.close()
        await receiver.close()


def udp_ports_the_loop_waits_on(loop: asyncio.AbstractEventLoop) -> set[int]:
    """The local ports of the UDP sockets the loop's selector watches for reading."""
    ports = set()
    for key in loop._selector.get_map().values():  # type: ignore[attr-defined]
        probe = socket.socket(fileno=os.dup(key.fd))
        try:
            if probe.type == socket.SOCK_DGRAM:
                ports.add(probe.getsockname()[1])
        finally:
            probe.close()
    return ports


async def test_a_polled_receiver_counts_the_same_and_no_datagram_wakes_it():
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(ColorVideoTrack((0, 0, 200)))
    receiver.addTransceiver("video", direction="recvonly")
    counter, poller = PacketCounter(), SocketPoller(0.005)
    release = None
    try:
        await receiver.setLocalDescription(await receiver.createOffer())
        await sender.setRemoteDescription(receiver.localDescription)
        await sender.setLocalDescription(await sender.createAnswer())
        await receiver.setRemoteDescription(sender.localDescription)
        await wait_for(lambda: receiver.connectionState == "connected", within=20)
        release = read_rtp_in_the_clear(receiver, counter.clear, watch=poller.watch)
        assert release is not None
        await wait_for(lambda: counter.counts.frames >= 20, within=20)
        c = counter.counts
        first = c.ext_seq - c.unique + 1
        assert all(counter._seen[seq & 0xFFFF] for seq in range(first, c.ext_seq + 1))  # none missed
        assert poller.ticks > 0
        # The receiving socket is on no wait list of the loop: a datagram arriving wakes nobody.
        pair = receiver.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        assert pair.local_candidate.port not in udp_ports_the_loop_waits_on(asyncio.get_running_loop())
        assert receiver.connectionState == "connected"  # consent checks still answered, from the poll
    finally:
        if release is not None:
            release()
            release()
        await sender.close()
        await receiver.close()
    assert poller._timer is None  # nothing left to poll: its timer stopped


async def test_one_failing_drain_stops_neither_the_others_nor_the_poller(caplog):
    poller = SocketPoller(0.001)
    calls: list[str] = []

    def failing() -> None:
        calls.append("failing")
        raise RuntimeError("boom")

    unwatch_failing = poller.watch(10, failing)
    unwatch_good = poller.watch(11, lambda: calls.append("good"))
    await wait_for(lambda: calls.count("good") >= 3, within=5)
    assert calls.count("failing") >= 3 and "draining a subscriber's socket failed" in caplog.text
    unwatch_failing()
    unwatch_failing()  # twice is harmless
    assert poller._timer is not None
    unwatch_good()
    assert poller._timer is None


def test_a_poller_needs_a_positive_interval_and_one_serves_a_process():
    with pytest.raises(ValueError, match="positive"):
        SocketPoller(0)
    assert socket_poller(0) is None
    assert socket_poller(5) is socket_poller(5) and socket_poller(5).interval == 0.005  # type: ignore[union-attr]
