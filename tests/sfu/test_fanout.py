"""The native fan-out (gbmedia/sfu/_fanout.c) against the Python path it replaces.

The differential test drives one published track, through the same down-track
decisions, into two real subscribers: one on a natively forwarding socket, one on the
Python path. It feeds a recorded sequence (three simulcast layers with loss,
reordering, layer switches, an SSRC change and padding-only packets) and requires the
clear RTP each path kept to be byte-identical, and what each subscriber's link carried
to decrypt, with that connection's keys, to the same packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pylibsrtp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from gbmedia.app import create_app
from gbmedia.config import ConfigError, detect_public_host
from gbmedia.node import Node
from gbmedia.sfu import aiortc_adapter, fanout
from gbmedia.sfu.forwarder import HISTORY_SIZE, DownTrack
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.peers import PublisherPeer, SubscriberPeer
from gbmedia.sfu.track import PublishedTrack
from gbmedia.sfu.udp_mux import UdpMux
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings, service_missing
from tests.helpers import create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, close_to, mean_rgb, wait_for
from tests.sfu.test_forwarding import Receiving, publish, subscribe
from tests.sfu.test_simulcast import RawViewer
from tests.simulcast import SIZES, SimulcastPublisher

GREEN = (30, 200, 30)
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEY_LENGTHS = {
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 30,
    Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 28,
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM: 44,
}


def native() -> object:
    """The extension; scripts/test builds it (a missing one fails in CI, skips elsewhere)."""
    if fanout.native is None:
        service_missing(f"the native fan-out (python setup.py build_ext --inplace): {fanout.IMPORT_ERROR}")
    return fanout.native


def policy(key: bytes, profile: int, inbound: bool) -> Policy:
    ssrc_type = Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND
    made = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    made.allow_repeat_tx = True
    made.window_size = 1024
    return made


def is_rtp(data: bytes) -> bool:
    return 128 <= data[0] < 192 and not 192 <= data[1] <= 223


# --- the extension on its own ---------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(KEY_LENGTHS))
def test_native_srtp_is_libsrtps_byte_for_byte_and_decrypts(profile: int):
    ext = native()
    key = os.urandom(KEY_LENGTHS[profile])
    mine, reference = ext.Session(key, profile), Session(policy(key, profile, inbound=False))  # type: ignore[attr-defined]
    receiver = Session(policy(key, profile, inbound=True))

    def packet(seq: int) -> bytes:
        return bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big") + b"\0\0\0\7" + b"x" * 90

    for seq in (1, 2, 65535, 0):  # 0 after 65535: the rollover counter moves on
        protected = mine.protect(packet(seq))
        assert protected == reference.protect(packet(seq))
        assert receiver.unprotect(protected) == packet(seq)
    assert mine.protect(packet(2)) == reference.protect(packet(2))  # a NACK answer repeats an index


@pytest.mark.parametrize("profile", sorted(KEY_LENGTHS))
def test_native_unprotect_takes_and_refuses_what_aiortcs_receiving_session_does(profile: int):
    """The publisher's RTP is unprotected natively on a native node: the same clear packets, and the same
    replays, forgeries and late packets refused (the window is aiortc's 1024)."""
    ext = native()
    key = os.urandom(KEY_LENGTHS[profile])
    sender = Session(policy(key, profile, inbound=False))
    mine = ext.Session(key, profile, inbound=True)  # type: ignore[attr-defined]
    reference = Session(policy(key, profile, inbound=True))

    def packet(seq: int) -> bytes:
        return bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big") + b"\0\0\0\7" + b"y" * 300

    def reference_unprotect(data: bytes) -> bytes | None:
        try:
            return reference.unprotect(data)
        except pylibsrtp.Error:
            return None

    protected = {seq: sender.protect(packet(seq)) for seq in [*range(65000, 65536), *range(0, 1500)]}
    order = [*range(65000, 65400), *range(65450, 65536), *range(0, 1200), *range(65400, 65450), *range(1200, 1500)]
    order += [5, 1499]  # replays
    results = []
    for seq in order:  # across the wrap, with 50 packets that come too late for the window
        got = mine.unprotect(protected[seq])
        assert got == reference_unprotect(protected[seq])
        results.append(got)
    assert results[0] == packet(65000) and results[-1] is None and results[-2] is None
    assert sum(r is None for r in results) == 52  # the 50 late ones (outside 1024) and the 2 replays
    forged = bytearray(sender.protect(packet(1500)))
    forged[20] ^= 1
    assert mine.unprotect(bytes(forged)) is None and reference_unprotect(bytes(forged)) is None
    assert mine.unprotect(b"\x80" * 11) is None and mine.unprotect(b"\x80" * 9000) is None  # too short, too long


def test_bad_input_to_the_extension_is_refused():
    ext = native()
    with pytest.raises(ValueError, match="must be 30 bytes"):
        ext.Session(b"short", Policy.SRTP_PROFILE_AES128_CM_SHA1_80)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unsupported SRTP profile"):
        ext.Session(bytes(30), 999)  # type: ignore[attr-defined]
    session = ext.Session(bytes(30), Policy.SRTP_PROFILE_AES128_CM_SHA1_80)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not an RTP packet"):
        session.protect(b"\x80")
    with pytest.raises(ValueError, match="not an IP address"):
        ext.address("nowhere", 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="port out of range"):
        ext.address("127.0.0.1", 70000)  # type: ignore[attr-defined]
    assert len(ext.address("::1", 5)) == 28 and len(ext.address("127.0.0.1", 5)) == 16  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="16 bits"):
        ext.Downlink(70000, 0, 3000)  # type: ignore[attr-defined]
    link = ext.Downlink(4, 6, 3000)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        link.configure("not a session", b"", 0, 96, 1, 0)
    with pytest.raises(ValueError, match="payload type is 7 bits"):
        link.configure(session, ext.address("127.0.0.1", 9), -1, 200, 1, 0)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="downlinks are Downlink"):
        ext.forward(["not a link"], 0, 1, 2, 3, False, False, b"body", (b"",), 4, 5)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="blocks are bytes"):
        ext.forward([link], 0, 1, 2, 3, False, False, b"body", ("x",), 4, 5)  # type: ignore[attr-defined]
    # Not configured yet, or on another layer: nothing is sent, nothing is counted.
    assert ext.forward([link], 0, 1, 2, 3, False, False, b"body", (b"",), 4, 5) == (0, 0, 0)  # type: ignore[attr-defined]
    link.configure(session, ext.address("127.0.0.1", 9), -1, 96, 9, 0)  # type: ignore[attr-defined]
    assert ext.forward([link], 0, 1, 2, 3, False, False, b"body", (b"",), 4, 5) == (0, 0, 0)  # type: ignore[attr-defined]
    # A closed socket: nothing goes (counted as dropped), nothing breaks; the clear packet is kept for NACKs,
    # numbered on from where the slot stopped (4, 6) with a gap of 3000 in time.
    link.layer = 0
    assert ext.forward([link], 0, 1, 2, 3, True, False, b"body", (b"",), 4, 5) == (1, 16, 1)  # type: ignore[attr-defined]
    assert link.kept(5) == bytes([0x80, 0xE0, 0, 5]) + (3006).to_bytes(4, "big") + bytes([0, 0, 0, 9]) + b"body"
    assert link.kept(6) is None and link.kept(5 + 256) is None
    assert (link.last_seq, link.last_ts, link.packets_out) == (5, 3006, 1)
    assert link.resend([5, 6]) == 0  # nothing went out of a closed socket
    with pytest.raises(TypeError):
        link.resend(5)
    assert link.take_counts() == (4, 1, 3006, 5) and link.take_counts() == (0, 0, 3006, 5)
    assert "libsrtp2 2." in ext.library()  # type: ignore[attr-defined]
    with pytest.raises(ext.Error, match="sessions exist"):  # type: ignore[attr-defined]
        ext.use_library("/nonexistent.so")  # type: ignore[attr-defined]


