"""The subscriber's offers and answers have one owner: one offer in flight, later changes folded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from gbmedia.errors import ProtocolError
from gbmedia.node import Node
from gbmedia.rooms.negotiation import State, SubscriberNegotiation
from gbmedia.sfu.peers import NegotiationError, SubscriberPeer
from tests.helpers import Tenant
from tests.rtc import NO_STUN, ColorVideoTrack, ToneAudioTrack
from tests.signaling.test_ws import token

RED = (220, 30, 30)


async def answer_to(client: RTCPeerConnection, offer: dict[str, Any]) -> str:
    await client.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    await client.setLocalDescription(await client.createAnswer())
    return client.localDescription.sdp


async def test_changes_fold_into_one_offer_and_a_refused_answer_leaves_it_waiting(rtc, tenant: Tenant, node: Node):
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    video_id, audio_id = (t["id"] for t in (await alice.publish(ColorVideoTrack(RED), ToneAudioTrack()))["tracks"])
    (live,) = node.live_rooms.live.values()
    tracks = live.tracks()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    peer, client = SubscriberPeer("PA_test"), RTCPeerConnection(NO_STUN)
    negotiation = SubscriberNegotiation(peer, send)
    try:
        peer.add(tracks[video_id])
        await asyncio.gather(negotiation.renegotiate(), negotiation.renegotiate())  # two changes at once
        assert len(sent) == 1 and negotiation.state is State.AWAITING_ANSWER and negotiation.again
        peer.add(tracks[audio_id])
        await negotiation.renegotiate()  # the client still holds the first offer: no second one
        assert len(sent) == 1

        with pytest.raises(NegotiationError):
            await negotiation.answer("v=0\r\n")  # garbage is refused...
        assert negotiation.state is State.AWAITING_ANSWER  # ...and the offer still waits for its answer
        await negotiation.resend()  # a resumed socket gets it again
        assert [m["sdp"] for m in sent] == [sent[0]["sdp"]] * 2

        await negotiation.answer(await answer_to(client, sent[0]))
        # The folded changes went out as one more offer, with both tracks.
        assert len(sent) == 3 and set(sent[2]["tracks"].values()) == {video_id, audio_id}
        assert negotiation.state is State.AWAITING_ANSWER and not negotiation.again
        await negotiation.answer(await answer_to(client, sent[2]))
        assert negotiation.state is State.IDLE and negotiation.pending_offer is None

        with pytest.raises(ProtocolError) as refused:  # a second answer to an answered offer
            await negotiation.answer(client.localDescription.sdp)
        assert refused.value.code == "unexpected_answer"
        await negotiation.resend()  # nothing waits: nothing is sent
        assert len(sent) == 3
    finally:
        await peer.close()
        await client.close()


async def test_a_replacing_connection_marks_its_offers_and_a_closed_one_sends_none(rtc, tenant: Tenant, node: Node):
    """A media restart: the new connection's offers say ``restart`` until one is answered (resent too); the
    replaced connection's negotiation sends nothing more, not even an offer it was making when closed."""
    alice = await rtc()
    await alice.join(token(tenant, "alice"))
    (video_id,) = (t["id"] for t in (await alice.publish(ColorVideoTrack(RED)))["tracks"])
    (live,) = node.live_rooms.live.values()
    track = live.tracks()[video_id]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    old_peer, peer, client = SubscriberPeer("PA_old"), SubscriberPeer("PA_new"), RTCPeerConnection(NO_STUN)
    try:
        old = SubscriberNegotiation(old_peer, send)
        old_peer.add(track)
        making = asyncio.ensure_future(old.renegotiate())
        await asyncio.sleep(0)  # the offer is being made (ICE gathering) when the connection is replaced
        old.close()
        await making
        await old.renegotiate()
        assert sent == [] and old.state is State.IDLE

        fresh = SubscriberNegotiation(peer, send, restart=True)
        peer.add(track)
        await fresh.renegotiate()
        await fresh.resend()
        assert [m.get("restart") for m in sent] == [True, True]
        await fresh.answer(await answer_to(client, sent[0]))
        peer.remove(next(iter(s.down for s in peer.slots if s.down is not None)))
        await fresh.renegotiate()  # answered once: later offers are ordinary
        assert "restart" not in sent[-1] and len(sent) == 3
    finally:
        await old_peer.close()
        await peer.close()
        await client.close()
