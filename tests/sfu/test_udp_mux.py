"""Single-port mode: every peer connection of a process on one UDP socket (gbmedia/sfu/udp_mux.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gbmedia.app import create_app
from gbmedia.config import ConfigError, Settings, detect_public_host, load_settings
from gbmedia.node import Node
from gbmedia.sfu.media_address import MediaAddress, media_ports
from gbmedia.sfu.peers import PublisherPeer
from gbmedia.sfu.udp_mux import UdpMux, binding_success
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.workers import plan_workers
from tests.conftest import make_settings
from tests.helpers import Tenant, create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, close_to, mean_rgb, offer_from, wait_for
from tests.sfu.test_media_address import host_candidates

BLUE = (30, 30, 200)


@pytest.fixture
async def mux() -> AsyncIterator[UdpMux]:
    here = detect_public_host()
    shared = await UdpMux.bind(here, 0)
    yield shared
    shared.close()


async def connect(server: PublisherPeer, client: RTCPeerConnection) -> tuple[str, list]:
    client.addTrack(ColorVideoTrack((200, 0, 0)))
    answer, added, _ = await server.answer(await offer_from(client))
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return answer, added


def binding_request(username: str, password: bytes | None) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    if password is not None:
        request.add_message_integrity(password)
    request.add_fingerprint()
    return bytes(request)


async def reply_to(probe: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(probe, 2048), 10)


def nothing_waiting(probe: socket.socket) -> bool:
    try:
        probe.recv(2048)
    except BlockingIOError:
        return True
    return False


@contextlib.asynccontextmanager
async def one_connection(
    mux: UdpMux, name: str
) -> AsyncIterator[tuple[RTCPeerConnection, socket.socket, str, list[Any]]]:
    """A server connection on the mux receiving an aiortc client's video, and a probe socket on this host:
    (client, probe, the server's answer, its published tracks)."""
    here = detect_public_host()
    server = PublisherPeer(name, address=MediaAddress(here, here, (41000, 41020), mux=mux))
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setblocking(False)
    try:
        answer, added = await connect(server, client)
        await wait_for(lambda: added[0].packets_in > 5, within=20)
        probe.bind((here, 0))
        yield client, probe, answer, added
    finally:
        probe.close()
        await client.close()
        await server.close()


def sdp_value(sdp: str, attribute: str) -> str:
    return next(line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith(f"a={attribute}:"))


async def test_two_connections_from_one_address_share_the_port_and_each_gets_its_own_media(mux: UdpMux):
    here = detect_public_host()
    address = MediaAddress(here, here, (41000, 41020), mux=mux)
    servers = [PublisherPeer(f"PA_{i}", address=address) for i in range(2)]
    clients = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    try:
        answers = [await connect(s, c) for s, c in zip(servers, clients, strict=True)]
        for answer, _ in answers:
            assert host_candidates(answer) == [(here, mux.port)]  # not a port of the range: the one socket
        assert mux.connections == 2
        for _, added in answers:
            await wait_for(lambda added=added: added[0].packets_in > 10, within=20)
        # Both clients sit on this machine's address, on ports of their own: each has its own connection.
        owners = {addr: entry.ufrag for addr, entry in mux._by_address.items()}
        assert len(owners) == 2 and {a[0] for a in owners} == {here} and len(set(owners.values())) == 2

        await clients[0].close()
        await servers[0].close()
        assert mux.connections == 1
        before = answers[1][1][0].packets_in
        await wait_for(lambda: answers[1][1][0].packets_in > before + 10, within=20)  # the other goes on
    finally:
        for pc in clients:
            await pc.close()
        for server in servers:
            await server.close()


async def test_strangers_are_dropped_and_a_bad_password_owns_no_address(mux: UdpMux):
    here = detect_public_host()
    async with one_connection(mux, "PA_x") as (_, probe, answer, added):
        ufrag = sdp_value(answer, "ice-ufrag")

        probe.sendto(binding_request("nope:abcd", b"whatever-password-here"), (here, mux.port))
        await wait_for(lambda: mux.counters.unknown_ufrag == 1, within=5)
        assert nothing_waiting(probe)  # a wrong ufrag: dropped where it arrived, never answered

        probe.sendto(binding_request(f"{ufrag}:abcd", b"not-the-password-of-it"), (here, mux.port))
        answered = await reply_to(probe)  # the connection itself refuses it (401); the address stays nobody's
        assert stun.parse_message(answered).message_class == stun.Class.ERROR
        assert mux.counters.bad_integrity == 1 and probe.getsockname() not in mux._by_address

        probe.sendto(b"\x80" + os.urandom(40), (here, mux.port))  # RTP-looking junk from a stranger
        await wait_for(lambda: mux.counters.unknown_address == 1, within=5)
        probe.sendto(bytes(20), (here, mux.port))  # a STUN-looking header that does not parse
        await wait_for(lambda: mux.counters.unknown_address == 2, within=5)
        indication = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION)
        probe.sendto(bytes(indication), (here, mux.port))  # keepalive-style: ignored, as aioice would
        await asyncio.sleep(0.3)
        assert nothing_waiting(probe) and mux.counters.unmatched_response == 0
        before = added[0].packets_in
        await wait_for(lambda: added[0].packets_in > before + 5, within=20)  # the real one never noticed