def test_a_nack_answer_reaches_back_to_the_oldest_kept_packet():
    """The SRTP window of a downlink's session is as long as its NACK history, no shorter: the oldest
    packet kept can still be protected again and sent, and decrypts to what was first sent."""
    ext = native()
    key, profile = os.urandom(28), Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.settimeout(5)
        sender.bind(("127.0.0.1", 0))
        link = ext.Downlink(0, 0, 3000)  # type: ignore[attr-defined]
        link.configure(ext.Session(key, profile), ext.address(*receiver.getsockname()), sender.fileno(), 96, 77, 0)  # type: ignore[attr-defined]
        link.layer = 0
        sent = ext.HISTORY + 40  # type: ignore[attr-defined]
        for seq in range(sent):
            assert ext.forward([link], 0, 5, seq, seq * 3000, False, False, b"%d" % seq, (b"",), 3, 0)[0] == 1  # type: ignore[attr-defined]
        for _ in range(sent):
            receiver.recv(2048)
        oldest = link.last_seq - ext.HISTORY + 1  # type: ignore[attr-defined]
        assert link.kept(oldest - 1) is None and link.kept(oldest) is not None
        assert link.resend([oldest - 1]) == 0  # gone from the history: nothing to answer with
        assert link.resend([oldest]) == 1
        again = Session(policy(key, profile, inbound=True)).unprotect(receiver.recv(2048))
        assert again == link.kept(oldest) and int.from_bytes(again[2:4], "big") == oldest
    finally:
        receiver.close()
        sender.close()


