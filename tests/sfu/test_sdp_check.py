"""The SDP checker: what aiortc cannot parse (or should not connect with) is refused, naming the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from gbmedia.sfu.peers import NegotiationError, parse_sdp
from gbmedia.sfu.sdp_check import InvalidSdp, check_candidate, check_sdp
from tests.sdp_cases import MALFORMED

SEEDS = Path(__file__).parents[1] / "fuzz" / "seeds" / "sdp"
AUDIO_MLINE = "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"
CHROME = (SEEDS / "chrome-simulcast-offer.sdp").read_bytes().decode()


@pytest.fixture(scope="module")
async def aiortc_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_browser_and_aiortc_offers_pass(aiortc_offer: str):
    for sdp in (CHROME, aiortc_offer):
        check_sdp(sdp)
        assert len(parse_sdp(sdp, "offer").media) == 2


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_each_malformed_offer_is_refused_naming_its_line(aiortc_offer: str, case: str):
    malformed = MALFORMED[case]
    sdp = malformed.change(aiortc_offer)
    assert sdp != aiortc_offer
    with pytest.raises(NegotiationError) as refused:
        parse_sdp(sdp, "offer")
    assert refused.value.code == "invalid_sdp"
    assert malformed.reason in refused.value.message
    assert re.search(r"line \d+ \('", refused.value.message), refused.value.message


def test_aiortc_alone_fails_inside_on_these_cases():
    """Why the checker exists: aiortc 1.16's parser raises what no caller expects from a parser."""
    raised = {}
    for case in ("payload_type_300", "short_candidate", "fmtp_for_unknown_payload_type", "group_without_value"):
        with pytest.raises(Exception) as info:
            SessionDescription.parse(MALFORMED[case].change(CHROME))
        raised[case] = type(info.value)
    assert raised == {
        "payload_type_300": AssertionError,
        "short_candidate": AssertionError,
        "fmtp_for_unknown_payload_type": StopIteration,
        "group_without_value": AttributeError,
    }