@pytest.mark.parametrize(
    "addr", [("192.0.2.7", 50123), ("2001:db8::7", 443), ("::ffff:192.0.2.7", 9), ("fe80::7%lo", 5)]
)
def test_the_muxs_binding_answer_is_aioices_byte_for_byte(addr: tuple[str, int]):
    request = stun.parse_message(binding_request("local:remote", b"the-local-password-123"))
    theirs = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    theirs.attributes["XOR-MAPPED-ADDRESS"] = addr
    theirs.add_message_integrity(b"the-local-password-123")
    ours = binding_success(request.transaction_id, addr, b"the-local-password-123")
    assert ours == bytes(theirs)
    parsed = stun.parse_message(ours)
    assert parsed.check_message_integrity(b"the-local-password-123")
    host, port = parsed.attributes["XOR-MAPPED-ADDRESS"]
    assert (ipaddress.ip_address(host), port) == (ipaddress.ip_address(addr[0].partition("%")[0]), addr[1])


def ice_connection(pc: RTCPeerConnection) -> Any:
    return pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection


async def check(client: RTCPeerConnection, *, nominate: bool = False) -> stun.Message:
    """One connectivity check from the client's selected pair, as its consent checks are made."""
    connection = ice_connection(client)
    pair = connection._nominated[1]
    request = connection.build_request(pair, nominate=nominate)
    response, _ = await pair.protocol.request(
        request, pair.remote_addr, integrity_key=connection.remote_password.encode(), retransmissions=0
    )
    return response


async def test_consent_checks_on_the_selected_pair_are_answered_by_the_mux_and_others_by_the_connection(
    mux: UdpMux,
):
    here = detect_public_host()
    async with one_connection(mux, "PA_c") as (client, probe, answer, added):
        client_address = ice_connection(client)._nominated[1].local_addr

        before = mux.counters.consent_answered
        response = await check(client)  # aioice checks the answer's MESSAGE-INTEGRITY with the password
        assert response.message_class == stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == client_address
        assert mux.counters.consent_answered == before + 1

        response = await check(client, nominate=True)  # USE-CANDIDATE: the connection's own business
        assert response.message_class == stun.Class.RESPONSE
        assert mux.counters.consent_answered == before + 1

        # The right credentials from another address: not the selected pair, so aioice answers (and learns
        # a peer-reflexive candidate), never the mux.
        ufrag, password = sdp_value(answer, "ice-ufrag"), sdp_value(answer, "ice-pwd")
        remote_ufrag = ice_connection(client).local_username
        probe.sendto(binding_request(f"{ufrag}:{remote_ufrag}", password.encode()), (here, mux.port))
        answered = stun.parse_message(await reply_to(probe))
        assert answered.message_class == stun.Class.RESPONSE and answered.check_message_integrity(password.encode())
        assert answered.attributes["XOR-MAPPED-ADDRESS"] == probe.getsockname()
        assert mux.counters.consent_answered == before + 1

        before_packets = added[0].packets_in
        await wait_for(lambda: added[0].packets_in > before_packets + 5, within=20)  # media never noticed


async def test_datagrams_leave_with_dont_fragment_and_no_per_datagram_ip_id():
    """IP_PMTUDISC_PROBE on the shared socket: DF set and IP ID 0, so the kernel skips hashing an ID
    for every forwarded datagram (seen on the wire: a raw socket reads the IPv4 header back)."""
    mux = await UdpMux.bind("127.0.0.1", 0)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    wire = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)  # root: every local UDP datagram
    wire.setblocking(False)
    try:
        port = sink.getsockname()[1]
        for _ in range(3):
            mux.send(b"x" * 1100, ("127.0.0.1", port))
        headers = []
        loop = asyncio.get_running_loop()
        while len(headers) < 3:
            packet = await asyncio.wait_for(loop.sock_recv(wire, 65536), 5)
            if int.from_bytes(packet[22:24], "big") == port:  # UDP destination port, after a 20-byte IPv4 header
                headers.append(packet[:20])
        for header in headers:
            assert int.from_bytes(header[6:8], "big") & 0x4000  # Don't Fragment
            assert header[4:6] == b"\0\0"  # IP ID 0: not hashed per datagram
    finally:
        wire.close()
        sink.close()
        mux.close()