def test_the_path_is_chosen_and_said(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gbmedia.sfu.fanout")
    native()
    assert fanout.choose("auto", single_port=True) is True
    assert "native path" in caplog.text
    assert fanout.choose("off", single_port=True) is False
    assert "GBMEDIA_NATIVE_FORWARDING=off" in caplog.text
    assert fanout.choose("auto", single_port=False) is False
    assert "single-port mode is off" in caplog.text
    with pytest.raises(fanout.NativeUnavailable, match="single-port"):
        fanout.choose("on", single_port=False)
    monkeypatch.setattr(fanout, "native", None)
    caplog.clear()
    assert fanout.choose("auto", single_port=True) is False
    assert "Python path, because the native extension is not built" in caplog.text
    with pytest.raises(fanout.NativeUnavailable, match="not built"):
        fanout.choose("on", single_port=True)


# --- through real connections -----------------------------------------------------------


@pytest.fixture
async def muxes() -> AsyncIterator[tuple[UdpMux, UdpMux]]:
    """Two shared sockets on this machine's address: one forwarding natively, one in Python."""
    native()
    here = detect_public_host()
    fast, reference = await UdpMux.bind(here, 0), await UdpMux.bind(here, 0)
    fast.native_fanout = True
    yield fast, reference
    fast.close()
    reference.close()


def address(mux: UdpMux) -> MediaAddress:
    here = mux.local_address[0]
    return MediaAddress(here, here, (41000, 41020), mux=mux)


def vp8(key: bool, start: bool, width: int = 0, height: int = 0) -> bytes:
    """A VP8 payload (RFC 7741 descriptor, then a frame header the SFU reads keyframes from)."""
    if not start:
        return b"\x00" + b"c" * 300
    if not key:
        return b"\x10\x01" + b"d" * 300
    return b"\x10\x00\x00\x00\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little") + b"k" * 300


def recorded_sequence() -> list[tuple[str, RtpPacket]]:
    """Three layers, frames of three packets, a keyframe every sixth frame; then the damage."""
    ssrcs = {"q": 1111, "h": 2222, "f": 3333}
    seqs = {"q": 65000, "h": 100, "f": 30000}  # q wraps around
    out: list[tuple[str, RtpPacket]] = []
    for frame in range(40):
        if frame == 20:  # the h layer's encoder restarts: a new SSRC and numbering
            ssrcs["h"], seqs["h"] = 4444, 5000
        for rid in ("q", "h", "f"):
            width, height = SIZES[rid]
            for part in range(3):
                packet = RtpPacket(
                    payload_type=96,
                    marker=part == 2,
                    sequence_number=seqs[rid] & 0xFFFF,
                    timestamp=(frame * 3000 + 77) & 0xFFFFFFFF,
                    ssrc=ssrcs[rid],
                    payload=vp8(frame % 6 == 0, part == 0, width, height),
                )
                packet.extensions.rtp_stream_id = rid
                packet.extensions.abs_send_time = frame * 100
                seqs[rid] += 1
                out.append((rid, packet))
            if frame % 7 == 3:  # padding only (bandwidth probing), as browsers send
                pad = RtpPacket(
                    payload_type=96,
                    sequence_number=seqs[rid] & 0xFFFF,
                    timestamp=frame * 3000 + 77,
                    ssrc=ssrcs[rid],
                )
                pad.padding_size = 200
                pad.extensions.rtp_stream_id = rid
                seqs[rid] += 1
                out.append((rid, pad))
    del out[50], out[120], out[200]  # loss
    out[60], out[61] = out[61], out[60]  # reordering
    out[150], out[152] = out[152], out[150]
    return out


