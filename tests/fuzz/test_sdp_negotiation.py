"""Offers a client could send, built by hypothesis and answered by real server-side peer connections.

The byte fuzzer (``test_fuzz.py``) reaches the SDP parser; what passes it goes on to
aiortc's ``setRemoteDescription`` and the SFU's own negotiation (simulcast, codecs,
track limits), which a mutated byte rarely reaches intact. Here offers are edited a
line at a time from real ones (a browser's simulcast offer, aiortc's), so most
parse and go all the way. The property: a publisher's offer is answered or refused
with a :class:`NegotiationError`, a WHEP player's too, and a subscriber's answer to
the server's offer is accepted or refused the same way; nothing else escapes.
Derandomized and bounded, so every run tries the same offers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gbmedia.sfu.peers import NegotiationError, PublisherPeer, SubscriberPeer
from gbmedia.sfu.playback import PlaybackPeer
from gbmedia.sfu.track import PublishedTrack
from tests.rtc import answer_to

HERE = Path(__file__).parent
SEEDS = sorted((HERE / "seeds" / "sdp").glob("*.sdp"))
OFFERS = [path.read_bytes().decode() for path in SEEDS]
FOUND = sorted((HERE / "corpus" / "sdp").glob("*.sdp"))  # offers this test once failed on, each fixed since
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)

# Lines a client might add: valid on their own, troublesome in the wrong place or combination.
EXTRA_LINES = [
    "a=group:BUNDLE 0",
    "a=group:BUNDLE 1 0",
    "a=group:LS 0 1",
    "a=mid:0",
    "a=mid:1",
    "a=mid:2",
    "a=setup:active",
    "a=setup:passive",
    "a=sendrecv",
    "a=recvonly",
    "a=inactive",
    "a=ice-lite",
    "a=rtcp-mux",
    "a=end-of-candidates",
    "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=rid:q send",
    "a=rid:f recv",
    "a=simulcast:send q;f",
    "a=simulcast:recv f",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:96 opus/48000/2",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=120",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 profile-level-id=zzzzzz",
    "a=fmtp:102 packetization-mode=1;profile-level-id=640c1f",
    "a=ssrc-group:FID 1 2",
    "a=ssrc:1 cname:x",
    "a=msid:- -",
    "a=candidate:1 1 tcp 1 192.0.2.1 9 typ host tcptype active",
    "a=candidate:1 1 udp 1 host.local 9 typ host",
    "a=candidate:1 1 udp 1 ::1 0 typ relay raddr 0.0.0.0 rport 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
    "m=video 0 UDP/TLS/RTP/SAVPF 96",
    "m=audio 9 UDP/TLS/RTP/SAVPF 0",
    "c=IN IP6 ::",
]

edit = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 200)),
    st.tuples(st.just("duplicate"), st.integers(0, 200)),
    st.tuples(st.just("swap"), st.integers(0, 200), st.integers(0, 200)),
    st.tuples(st.just("insert"), st.integers(0, 200), st.sampled_from(EXTRA_LINES)),
)


def edited(offer: str, edits: list[tuple]) -> str:
    lines = offer.split("\r\n")[:-1]
    for kind, at, *rest in edits:
        i = 1 + at % (len(lines) - 1)  # never the first line: an offer without v=0 is refused up front
        if kind == "delete" and len(lines) > 2:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = 1 + rest[0] % (len(lines) - 1)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "insert":
            lines.insert(i, rest[0])
    return "\r\n".join(lines) + "\r\n"


async def negotiate(sdp: str) -> None:
    """The offer as a publisher's (/rtc publish, WHIP) and as a player's (WHEP): answered, or refused."""
    publisher = PublisherPeer("PA_fuzz")
    try:
        await publisher.answer(sdp)
    except NegotiationError:
        pass
    finally:
        await publisher.close()
    player = PlaybackPeer("WHEP_fuzz")
    try:
        await player.answer(sdp.replace("a=sendonly", "a=recvonly"), {"video": VP8, "audio": OPUS})
    except NegotiationError:
        pass
    finally:
        await player.close()


@pytest.mark.parametrize("sdp", [pytest.param(path.read_bytes().decode(), id=path.name) for path in SEEDS + FOUND])
async def test_replay(sdp: str):
    await negotiate(sdp)


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(offer=st.sampled_from(OFFERS), edits=st.lists(edit, min_size=1, max_size=4))
async def test_an_edited_offer_is_answered_or_refused_with_a_code(offer: str, edits: list[tuple]):
    await negotiate(edited(offer, edits))


class Subscribing:
    """A published track (its receiver from a connection that never connects) and a real client's
    answer to a subscriber offer carrying it: the answer each example edits (made once)."""

    answer = ""

    def __init__(self) -> None:
        self.source = RTCPeerConnection()
        receiver = self.source.addTransceiver("video", direction="recvonly").receiver
        self.track = PublishedTrack("PA_source", "video", "camera", receiver, VP8, "0")

    async def offer(self) -> SubscriberPeer:
        server = SubscriberPeer("PA_fuzz")
        server.add(self.track)
        await server.offer()
        return server

    async def base_answer(self) -> str:
        if not Subscribing.answer:
            server, client = await self.offer(), RTCPeerConnection()
            try:
                Subscribing.answer = await answer_to(client, server.pc.localDescription.sdp)
            finally:
                await client.close()
                await server.close()
        return Subscribing.answer

    async def close(self) -> None:
        await self.source.close()


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(edits=st.lists(edit, min_size=1, max_size=4))
async def test_an_edited_answer_is_accepted_or_refused_with_a_code(edits: list[tuple]):
    subscribing = Subscribing()
    server = await subscribing.offer()
    try:
        await server.accept_answer(edited(await subscribing.base_answer(), edits))
    except NegotiationError:
        pass
    finally:
        await server.close()
        await subscribing.close()
