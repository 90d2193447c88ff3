"""ICE candidates carry the configured address and ports from the configured range."""

from __future__ import annotations

import socket

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gbmedia.config import detect_public_host
from gbmedia.sfu.media_address import MediaAddress, resolve_media_address
from gbmedia.sfu.peers import NegotiationError, PublisherPeer, SubscriberPeer
from tests.rtc import ColorVideoTrack, offer_from, wait_for


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " typ host" in line:
            parts = line.split()
            found.append((parts[4], int(parts[5])))
    return found


async def test_a_local_address_is_bound_and_advertised():
    here = detect_public_host()
    address = await resolve_media_address(here, (40000, 40010))
    assert (address.advertised, address.bind, address.ports) == (here, here, (40000, 40010))


async def test_an_address_of_another_machine_is_advertised_while_binding_every_interface():
    address = await resolve_media_address("203.0.113.7", (40000, 40010))  # NAT: the public IP is not ours
    assert (address.advertised, address.bind) == ("203.0.113.7", "0.0.0.0")


async def test_a_host_name_is_resolved_once_to_an_address():
    address = await resolve_media_address("localhost", (40000, 40010))
    assert address.advertised == "127.0.0.1" and address.bind == "127.0.0.1"


def test_a_port_range_must_be_ordered_and_in_bounds():
    with pytest.raises(ValueError, match="invalid UDP port range"):
        MediaAddress("127.0.0.1", "127.0.0.1", (5000, 4000))


async def test_the_answer_has_one_host_candidate_in_the_range_and_media_connects():
    here = detect_public_host()
    address = MediaAddress(here, here, (41000, 41020))
    server = PublisherPeer("PA_test", address=address)
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        client.addTrack(ColorVideoTrack((200, 0, 0)))
        answer, added, _ = await server.answer(await offer_from(client))
        candidates = host_candidates(answer)
        assert len(candidates) == 1
        host, port = candidates[0]
        assert host == here and 41000 <= port <= 41020
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: added[0].packets_in > 10, within=20)
    finally:
        await client.close()
        await server.close()


async def test_an_exhausted_port_range_is_a_clear_negotiation_error():
    here = detect_public_host()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((here, 0))
    port = taken.getsockname()[1]
    subscriber = SubscriberPeer("PA_test", address=MediaAddress(here, here, (port, port)))
    try:
        subscriber.pc.addTransceiver("video", direction="sendonly")
        with pytest.raises(NegotiationError) as failure:
            await subscriber.offer()
        assert failure.value.code == "media_unavailable"
        assert f"{port}-{port}" in failure.value.message
    finally:
        taken.close()
        await subscriber.close()
