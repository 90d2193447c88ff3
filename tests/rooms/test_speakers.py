"""Active speaker events with real aiortc peers.

aiortc's sender writes the RFC 6464 level of every audio frame it encodes (from the
frame's RMS), and the server's answer keeps the extension, so the levels the tests
expect follow from the tones: amplitude 8000 of 32767 is -15 dBov, 2000 is -27 dBov,
and amplitude 0 is silence (127).
"""

from __future__ import annotations

from typing import Any

from tests.helpers import Tenant
from tests.rtc import ToneAudioTrack
from tests.signaling.test_ws import token

AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def ids(event: dict[str, Any]) -> list[str]:
    return [s["participant_id"] for s in event["speakers"]]


async def test_speakers_are_announced_loudest_first_and_follow_mute(rtc, tenant: Tenant):
    alice, bob, carol = await rtc(), await rtc(), await rtc()
    a = (await alice.join(token(tenant, "alice")))["participant"]["id"]
    reply = await alice.publish(ToneAudioTrack(amplitude=8000))
    assert AUDIO_LEVEL in reply["sdp"]  # the server negotiates the level extension
    b = (await bob.join(token(tenant, "bob")))["participant"]["id"]
    await bob.publish(ToneAudioTrack(amplitude=0))  # silence: never a speaker
    c = (await carol.join(token(tenant, "carol")))["participant"]["id"]

    first = await carol.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [a], within=20)
    (speaker,) = first["speakers"]
    assert 12 <= speaker["dbov"] <= 18 and 0.1 < speaker["level"] < 0.3, speaker  # the tone: -15 dBov
    await bob.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [a], within=20)
    await alice.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [a], within=20)

    # A quieter second speaker comes after the louder one.
    await carol.publish(ToneAudioTrack(amplitude=2000))
    both = await bob.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [a, c], within=20)
    assert both["speakers"][0]["level"] > both["speakers"][1]["level"]
    assert 24 <= both["speakers"][1]["dbov"] <= 30, both  # -27 dBov
    assert b not in ids(both)

    # A late joiner gets the current list although it did not change.
    dave = await rtc()
    await dave.join(token(tenant, "dave"))
    late = await dave.wait_event(lambda e: e["type"] == "speakers", within=20)
    assert ids(late) == [a, c]

    # Muting stops the packets (and so the level): alice drops out, carol stays.
    audio = reply["tracks"][0]["id"]
    assert (await alice.request({"type": "mute", "track_id": audio, "muted": True}))["type"] == "ack"
    await bob.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [c], within=20)
    # Leaving ends carol's track: nobody speaks, and that is announced too.
    await carol.request({"type": "leave"})
    await bob.wait_event(lambda e: e["type"] == "speakers" and e["speakers"] == [], within=20)


async def test_hidden_participants_are_never_speakers(rtc, tenant: Tenant):
    viewer, ghost, alice = await rtc(), await rtc(), await rtc()
    await viewer.join(token(tenant, "viewer"))
    await ghost.join(token(tenant, "ghost", room_join=True, can_publish=True, can_subscribe=True, hidden=True))
    await ghost.publish(ToneAudioTrack(amplitude=8000))
    a = (await alice.join(token(tenant, "alice")))["participant"]["id"]
    await alice.publish(ToneAudioTrack(amplitude=2000))
    event = await viewer.wait_event(lambda e: e["type"] == "speakers" and e["speakers"], within=20)
    assert ids(event) == [a]
    assert all(ids(e) in ([a], []) for e in viewer.events if e["type"] == "speakers")


async def test_a_resumed_socket_gets_the_current_speakers_again(rtc, tenant: Tenant, client):
    from tests.rtc import RtcClient

    alice, bob = await rtc(), await rtc()
    a = (await alice.join(token(tenant, "alice")))["participant"]["id"]
    await alice.publish(ToneAudioTrack(amplitude=8000))
    joined = await bob.join(token(tenant, "bob"))
    await bob.wait_event(lambda e: e["type"] == "speakers" and ids(e) == [a], within=20)

    await bob.ws.close()  # the network drops; the list does not change meanwhile
    again = RtcClient(await client.ws_connect("/rtc"))
    try:
        resumed = await again.join(token(tenant, "bob"), resume=joined["resume_token"])
        assert resumed["resumed"] is True
        event = await again.wait_event(lambda e: e["type"] == "speakers", within=20)
        assert ids(event) == [a]
    finally:
        await again.close()
