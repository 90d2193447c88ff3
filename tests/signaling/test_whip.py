"""WHIP ingest and WHEP playback over real HTTP with real aiortc peers.

An aiortc "encoder" POSTs its SDP offer to ``/whip/{room}`` as OBS would (H.264 and
Opus), an aiortc player POSTs a receive-only offer to ``/whep/{room}`` and decodes
what it gets; the colour of the decoded picture proves it is the encoder's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from gbmedia.signaling.whip import parse_sdpfrag
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant, bearer, create_tenant
from tests.rtc import NO_STUN, ColorVideoTrack, RtcClient, ToneAudioTrack, close_to, mean_rgb, offer_from, wait_for
from tests.sdp_cases import MALFORMED

RED = (220, 30, 30)
BLUE = (30, 30, 220)
SDP = {"Content-Type": "application/sdp"}


def live_token(tenant: Tenant, identity: str, room: str = "show", **grants: bool) -> str:
    chosen = Grants(room=room, **grants) if grants else Grants(room=room, room_join=True, can_subscribe=True)
    return mint_token(tenant.key, tenant.secret, identity, chosen, name=identity.title())


def host_token(tenant: Tenant, identity: str = "obs", room: str = "show") -> str:
    return live_token(tenant, identity, room, room_join=True, can_publish=True, can_subscribe=True)


@dataclass
class Encoder:
    pc: RTCPeerConnection
    location: str
    etag: str
    answer: str


@dataclass
class Player:
    pc: RTCPeerConnection
    location: str
    etag: str
    answer: str
    frames: dict[str, list[Any]] = field(default_factory=dict)  # by kind
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def h264_only(pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
    transceiver = pc.addTransceiver(track, direction="sendonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    )


@pytest.fixture
async def peers() -> AsyncIterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for item in opened:
        for task in getattr(item, "tasks", []):
            task.cancel()
        await item.pc.close()


async def whip(
    client: TestClient, token: str, *tracks: MediaStreamTrack, room: str = "show", opened: list[Any] | None = None
) -> Encoder:
    """Publish ``tracks`` (video as H.264, like OBS) over WHIP."""
    pc = RTCPeerConnection(NO_STUN)
    if opened is not None:
        opened.append(Encoder(pc, "", "", ""))
    for track in tracks:
        if track.kind == "video":
            h264_only(pc, track)
        else:
            pc.addTransceiver(track, direction="sendonly")
    resp = await client.post(f"/whip/{room}", data=await offer_from(pc), headers={**bearer(token), **SDP})
    assert resp.status == 201, await resp.text()
    assert resp.content_type == "application/sdp"
    answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return Encoder(pc, resp.headers["Location"], resp.headers["ETag"], answer)


async def whep(client: TestClient, token: str, room: str = "show", opened: list[Any] | None = None) -> Player:
    pc = RTCPeerConnection(NO_STUN)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    player = Player(pc, "", "", "")
    if opened is not None:
        opened.append(player)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def pull() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await track.recv()
                    player.frames.setdefault(track.kind, []).append(frame)

        player.tasks.append(asyncio.ensure_future(pull()))

    resp = await client.post(f"/whep/{room}", data=await offer_from(pc), headers={**bearer(token), **SDP})
    assert resp.status == 201, await resp.text()
    player.answer = await resp.text()
    player.location, player.etag = resp.headers["Location"], resp.headers["ETag"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=player.answer, type="answer"))
    return player


async def rtc_client(client: TestClient) -> RtcClient:
    return RtcClient(await client.ws_connect("/rtc"))


async def test_an_encoder_publishes_over_whip_and_a_player_decodes_it_over_whep(
    client: TestClient, tenant: Tenant, peers: list[Any], node
):
    watcher = await rtc_client(client)
    try:
        encoder = await whip(client, host_token(tenant), ColorVideoTrack(RED), ToneAudioTrack(), opened=peers)
        assert encoder.location.startswith("/whip/show/") and encoder.etag.startswith('"')
        assert "H264/90000" in encoder.answer and "opus/48000" in encoder.answer
        room = next(iter(node.live_rooms.live.values()))
        assert room.room.kind == "live"  # the encoder's token opened the room as a live room

        # A socket viewer sees the encoder as a host with its two tracks.
        joined = await watcher.join(live_token(tenant, "watcher"), auto_subscribe=False)
        assert joined["room"]["kind"] == "live" and joined["viewer_count"] == 1
        (host,) = joined["participants"]
        assert host["identity"] == "obs" and sorted(t["kind"] for t in host["tracks"]) == ["audio", "video"]
        assert {t["source"] for t in host["tracks"]} == {"camera", "microphone"}

        player = await whep(client, live_token(tenant, "player"), opened=peers)
        assert "H264/90000" in player.answer and "VP8" not in player.answer  # exactly the encoder's codec
        await wait_for(lambda: len(player.frames.get("video", [])) >= 5, within=30)
        assert close_to(mean_rgb(player.frames["video"][-1]), RED)
        await wait_for(lambda: len(player.frames.get("audio", [])) >= 10, within=30)
        count = await watcher.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 2)
        assert count == {"type": "viewer_count", "count": 2}
        # The watcher also opens a player: still two viewers (distinct identities), three in the room.
        await whep(client, live_token(tenant, "watcher"), opened=peers)
        assert room.audience.viewer_count() == 2 and room.audience.occupancy() == 4

        # DELETE ends each session; the player no longer counts, the encoder leaves the stage.
        resp = await client.delete(player.location, headers=bearer(live_token(tenant, "player")))
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        await watcher.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
        resp = await client.delete(encoder.location, headers=bearer(host_token(tenant)))
        assert resp.status == 200
        await watcher.wait_event(lambda e: e["type"] == "participant_left" and e["participant_id"] == host["id"])
        resp = await client.delete(encoder.location, headers=bearer(host_token(tenant)))
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "session_not_found"
        text = await (await client.get("/metrics")).text()
        assert "gbmedia_whip_sessions 0.0" in text and "gbmedia_whep_sessions 1.0" in text
    finally:
        await watcher.close()


async def test_players_follow_the_program_when_the_host_changes(client: TestClient, tenant: Tenant, peers: list[Any]):
    first = await whip(client, host_token(tenant, "first"), ColorVideoTrack(RED), opened=peers)
    await whip(client, host_token(tenant, "second"), ColorVideoTrack(BLUE), opened=peers)
    player = await whep(client, live_token(tenant, "player"), opened=peers)
    await wait_for(lambda: len(player.frames.get("video", [])) >= 3, within=30)
    assert close_to(mean_rgb(player.frames["video"][-1]), RED)  # the first host is the program
    resp = await client.delete(first.location, headers=bearer(host_token(tenant, "first")))
    assert resp.status == 200
    # The same m-line now carries the second host, decoded without a new negotiation.
    await wait_for(lambda: close_to(mean_rgb(player.frames["video"][-1]), BLUE), within=30)


async def test_trickle_ice_over_patch(client: TestClient, tenant: Tenant, peers: list[Any]):
    encoder = await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    offer = encoder.pc.localDescription.sdp
    ufrag = next(line for line in offer.splitlines() if line.startswith("a=ice-ufrag:"))
    candidate = next(line for line in offer.splitlines() if line.startswith("a=candidate:"))
    fragment = f"{ufrag}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate}\r\na=end-of-candidates\r\n"
    frag = {**bearer(host_token(tenant)), "Content-Type": "application/trickle-ice-sdpfrag"}
    resp = await client.patch(encoder.location, data=fragment, headers={**frag, "If-Match": encoder.etag})
    assert resp.status == 204, await resp.text()
    resp = await client.patch(encoder.location, data=fragment, headers={**frag, "If-Match": '"stale"'})
    assert resp.status == 412 and (await resp.json())["error"]["code"] == "etag_mismatch"
    restart = fragment.replace(ufrag, "a=ice-ufrag:newfrag")
    resp = await client.patch(encoder.location, data=restart, headers={**frag, "If-Match": "*"})
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "ice_restart_unsupported"
    resp = await client.patch(encoder.location, data=fragment, headers={**frag, "Content-Type": "text/plain"})
    assert resp.status == 415 and (await resp.json())["error"]["code"] == "unsupported_media_type"
    resp = await client.patch(encoder.location, data="a=mid:0\r\na=candidate:garbage\r\n", headers=frag)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_candidate"
    resp = await client.patch(encoder.location, data="hello\r\n", headers=frag)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_sdpfrag"
    # Another identity of the instance cannot touch the session; nor can a bare request.
    resp = await client.patch(encoder.location, data=fragment, headers={**frag, **bearer(host_token(tenant, "x"))})
    assert resp.status == 404
    resp = await client.delete(encoder.location)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "auth_required"
    # The player's session takes trickle too.
    player = await whep(client, live_token(tenant, "player"), opened=peers)
    player_offer = player.pc.localDescription.sdp
    player_ufrag = next(line for line in player_offer.splitlines() if line.startswith("a=ice-ufrag:"))
    resp = await client.patch(
        player.location,
        data=f"{player_ufrag}\r\na=end-of-candidates\r\n",
        headers={**bearer(live_token(tenant, "player")), "Content-Type": "application/trickle-ice-sdpfrag"},
    )
    assert resp.status == 204, await resp.text()


def test_sdp_fragments_parse():
    ufrag, candidates = parse_sdpfrag(
        "a=ice-ufrag:abc\r\na=ice-pwd:x\r\nm=audio 9 RTP/AVP 0\r\na=mid:1\r\n"
        "a=candidate:1 1 udp 2 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n"
    )
    assert ufrag == "abc" and candidates == [("1", "candidate:1 1 udp 2 192.0.2.1 5000 typ host")]


async def error_of(resp: Any) -> tuple[int, str]:
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.content_type == "application/json"
    return resp.status, (await resp.json())["error"]["code"]


async def test_bad_requests_get_clear_json_errors(client: TestClient, tenant: Tenant, peers: list[Any]):
    pc = RTCPeerConnection(NO_STUN)
    peers.append(Encoder(pc, "", "", ""))
    h264_only(pc, ColorVideoTrack(RED))
    offer = await offer_from(pc)
    token = host_token(tenant)

    async def post(path: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
        return await error_of(await client.post(path, data=body, headers=headers))

    assert await post("/whip/show", offer, SDP) == (401, "auth_required")
    assert await post("/whip/show", offer, {**SDP, "Authorization": "Basic eDp5"}) == (401, "auth_scheme_unsupported")
    assert await post("/whip/show", offer, {**SDP, **bearer("not-a-jwt")}) == (401, "token_malformed")
    forged = mint_token(tenant.key, "x" * 32, "obs", Grants(room="show", can_publish=True))
    assert await post("/whip/show", offer, {**SDP, **bearer(forged)}) == (401, "token_signature_invalid")
    viewer = live_token(tenant, "viewer")
    assert await post("/whip/show", offer, {**SDP, **bearer(viewer)}) == (403, "grant_missing")
    assert await post("/whip/other", offer, {**SDP, **bearer(token)}) == (403, "room_mismatch")
    assert await post("/whip/show", offer, {"Content-Type": "text/plain", **bearer(token)}) == (
        415,
        "unsupported_media_type",
    )
    assert await post("/whip/show", "hello", {**SDP, **bearer(token)}) == (400, "invalid_sdp")
    assert await post("/whip/show", "v=0\r\nnot sdp\r\n", {**SDP, **bearer(token)}) == (400, "invalid_sdp")
    receive_only = offer.replace("a=sendonly", "a=recvonly")
    assert await post("/whip/show", receive_only, {**SDP, **bearer(token)}) == (400, "invalid_sdp")
    # An offer whose only video codec is one the server cannot forward.
    lines = []
    for line in offer.split("\r\n"):
        if line.startswith("m=video"):
            line = " ".join([*line.split(" ")[:3], "120"])
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            continue
        lines.append(line)
    lines.insert(-1, "a=rtpmap:120 AV1X/90000")
    resp = await client.post("/whip/show", data="\r\n".join(lines), headers={**SDP, **bearer(token)})
    assert await error_of(resp) == (422, "no_usable_codec")
    assert (await resp.json())["error"]["details"]["offered"] == ["av1x"]
    # Playback before anyone is live, and of a meeting room.
    player = RTCPeerConnection(NO_STUN)
    peers.append(Player(player, "", "", ""))
    player.addTransceiver("video", direction="recvonly")
    play_offer = await offer_from(player)
    resp = await client.post("/whep/show", data=play_offer, headers={**SDP, **bearer(viewer)})
    assert await error_of(resp) == (409, "room_not_live") and resp.headers["Retry-After"] == "5"
    assert await post("/whep/show", offer, {**SDP, **bearer(viewer)}) == (400, "invalid_sdp")  # sends only
    assert await post("/whep/show", play_offer, {**SDP, **bearer(live_token(tenant, "x", can_publish=True))}) == (
        403,
        "grant_missing",
    )
    meeting = await rtc_client(client)
    try:
        await meeting.join(mint_token(tenant.key, tenant.secret, "m", Grants.participant("standup")))
        meeting_token = live_token(tenant, "obs", "standup", room_join=True, can_publish=True, can_subscribe=True)
        assert await post("/whip/standup", offer, {**SDP, **bearer(meeting_token)}) == (409, "not_a_live_room")
        assert await post("/whep/standup", play_offer, {**SDP, **bearer(meeting_token)}) == (409, "not_a_live_room")
    finally:
        await meeting.close()


async def test_a_player_whose_offer_lacks_the_hosts_codec_is_refused(
    client: TestClient, tenant: Tenant, peers: list[Any]
):
    await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    pc = RTCPeerConnection(NO_STUN)
    peers.append(Player(pc, "", "", ""))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
    )
    resp = await client.post(
        "/whep/show", data=await offer_from(pc), headers={**SDP, **bearer(live_token(tenant, "player"))}
    )
    assert await error_of(resp) == (422, "no_usable_codec")


async def test_preflight_needs_no_credentials(client: TestClient):
    resp = await client.options(
        "/whip/show", headers={"Origin": "https://studio.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert resp.headers["Accept-Post"] == "application/sdp"
    resp = await client.options("/whep/show/abc")
    assert resp.status == 204 and "DELETE" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"


async def test_full_rooms_and_offers_the_server_refuses_after_joining(
    client: TestClient, tenant: Tenant, peers: list[Any], node
):
    resp = await client.post(
        "/api/v1/rooms", json={"name": "tiny", "kind": "live", "max_participants": 1}, headers=tenant.admin
    )
    assert resp.status == 201
    await whip(client, host_token(tenant, "obs", "tiny"), ColorVideoTrack(RED), room="tiny", opened=peers)
    pc = RTCPeerConnection(NO_STUN)
    peers.append(Encoder(pc, "", "", ""))
    h264_only(pc, ColorVideoTrack(RED))
    offer = await offer_from(pc)
    resp = await client.post("/whip/tiny", data=offer, headers={**SDP, **bearer(host_token(tenant, "cam2", "tiny"))})
    assert await error_of(resp) == (409, "room_full")
    player = RTCPeerConnection(NO_STUN)
    peers.append(Player(player, "", "", ""))
    player.addTransceiver("video", direction="recvonly")
    resp = await client.post(
        "/whep/tiny", data=await offer_from(player), headers={**SDP, **bearer(live_token(tenant, "fan", "tiny"))}
    )
    assert await error_of(resp) == (409, "room_full")
    # Not UTF-8; and an H.264 offer in packetization mode 0, which passes the codec check
    # but the server cannot receive: the encoder joined, is refused, and is gone again.
    token = host_token(tenant)
    resp = await client.post("/whip/show", data=b"v=0\r\n\xff\xfe", headers={**SDP, **bearer(token)})
    assert await error_of(resp) == (400, "invalid_sdp")
    mode0 = offer.replace("packetization-mode=1", "packetization-mode=0")
    resp = await client.post("/whip/show", data=mode0, headers={**SDP, **bearer(token)})
    assert await error_of(resp) == (422, "no_usable_codec")
    show = next(live for live in node.live_rooms.live.values() if live.room.name == "show")
    assert show.participants == {} and show.audience.ingest == {}


async def test_sessions_end_when_their_connection_goes(client: TestClient, tenant: Tenant, peers: list[Any], node):
    encoder = await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    player = await whep(client, live_token(tenant, "player"), opened=peers)
    await wait_for(lambda: len(player.frames.get("video", [])) >= 1, within=30)
    live = next(iter(node.live_rooms.live.values()))
    await player.pc.close()  # gone without a DELETE
    await wait_for(lambda: not live.audience.playback, within=30)
    await encoder.pc.close()
    await wait_for(lambda: not live.participants and not live.audience.ingest, within=30)


async def test_players_coming_and_going_leave_the_encoder_alone(
    client: TestClient, tenant: Tenant, peers: list[Any], node
):
    encoder = await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    players = [await whep(client, live_token(tenant, f"p{i}"), opened=peers) for i in range(3)]
    await wait_for(lambda: all(len(p.frames.get("video", [])) >= 2 for p in players), within=30)
    for i, player in enumerate(players):
        resp = await client.delete(player.location, headers=bearer(live_token(tenant, f"p{i}")))
        assert resp.status == 200
    await asyncio.sleep(2)
    live = next(iter(node.live_rooms.live.values()))
    assert encoder.pc.connectionState == "connected" and len(live.audience.ingest) == 1
    late = await whep(client, live_token(tenant, "late"), opened=peers)
    await wait_for(lambda: len(late.frames.get("video", [])) >= 3, within=30)
    assert encoder.pc.connectionState == "connected"


async def test_whip_and_whep_calls_share_the_callers_rate_limit(tmp_path, database_url: str):
    from aiohttp.test_utils import TestServer

    from gbmedia.app import create_app
    from gbmedia.node import Node
    from tests.conftest import make_settings

    node = await Node.start(make_settings(tmp_path, database_url, api_rate_limit=0.01, api_rate_burst=3))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            tenant = await create_tenant(client)  # the operator's calls: its own bucket
            headers = {**SDP, **bearer(host_token(tenant))}
            statuses = [(await client.post("/whip/show", data="hello", headers=headers)).status for _ in range(4)]
            assert statuses == [400, 400, 400, 429]  # a burst of three for the API key, then its budget is spent
            resp = await client.post("/whip/show", data="hello", headers=headers)
            assert await error_of(resp) == (429, "rate_limited") and int(resp.headers["Retry-After"]) >= 1
            resp = await client.delete("/whip/show/x", headers=bearer(host_token(tenant)))
            assert await error_of(resp) == (429, "rate_limited")
    finally:
        await node.stop()


# --- sessions that never connect, and sessions per identity (issue 21, part 4) ---------------


def unreachable(sdp: str) -> str:
    """The offer without its ICE candidates: the server's ICE waits for candidates that never come,
    as with a player that posted its offer and went away (aiortc stays ``connecting`` for ever)."""
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


@pytest.fixture
async def impatient(tmp_path, database_url: str) -> AsyncIterator[tuple[TestClient, Any]]:
    """A node whose WHIP/WHEP sessions have 1.5 s to connect, two WHEP sessions per identity."""
    from aiohttp.test_utils import TestServer

    from gbmedia.app import create_app
    from gbmedia.node import Node
    from tests.conftest import make_settings

    node = await Node.start(
        make_settings(tmp_path, database_url, media_connect_timeout_seconds=1.5, max_sessions_per_identity=2)
    )
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            yield client, node
    finally:
        await node.stop()


async def post_unreachable(client: TestClient, path: str, token: str, opened: list[Any], *, publish: bool) -> Any:
    """POST a real aiortc offer whose candidates were taken out; the session never connects."""
    pc = RTCPeerConnection(NO_STUN)
    if publish:
        opened.append(Encoder(pc, "", "", ""))
        h264_only(pc, ColorVideoTrack(BLUE))
    else:
        opened.append(Player(pc, "", "", ""))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
    return await client.post(path, data=unreachable(await offer_from(pc)), headers={**SDP, **bearer(token)})


async def test_a_player_that_never_connects_is_ended_and_frees_its_place(impatient, peers: list[Any]):
    client, node = impatient
    tenant = await create_tenant(client)
    resp = await client.post(
        "/api/v1/rooms", json={"name": "show", "kind": "live", "max_participants": 3}, headers=tenant.admin
    )
    assert resp.status == 201
    encoder = await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    player = await whep(client, live_token(tenant, "player"), opened=peers)
    await wait_for(lambda: len(player.frames.get("video", [])) >= 1, within=30)
    resp = await post_unreachable(client, "/whep/show", live_token(tenant, "zombie"), peers, publish=False)
    assert resp.status == 201
    live = next(iter(node.live_rooms.live.values()))
    zombie = resp.headers["Location"].rsplit("/", 1)[1]
    assert zombie in live.audience.playback and live.audience.occupancy() == 3
    resp = await post_unreachable(client, "/whep/show", live_token(tenant, "late"), peers, publish=False)
    assert await error_of(resp) == (409, "room_full")  # the zombie holds the last place

    await wait_for(lambda: zombie not in live.audience.playback, within=30)
    assert live.audience.occupancy() == 2
    late = await whep(client, live_token(tenant, "late"), opened=peers)  # its place is free again
    # The sessions that did connect are left alone: both players keep decoding the encoder.
    seen = len(player.frames["video"])
    await wait_for(lambda: len(player.frames["video"]) > seen + 5 and len(late.frames.get("video", [])) >= 3, within=30)
    assert encoder.pc.connectionState == "connected" and len(live.audience.ingest) == 1
    assert len(live.audience.players) == 2


async def test_an_encoder_that_never_connects_leaves_and_its_room_closes_when_idle(impatient, peers: list[Any]):
    client, node = impatient
    tenant = await create_tenant(client)
    resp = await client.post(
        "/api/v1/rooms", json={"name": "show", "kind": "live", "empty_timeout": 1}, headers=tenant.admin
    )
    assert resp.status == 201
    room_id = (await resp.json())["id"]
    resp = await post_unreachable(client, "/whip/show", host_token(tenant), peers, publish=True)
    assert resp.status == 201
    live = next(iter(node.live_rooms.live.values()))
    assert node.live_rooms.participant_count(live.room.id) == 1 and len(live.audience.ingest) == 1
    await wait_for(lambda: not live.participants and not live.audience.ingest, within=30)
    assert node.live_rooms.participant_count(live.room.id) == 0
    await node.room_sweeper.stop()  # sweep often from now on: the room closes once its empty timeout passed
    node.room_sweeper.interval = 0.1
    node.room_sweeper.start()
    await wait_for(lambda: live.room.id not in node.live_rooms.live, within=30)
    resp = await client.get(f"/api/v1/rooms/{room_id}", headers=tenant.admin)
    assert (await resp.json())["status"] == "closed"


async def test_one_identity_may_hold_only_so_many_player_sessions(impatient, peers: list[Any]):
    client, node = impatient
    tenant = await create_tenant(client)
    await whip(client, host_token(tenant), ColorVideoTrack(RED), opened=peers)
    fan = live_token(tenant, "fan")
    for _ in range(2):
        assert (await post_unreachable(client, "/whep/show", fan, peers, publish=False)).status == 201
    resp = await post_unreachable(client, "/whep/show", fan, peers, publish=False)
    assert await error_of(resp) == (429, "too_many_sessions")
    assert (await resp.json())["error"]["details"]["limit"] == 2 and resp.headers["Retry-After"] == "2"
    other = await post_unreachable(client, "/whep/show", live_token(tenant, "other"), peers, publish=False)
    assert other.status == 201  # the limit is the identity's, not the room's
    live = next(iter(node.live_rooms.live.values()))
    await wait_for(lambda: not live.audience.players, within=30)  # none connected: all ended
    assert (await post_unreachable(client, "/whep/show", fan, peers, publish=False)).status == 201


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_offer_is_a_400_naming_its_line_and_the_node_serves_on(
    client: TestClient, tenant: Tenant, peers: list[Any], node, case: str
):
    """Each of these was a 500 ``internal_error`` (aiortc's parser asserting) or, without a DTLS
    fingerprint, answered with 201: now 400 ``invalid_sdp`` on WHIP and WHEP, naming the line."""
    malformed = MALFORMED[case]
    pc = RTCPeerConnection(NO_STUN)
    peers.append(Encoder(pc, "", "", ""))
    h264_only(pc, ColorVideoTrack(RED))
    pc.addTransceiver("audio", direction="sendonly")
    player = RTCPeerConnection(NO_STUN)
    peers.append(Player(player, "", "", ""))
    player.addTransceiver("video", direction="recvonly")
    player.addTransceiver("audio", direction="recvonly")
    for path, offer, token in (
        ("/whip/show", await offer_from(pc), host_token(tenant)),
        ("/whep/show", await offer_from(player), live_token(tenant, "viewer")),
    ):
        resp = await client.post(path, data=malformed.change(offer), headers={**SDP, **bearer(token)})
        assert resp.status == 400, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_sdp" and malformed.reason in error["message"] and "line " in error["message"]
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    # Nothing was left behind, and the node serves an encoder and a player as before.
    assert not any(live.participants for live in node.live_rooms.live.values())
    await whip(client, host_token(tenant), ColorVideoTrack(RED), ToneAudioTrack(), opened=peers)
    await whep(client, live_token(tenant, "viewer"), opened=peers)