def _in_video(line: str) -> str:
    return CHROME.replace("a=mid:1\r\n", f"a=mid:1\r\n{line}\r\n")


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("", "starts with 'v=0'"),
        ("v=1\r\n", "starts with 'v=0'"),
        ("v=0\r\ns=-\r\n", "no media section"),
        (CHROME.replace("t=0 0", "t=0 0\r\nnot a line"), "an SDP line is"),
        (CHROME.replace("m=audio 9 ", "m=text 9 "), "media kind is one of"),
        (CHROME.replace("m=audio 9 ", "m=audio 70000 "), "port 70000"),
        (CHROME.replace("a=setup:actpass", "a=setup:holdconn"), "a=setup is one of"),
        (CHROME.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 7"), "names mids no m-section has: 7"),
        (CHROME.replace("a=msid-semantic: WMS 5f4d", "a=msid-semantic:"), "a=msid-semantic needs a value"),
        (CHROME.replace("a=fingerprint:sha-256 3A", "a=fingerprint:sha-256 ZZ"), "a fingerprint is"),
        (re.sub(r"a=ice-pwd:[^\r]*\r\n", "", CHROME), "lacks an ICE password"),
        (re.sub(r"a=ice-ufrag:[^\r]*\r\n", "", CHROME), "lacks an ICE username fragment"),
        (re.sub(r"a=setup:[^\r]*\r\n", "", CHROME), "lacks a DTLS role"),
        (_in_video("a=extmap:20 urn:ietf:params:rtp-hdrext:sdes:mid"), "the id of urn:ietf:params:rtp-hdrext:sdes:mid"),
        (_in_video("a=extmap:256 urn:x"), "extension id 256"),
        (_in_video("a=extmap:5/sendonly/x urn:x"), "one direction at most"),
        (_in_video("a=extmap:5"), "a=extmap is"),
        (_in_video("a=rtpmap:104"), "a=rtpmap is"),
        (_in_video("a=rtpmap:104 VP9/fast"), "clock rate 'fast'"),
        (CHROME.replace("opus/48000/2", "opus/48000/two"), "channel count 'two'"),
        (_in_video("a=fmtp:96"), "a=fmtp is"),
        (_in_video("a=fmtp:97 apt=x"), "apt 'x'"),
        (_in_video("a=rtcp-fb:96"), "a=rtcp-fb is"),
        (_in_video("a=rtcp-fb:300 nack"), "payload type 300"),
        (_in_video("a=rtcp:9 IN IP4"), "the RTCP address"),
        (_in_video("a=rtcp:x"), "RTCP port 'x'"),
        (_in_video("a=ssrc:1"), "a=ssrc is"),
        (_in_video("a=ssrc:4294967296 cname:x"), "SSRC 4294967296"),
        (_in_video("a=ssrc-group:FID 1 x"), "SSRC 'x'"),
        (_in_video("a=sctp-port:x"), "SCTP port 'x'"),
        (_in_video("a=sctpmap:5000"), "a=sctpmap is"),
        (_in_video("a=mid"), "a=mid needs a value"),
        (CHROME.replace("a=mid:1", "a=mid:" + "1" * 17), "a mid is a token of 1-16 characters"),
        (CHROME.replace("a=mid:1", "a=mid:1 2"), "a mid is a token"),
        (CHROME.replace("a=mid:1", "a=mid:0"), "mid 0 is another m-section's too"),
        (CHROME.replace("a=mid:1", "a=mid:1\r\na=mid:2"), "an m-section has one a=mid"),
        (CHROME.replace("a=mid:1\r\n", ""), "lacks a mid (a=mid)"),
        (CHROME.replace("a=sendonly\r\na=msid:5f4d 2c9b", "a=msid:5f4d 2c9b"), "has one direction"),
        (CHROME.replace("a=sendonly\r\na=msid:5f4d 2c9b", "a=sendonly\r\na=inactive"), "not 2"),
        (_in_video("a=candidate:1 x udp 1 192.0.2.1 9 typ host"), "component 'x'"),
        (_in_video("a=candidate:1 1 udp 1 192.0.2.1 9 type host"), "must be 'typ'"),
        (_in_video("a=candidate:1 1 udp 1 192.0.2.1 9 typ srflx raddr 0.0.0.0 rport x"), "rport 'x'"),
        (CHROME.replace(AUDIO_MLINE, "m=application 9 DTLS/SCTP  "), "SCTP port ''"),
    ],
)
def test_rules(sdp: str, reason: str):
    with pytest.raises(InvalidSdp) as refused:
        check_sdp(sdp)
    assert reason in str(refused.value)


def test_what_aiortc_refuses_beyond_the_rules_is_invalid_sdp_too():
    with pytest.raises(NegotiationError) as refused:
        parse_sdp(CHROME.replace("s=-\r\n", "s=-\r\nv=x\r\n"), "offer")  # a second v= line
    assert refused.value.code == "invalid_sdp" and "does not parse" in refused.value.message


def test_what_the_rules_allow():
    check_sdp(CHROME.replace("t=0 0\r\n", "t=0 0\r\n\r\n"))  # an empty line
    with pytest.raises(InvalidSdp, match="starts with a semantic token"):
        check_sdp(CHROME.replace("a=group:BUNDLE 0 1", "a=group:(BUNDLE) 0 1"))
    check_sdp(_in_video("a=extmap:20/recvonly urn:x"))  # two-byte ids for what the forwarder does not write
    check_sdp(_in_video("a=rtcp-fb:* nack"))
    check_sdp(_in_video("a=rtcp:9"))
    check_sdp(CHROME.replace(AUDIO_MLINE, "m=application 9 DTLS/SCTP 5000"))
    check_candidate("1 1 udp 2122260223 192.0.2.10 46243 typ srflx raddr 192.0.2.1 rport 9 generation 0")


def test_a_long_line_is_shortened_in_the_message():
    with pytest.raises(InvalidSdp) as refused:
        check_sdp(_in_video("a=ssrc:1" + "2" * 200))
    assert refused.value.line_number == 49 and len(str(refused.value)) < 200