async def test_the_port_is_refused_to_a_second_connection_with_the_same_ufrag(mux: UdpMux):
    class Quiet(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.transactions: dict[bytes, object] = {}

    mux.attach("same", "password-of-it-123456", Quiet)
    with pytest.raises(ValueError, match="already on this port"):
        mux.attach("same", "password-of-it-123456", Quiet)


async def test_a_node_in_single_port_mode_carries_a_meeting_on_one_port(tmp_path: Path, database_url: str):
    node = await Node.start(make_settings(tmp_path, database_url, udp_port=0))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            tenant: Tenant = await create_tenant(client)
            mux = node.media_address.mux
            assert mux is not None and media_ports(node.media_address) == f"{mux.port}-{mux.port}"
            token = lambda who: mint_token(tenant.key, tenant.secret, who, Grants.participant("one-port"), name=who)  # noqa: E731
            alice, bob = RtcClient(await client.ws_connect("/rtc")), RtcClient(await client.ws_connect("/rtc"))
            try:
                assert (await alice.join(token("alice")))["type"] == "joined"
                assert (await bob.join(token("bob"), auto_subscribe=False))["type"] == "joined"
                reply = await alice.publish(ColorVideoTrack(BLUE))
                (track,) = reply["tracks"]
                assert (await bob.request({"type": "subscribe", "track_ids": [track["id"]]}))["type"] == "ack"
                await wait_for(lambda: len(bob.decoded(track["id"])) >= 5, within=30)
                assert close_to(mean_rgb(bob.decoded(track["id"])[-1]), BLUE)
                assert host_candidates(alice.publisher.remoteDescription.sdp) == [  # type: ignore[union-attr]
                    (node.media_address.advertised, mux.port)
                ]
                assert mux.connections >= 2  # alice's publisher and bob's subscriber, on the one port

                # What the port drops is on /metrics, by reason (one RTP-looking datagram from a stranger).
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    stranger.sendto(b"\x80" + os.urandom(40), (node.media_address.advertised, mux.port))
                await wait_for(lambda: mux.counters.unknown_address == 1, within=5)
                metrics = await (await client.get("/metrics")).text()
                assert 'gbmedia_udp_dropped_total{reason="unknown_address"} 1.0' in metrics
                assert 'gbmedia_udp_dropped_total{reason="bad_integrity"} 0.0' in metrics
                assert "gbmedia_udp_consent_answered_total " in metrics
                # Alice's camera reached her track the direct way, and /metrics says how much of it.
                direct = next(
                    float(line.split()[-1])
                    for line in metrics.splitlines()
                    if line.startswith("gbmedia_udp_rtp_direct_total ")
                )
                assert direct > 0 and direct <= mux.counters.rtp_direct
            finally:
                await alice.close()
                await bob.close()
    finally:
        await node.stop()
    assert mux.connections == 0


def test_workers_count_their_ports_up_from_the_configured_one(tmp_path: Path):
    settings: Settings = load_settings(data_dir=str(tmp_path), udp_port=7882)
    plans = plan_workers(settings, 3, port=7880, cluster_secret="s" * 32, database_url=None)
    assert [p.values["udp_port"] for p in plans] == ["7882", "7883", "7884"]
    picked = load_settings(data_dir=str(tmp_path), udp_port=0)
    assert {
        p.values["udp_port"] for p in plan_workers(picked, 2, port=7880, cluster_secret="s" * 32, database_url=None)
    } == {"0"}
    assert (
        "udp_port"
        not in plan_workers(
            load_settings(data_dir=str(tmp_path), udp_port="off"),
            2,
            port=7880,
            cluster_secret="s" * 32,
            database_url=None,
        )[0].values
    )


async def test_a_taken_port_stops_the_node_with_the_setting_named(tmp_path: Path, database_url: str):
    here = detect_public_host()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((here, 0))
    try:
        with pytest.raises(ConfigError, match=f"GBMEDIA_UDP_PORT: cannot bind UDP {here}:{taken.getsockname()[1]}"):
            await Node.start(make_settings(tmp_path, database_url, udp_port=taken.getsockname()[1], host=here))
    finally:
        taken.close()
