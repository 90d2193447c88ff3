"""Simulcast with real aiortc peers: layers, switching on keyframes, dynacast, bandwidth."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from gbmedia.sfu import allocator
from gbmedia.sfu import track as track_module
from gbmedia.sfu.aiortc_adapter import tap_receiver
from gbmedia.sfu.codecs import is_keyframe
from gbmedia.sfu.peers import PublisherPeer, SubscriberPeer
from gbmedia.sfu.rtp import vp8_keyframe_size
from gbmedia.sfu.track import PublishedTrack
from tests.rtc import wait_for
from tests.simulcast import SIZES, SimulcastPublisher


def picture_id(payload: bytes) -> int | None:
    """The VP8 picture id (RFC 7741): each encoder, so each layer, counts its own."""
    if not payload or not payload[0] & 0x80 or len(payload) < 3 or not payload[1] & 0x80:
        return None
    if payload[2] & 0x80:
        return ((payload[2] & 0x7F) << 8) | payload[3]
    return payload[2] & 0x7F


@dataclass
class RawViewer:
    """A subscriber that never decodes: it reads sizes from keyframes and checks switches.

    A change of layer shows as a jump in VP8 picture ids; every jump must land on a
    keyframe, or the subscriber's decoder would get a frame from a stream it never saw.
    """

    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    packets: int = 0
    switches: int = 0
    bad_switches: int = 0
    _last_picture: int | None = None

    def count(self, packet, codec) -> None:  # type: ignore[no-untyped-def]
        self.packets += 1
        payload = packet.payload
        if not payload:
            return
        key = is_keyframe(codec.mimeType, payload)
        size = vp8_keyframe_size(payload) if key else None
        if size is not None and (not self.sizes or self.sizes[-1] != size):
            self.sizes.append(size)
        pid = picture_id(payload)
        if (
            pid is not None
            and self._last_picture is not None
            and pid not in (self._last_picture, (self._last_picture + 1) & 0x7FFF)
        ):
            self.switches += 1
            if not key:
                self.bad_switches += 1
        if pid is not None:
            self._last_picture = pid

    async def answer(self, server: SubscriberPeer, *, own_estimate: bool = True) -> None:
        offer, _ = await server.offer()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        for transceiver in self.pc.getTransceivers():
            if not own_estimate:  # the test sends the bandwidth estimates itself
                transceiver.receiver._RTCRtpReceiver__remote_bitrate_estimator = None
            tap_receiver(transceiver.receiver, self.count)
        await server.accept_answer(self.pc.localDescription.sdp)

    async def send_remb(self, server: SubscriberPeer, bitrate: int) -> None:
        receiver = self.pc.getTransceivers()[0].receiver
        ssrcs = [s.transceiver.sender._ssrc for s in server.slots]
        rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
        await receiver._send_rtcp(
            RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))
        )


@pytest.fixture
async def simulcast() -> AsyncIterator[tuple[PublisherPeer, SimulcastPublisher, PublishedTrack, str]]:
    server, client = PublisherPeer("alice"), SimulcastPublisher()
    answer, added, _ = await server.answer(await client.offer())
    await client.accept(answer)
    track = added[0]
    yield server, client, track, answer
    await client.close()
    await server.close()


async def test_the_answer_accepts_three_layers_and_the_server_tracks_each(simulcast):
    _server, _client, track, answer = simulcast
    assert "a=rid:q recv" in answer and "a=rid:f recv" in answer
    assert "a=simulcast:recv q;h;f" in answer
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answer
    assert track.simulcast and track.rids == ("q", "h", "f")
    await wait_for(lambda: all(layer.size is not None for layer in track.layers))
    assert [layer.size for layer in track.layers] == [SIZES["q"], SIZES["h"], SIZES["f"]]
    assert len({layer.ssrc for layer in track.layers}) == 3
    await wait_for(lambda: all(layer.bitrate > 0 for layer in track.layers))


async def test_a_subscriber_gets_the_layer_it_asks_for_switching_on_keyframes(simulcast):
    _, client, track, _ = simulcast
    await wait_for(lambda: all(layer.active(time.monotonic()) for layer in track.layers))
    sub, viewer = SubscriberPeer("bob"), RawViewer()
    try:
        down = sub.add(track)
        await viewer.answer(sub)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])  # the best by default
        del viewer.sizes[:-1]
        requests_before = client.keyframe_requests["q"]
        down.set_preferences(layer=0)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["q"]])
        assert client.keyframe_requests["q"] > requests_before  # the switch asked for a keyframe
        down.set_preferences(layer=down.layer_for_size(150, 100))  # a 150x100 element: h is enough
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["h"]])
        down.set_preferences(layer=2)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])
        assert viewer.sizes == [SIZES["f"], SIZES["q"], SIZES["h"], SIZES["f"]]
        assert viewer.switches >= 3 and viewer.bad_switches == 0
        # paused: nothing at all is sent, and resuming starts again on a keyframe
        down.set_preferences(paused=True)
        await asyncio.sleep(0.3)
        stopped = viewer.packets
        await asyncio.sleep(0.5)
        assert viewer.packets == stopped
        down.set_preferences(paused=False)
        await wait_for(lambda: viewer.packets > stopped + 10)
        assert viewer.bad_switches == 0
    finally:
        await viewer.pc.close()
        await sub.close()


async def test_a_size_asked_for_is_picked_again_when_the_layers_sizes_become_known(simulcast):
    _, _, track, _ = simulcast
    await wait_for(lambda: all(layer.size is not None for layer in track.layers))
    sub = SubscriberPeer("bob")
    try:
        down = sub.add(track)
        # As when dynacast paused h and f before their first keyframe: only q's size is known.
        track.layers[1].size = track.layers[2].size = None
        assert track.layer_sizes() == [SIZES["q"], SIZES["h"], SIZES["f"]]  # each layer twice the one below
        down.set_preferences(size=(150, 100))
        assert down.requested_layer == 1  # h (160x120) covers a 150x100 element
        # No size known at all (a track just published): the top, until a keyframe tells.
        for layer in track.layers:
            layer.size = None
        assert track.layer_sizes() == [None, None, None]
        down.set_preferences(size=(150, 100))
        assert down.requested_layer == 2
        await wait_for(lambda: track.request_keyframe() or down.requested_layer == 1)  # asks until a keyframe comes
        # A quality asked for is a layer, not a size: learning sizes leaves it alone.
        down.set_preferences(layer=0)
        track.layers[0].size = None
        await wait_for(lambda: track.request_keyframe(0) or track.layers[0].size is not None)  # asks until one comes
        assert down.requested_layer == 0 and down.view_size is None
    finally:
        await sub.close()


async def test_an_encoder_that_scales_its_layers_down_moves_a_subscriber_up_a_layer(simulcast, monkeypatch):
    _, _, track, _ = simulcast
    await wait_for(lambda: all(layer.size is not None for layer in track.layers))
    sub, viewer = SubscriberPeer("bob"), RawViewer()
    try:
        down = sub.add(track)
        await viewer.answer(sub)
        down.set_preferences(size=(150, 100))
        assert down.requested_layer == 1
        await wait_for(lambda: down.current_layer == 1 and viewer.sizes[-1:] == [SIZES["h"]])
        # The publisher halves every layer (a browser short of CPU does): h no longer covers the
        # element, f (now 160x120) does; the server moves the subscriber without being asked again.
        for rid, (width, height) in list(SIZES.items()):
            monkeypatch.setitem(SIZES, rid, (width // 2, height // 2))
        await wait_for(lambda: [layer.size for layer in track.layers] == [(40, 30), (80, 60), (160, 120)])
        await wait_for(lambda: down.requested_layer == 2 and down.current_layer == 2)
        await wait_for(lambda: viewer.sizes[-1:] == [(160, 120)])
        assert viewer.bad_switches == 0
    finally:
        await viewer.pc.close()
        await sub.close()


async def test_dynacast_pauses_layers_nobody_watches_and_resumes_them(simulcast, monkeypatch):
    monkeypatch.setattr(track_module, "DYNACAST_PAUSE_DELAY", 0.3)
    _, client, track, _ = simulcast
    told: list[list[str]] = []

    def on_layers(_track: PublishedTrack, rids: list[str]) -> None:
        told.append(rids)
        client.set_active(rids)

    track.on_layers = on_layers
    track.demand_changed()
    assert told == [["q"]]  # nobody subscribed: only the lowest layer keeps flowing
    await wait_for(lambda: not track.layers[2].active(time.monotonic()))
    sub, viewer = SubscriberPeer("bob"), RawViewer()
    try:
        down = sub.add(track)
        assert told[-1] == ["q", "f"]  # resumed at once for the new subscriber
        await viewer.answer(sub)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])
        down.set_preferences(layer=0)
        await wait_for(lambda: told[-1] == ["q"])  # f is paused once unwanted for a while
        sent_f = client.sent["f"]
        await asyncio.sleep(0.5)
        assert client.sent["f"] == sent_f  # the publisher stopped encoding it
        assert viewer.sizes[-1] == SIZES["q"]
        down.set_preferences(layer=1)
        assert told[-1] == ["q", "h"]
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["h"]])
    finally:
        await viewer.pc.close()
        await sub.close()
    # the subscriber left: back to the lowest layer only
    await wait_for(lambda: told[-1] == ["q"])


async def test_a_congested_subscriber_steps_down_and_back_up(simulcast, monkeypatch):
    monkeypatch.setattr(allocator, "HOLD_SECONDS", 0.6)
    monkeypatch.setattr(allocator, "STABLE_SECONDS", 0.6)
    _, _, track, _ = simulcast
    await wait_for(lambda: all(layer.bitrate > 0 for layer in track.layers))
    sub, viewer = SubscriberPeer("bob"), RawViewer()
    try:
        down = sub.add(track)
        await viewer.answer(sub, own_estimate=False)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])
        rates = [layer.bitrate for layer in track.layers]
        assert rates[0] < rates[1] < rates[2], rates
        await viewer.send_remb(sub, int(rates[2] * 10))
        await wait_for(lambda: (sub.estimate_bps or 0) > rates[2] * 5)  # REMB rounds its mantissa
        assert down.bandwidth_cap == 2  # plenty: the top layer
        # the estimate falls to what h needs: down to h at once
        await viewer.send_remb(sub, int(rates[1] * 1.1))
        await wait_for(lambda: down.bandwidth_cap == 1)
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["h"]])
        # plenty again: back up to f, but only after the estimate held for a while
        stepped_up = False
        for _ in range(60):
            await viewer.send_remb(sub, int(max(rates) * 10))
            if down.bandwidth_cap == 2:
                stepped_up = True
                break
            await asyncio.sleep(0.1)
        assert stepped_up
        await wait_for(lambda: viewer.sizes[-1:] == [SIZES["f"]])
        assert viewer.bad_switches == 0
    finally:
        await viewer.pc.close()
        await sub.close()


async def test_sinks_get_one_layer_the_best_flowing(simulcast):
    _, _, track, _ = simulcast

    @dataclass
    class Sink:
        ssrcs: list[int] = field(default_factory=list)

        def on_rtp(self, packet, codec) -> None:  # type: ignore[no-untyped-def]
            if not self.ssrcs or self.ssrcs[-1] != packet.ssrc:
                self.ssrcs.append(packet.ssrc)

        def on_track_closed(self) -> None:
            pass

    await wait_for(lambda: all(layer.active(time.monotonic()) for layer in track.layers))
    sink = Sink()
    track.add_sink(sink)
    await wait_for(lambda: len(sink.ssrcs) >= 1)
    await asyncio.sleep(0.5)
    assert sink.ssrcs == [track.layers[2].ssrc]
    with contextlib.suppress(ValueError):
        track.remove_sink(sink)


def test_the_estimate_told_to_a_publisher_covers_the_layers_someone_wants():
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    single = PublishedTrack("p", "video", "camera", None, vp8, "0")  # type: ignore[arg-type]
    assert single.remb_floor() == 0  # not simulcast: the estimator alone decides
    track = PublishedTrack("p", "video", "camera", None, vp8, "0", rids=("q", "h", "f"))  # type: ignore[arg-type]
    assert track.remb_floor() == int((150_000 + 500_000 + 1_500_000) * 1.1)  # nothing measured yet: defaults
    track.layers[0].bitrate = 100_000
    track.announced_rids = ["q"]  # dynacast paused h and f
    assert track.remb_floor() == int(100_000 * 1.1)
    track.announced_rids = ["q", "f"]
    assert track.remb_floor() == int((100_000 + 1_500_000) * 1.1)