async def test_native_and_python_paths_send_the_same_rtp(muxes):
    ext = native()
    fast, reference = muxes
    source_pc = RTCPeerConnection()
    receiver = source_pc.addTransceiver("video", direction="recvonly").receiver
    track = PublishedTrack("pub", "video", "camera", receiver, VP8, "0", rids=("q", "h", "f"))
    subs = [SubscriberPeer("native", address=address(fast)), SubscriberPeer("python", address=address(reference))]
    clients = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in subs]
    captured: list[list[bytes]] = [[], []]
    try:
        downs: list[DownTrack] = [sub.add(track) for sub in subs]
        # The same SSRC and numbering on both, so the two paths' packets can be equal byte for byte.
        downs[1].slot.transceiver.sender._ssrc = downs[0].slot.transceiver.sender._ssrc
        downs[1].slot.last_seq, downs[1].slot.last_ts = downs[0].slot.last_seq, downs[0].slot.last_ts = 65530, 2**32 - 5
        for sub, client, capture in zip(subs, clients, captured, strict=True):
            offer, _ = await sub.offer()
            await client.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await client.setLocalDescription(await client.createAnswer())
            aiortc_adapter.tap_receiver(client.getTransceivers()[0].receiver, lambda packet, codec: None)
            await sub.accept_answer(client.localDescription.sdp)
            ice = client.getTransceivers()[0].receiver.transport.transport
            receive = ice._recv

            async def recording(receive=receive, capture=capture) -> bytes:
                data = await receive()
                if is_rtp(data):
                    capture.append(data)
                return data

            ice._recv = recording
        await wait_for(lambda: all(d.bind() and d._raw.connected() for d in downs), within=20)  # type: ignore[union-attr]
        assert downs[0]._raw.native is not None and downs[1]._raw.native is None  # type: ignore[union-attr]

        layers_sent: list[int | None] = []
        for index, (_, packet) in enumerate(recorded_sequence()):
            if index == 100:
                for down in downs:
                    down.set_preferences(layer=0)  # to q, on its next keyframe
            if index == 250:
                for down in downs:
                    down.set_preferences(layer=2)  # back to f
            track.on_packet(packet, VP8)
            layers_sent.append(downs[0].current_layer)
            await asyncio.sleep(0)  # let the subscribers' links take it in
        assert {2, 0} <= set(layers_sent)  # both switches happened
        assert downs[0].packets_out == downs[1].packets_out > 60

        # Before encryption: byte-identical, and the same packets kept for NACK answers.
        kept = {int.from_bytes(p[2:4], "big"): p for p in downs[1]._history if p is not None}
        assert {seq: p for seq in range(65536) if (p := downs[0].kept(seq)) is not None} == kept
        assert len(kept) == min(downs[0].packets_out, HISTORY_SIZE) and HISTORY_SIZE == ext.HISTORY  # type: ignore[attr-defined]
        assert any(p[0] & 0x20 for p in kept.values())  # padding went through
        assert any(p[0] & 0x10 for p in kept.values())  # and the header extensions

        # After: each link decrypts, with its connection's own keys, to the same packets.
        await wait_for(lambda: all(len({c[2:4] for c in capture}) >= len(kept) for capture in captured))
        decrypted = []
        for down, capture in zip(downs, captured, strict=True):
            key, profile = aiortc_adapter.srtp_sending_key(down.slot.transceiver.sender.transport)
            session = Session(policy(key, profile, inbound=True))
            clear: dict[int, bytes] = {}
            for data in capture:
                with contextlib.suppress(pylibsrtp.Error):  # a NACK answer repeats an index: a replay
                    packet = session.unprotect(data)
                    clear[int.from_bytes(packet[2:4], "big")] = packet
            decrypted.append(clear)
        assert decrypted[0] == decrypted[1]
        assert all(decrypted[0][seq] == packet for seq, packet in kept.items())
    finally:
        for client in clients:
            await client.close()
        for sub in subs:
            await sub.close()
        await source_pc.close()


