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
