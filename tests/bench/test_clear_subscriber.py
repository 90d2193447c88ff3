"""Subscribers that count RTP from its clear header (bench/lib/subscriber.py, ``--clear-subscribers``)."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from bench.lib.subscriber import PacketCounter
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