async def test_native_path_repairs_losses_with_nacks_and_keeps_sender_reports(muxes):
    fast, _ = muxes
    server, client = PublisherPeer("alice", address=address(fast)), RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sub_server, viewer = SubscriberPeer("bob", address=address(fast)), Receiving()
    dropped: set[int] = set()
    try:
        client.addTrack(ColorVideoTrack(GREEN))
        added, _ = await publish(server, client)
        video = added[0]
        await wait_for(lambda: video.packets_in > 30)
        down = sub_server.add(video)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 5)
        assert down._raw is not None and down._raw.native is not None  # this one forwards in C

        ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
        receive = ice._recv

        async def lossy() -> bytes:
            while True:
                data = await receive()
                seq = int.from_bytes(data[2:4], "big")
                if is_rtp(data) and seq % 5 == 3 and seq not in dropped:
                    dropped.add(seq)
                    continue
                return data

        ice._recv = lossy
        before = len(viewer.video(video.id))
        await wait_for(lambda: len(dropped) >= 15 and down.resent >= 12, within=20)
        await wait_for(lambda: len(viewer.video(video.id)) >= before + 30, within=20)  # decoding goes on
        assert close_to(mean_rgb(viewer.video(video.id)[-1]), GREEN)

        async def reported() -> dict | None:
            stats = await viewer.pc.getTransceivers()[0].receiver.getStats()
            return next((s for s in stats.values() if s.type == "remote-outbound-rtp"), None)

        remote = None
        for _ in range(200):  # aiortc sends a sender report every 0.5 to 1.5 s
            remote = await reported()
            if remote is not None and remote.packetsSent > 30:
                break
            await asyncio.sleep(0.05)
        assert remote is not None and remote.packetsSent > 30
        assert remote.packetsSent <= down.packets_out + down.resent
    finally:
        await viewer.close()
        await sub_server.close()
        await client.close()
        await server.close()


async def test_native_path_switches_simulcast_layers_on_keyframes(muxes):
    fast, _ = muxes
    server, client = PublisherPeer("alice", address=address(fast)), SimulcastPublisher()
    sub, viewer = SubscriberPeer("bob", address=address(fast)), RawViewer()
    try:
        answer, added, _ = await server.answer(await client.offer())
        await client.accept(answer)
        track = added[0]
        await wait_for(lambda: all(layer.ssrc is not None for layer in track.layers), within=20)
        down = sub.add(track)
        await viewer.answer(sub)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]], within=20)
        assert down._raw is not None and down._raw.native is not None
        down.set_preferences(layer=0)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["q"]])
        down.set_preferences(layer=2)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])
        assert viewer.switches >= 2 and viewer.bad_switches == 0
    finally:
        await viewer.pc.close()
        await sub.close()
        await client.close()
        await server.close()


async def test_a_node_without_the_extension_says_so_and_forwards_in_python(
    tmp_path: Path, database_url: str, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="gbmedia.sfu.fanout")
    caplog.set_level(logging.INFO, logger="gbmedia.node")
    with pytest.raises(ConfigError, match="GBMEDIA_NATIVE_FORWARDING=on, but single-port mode is off"):
        await Node.start(make_settings(tmp_path, database_url, udp_port="off", native_forwarding="on"))
    monkeypatch.setattr(fanout, "native", None)
    caplog.clear()
    node = await Node.start(make_settings(tmp_path, database_url, udp_port=0))
    try:
        assert "RTP fan-out: Python path, because the native extension is not built" in caplog.text
        assert "REMB estimate: native (gbmedia.sfu._remb)" in caplog.text  # the other extension still runs
        mux = node.media_address.mux
        assert mux is not None and not mux.native_fanout
        async with TestClient(TestServer(create_app(node))) as http:
            tenant = await create_tenant(http)
            token = lambda who: mint_token(tenant.key, tenant.secret, who, Grants.participant("py"), name=who)  # noqa: E731
            alice, bob = RtcClient(await http.ws_connect("/rtc")), RtcClient(await http.ws_connect("/rtc"))
            try:
                await alice.join(token("alice"))
                await bob.join(token("bob"))
                (published,) = (await alice.publish(ColorVideoTrack(GREEN)))["tracks"]
                await wait_for(lambda: len(bob.decoded(published["id"])) >= 5, within=30)
                assert close_to(mean_rgb(bob.decoded(published["id"])[-1]), GREEN)
            finally:
                await alice.close()
                await bob.close()
    finally:
        await node.stop()


async def test_a_settled_native_down_track_is_not_asked_per_packet_and_still_pauses_and_resumes(muxes, monkeypatch):
    fast, _ = muxes
    server, client = PublisherPeer("alice", address=address(fast)), RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sub_server, viewer = SubscriberPeer("bob", address=address(fast)), Receiving()
    try:
        client.addTrack(ColorVideoTrack(GREEN))
        added, _ = await publish(server, client)
        video = added[0]
        down = sub_server.add(video)
        await subscribe(sub_server, viewer)
        await wait_for(lambda: len(viewer.video(video.id)) >= 5, within=20)
        # Forwarding on, nothing to decide: C sends every packet, Python only reviews.
        await wait_for(lambda: down.settled and down not in video.deciding and video.native_links == [down._link])
        written: list[int] = []
        real_write = DownTrack.write

        def counted(self: DownTrack, out, now: float) -> None:  # type: ignore[no-untyped-def]
            written.append(out.packet.sequence_number)
            real_write(self, out, now)

        monkeypatch.setattr(DownTrack, "write", counted)
        before = down.packets_out
        await wait_for(lambda: down.packets_out >= before + 60)
        assert len(written) < 20  # keyframes and reviews (every 0.5 s), not the 60+ packets sent meanwhile

        # A pause stops the C sending at once; a resume waits for a keyframe, then the picture is back.
        down.set_preferences(paused=True)
        assert down._link.layer == -1
        await asyncio.sleep(0.3)
        paused_at = down.packets_out
        frames = len(viewer.video(video.id))
        await asyncio.sleep(0.7)
        assert down.packets_out == paused_at
        down.set_preferences(paused=False)
        await wait_for(lambda: len(viewer.video(video.id)) >= frames + 10, within=20)
        assert close_to(mean_rgb(viewer.video(video.id)[-1]), GREEN)
        await wait_for(lambda: down.settled)

        # Unsubscribing hands the numbering back to the slot: a later track on it continues from there.
        link = down._link
        sub_server.remove(down)
        assert link not in video.native_links and down not in video.deciding
        assert (down.slot.last_seq, down.slot.last_ts) == (link.last_seq, link.last_ts)
    finally:
        await viewer.close()
        await sub_server.close()
        await client.close()
        await server.close()


def test_the_srtp_library_is_pylibsrtps_and_the_system_one_protects_byte_for_byte_alike():
    """The extension protects with the libsrtp that pylibsrtp carries (OpenSSL); where that cannot load it
    falls back to Debian's libsrtp2 (NSS), says so, and the packets are the same either way."""
    native()
    assert fanout.LIBRARY.startswith("libsrtp2 2.") and "pylibsrtp" in fanout.LIBRARY
    key = os.urandom(30)
    packet = bytes([0x80, 96, 0, 9, 0, 0, 1, 0, 0, 0, 0, 7]) + os.urandom(1000)
    script = (
        "import sys, logging; logging.basicConfig(level=logging.INFO); sys.modules['pylibsrtp._binding'] = None\n"
        "from gbmedia.sfu import fanout\n"
        "print(fanout.LIBRARY)\n"
        f"session = fanout.native.Session(bytes.fromhex('{key.hex()}'), 1)\n"
        f"print(session.protect(bytes.fromhex('{packet.hex()}')).hex())\n"
        "del session\n"
        "try:\n"
        "    fanout.native.use_library('/lib/x86_64-linux-gnu/libc.so.6')\n"
        "except fanout.native.Error as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    library, protected, refused = done.stdout.splitlines()
    assert library == "libsrtp2 (system)"
    assert "protecting with the system libsrtp2" in done.stderr
    assert bytes.fromhex(protected) == native().Session(key, 1).protect(packet)  # type: ignore[attr-defined]
    assert "has no srtp_init: not libsrtp 2" in refused  # a library without libsrtp is refused
