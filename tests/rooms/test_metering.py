"""A scripted session metered against the truth (issue 19, part 1).

Two aiortc participants host a live room and publish video, a socket viewer and a
WHEP player watch it, the room is recorded and chat messages are sent; every start and
end is bracketed by the test's own clock. Once the node's meter has written its last
ticks (GBMEDIA_USAGE_FLUSH_SECONDS 0.5), each participant's minutes (receiving,
publishing, viewing, by channel) are within one second of the truth, the recording's
minutes match its duration, the messages and sent bytes are counted, and the REST
usage report shows the same totals.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription

from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.conftest import make_settings
from tests.helpers import OPERATOR, Tenant, bearer, create_tenant
from tests.rtc import ColorVideoTrack, RtcClient, offer_from, wait_for

TOLERANCE = 1.0  # seconds: the bound per participant


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, usage_flush_seconds=0.5)


class Span:
    """When something started and ended, bracketed: the server's instant lies between each pair."""

    def __init__(self) -> None:
        self.start = (0.0, 0.0)
        self.end = (0.0, 0.0)

    def seconds(self) -> float:
        return (self.end[0] + self.end[1]) / 2 - (self.start[0] + self.start[1]) / 2


async def _bracket(span: Span, which: str, action: Any) -> Any:
    before = time.time()
    result = await action
    setattr(span, which, (before, time.time()))
    return result


async def _join(client: TestClient, tenant: Tenant, identity: str, grants: Grants, span: Span) -> RtcClient:
    participant = RtcClient(await client.ws_connect("/rtc"))
    joined = await _bracket(span, "start", participant.join(mint_token(tenant.key, tenant.secret, identity, grants)))
    assert joined["type"] == "joined", joined
    return participant


async def _metered(node: Node, customer_id: str) -> dict[tuple[str, str | None, str | None], float]:
    rows = await node.db.pool.fetch(
        """SELECT kind, subject, channel, sum(quantity)::float8 AS q, count(*) AS n,
                  count(DISTINCT idempotency_key) AS keys
             FROM usage_events WHERE customer_id = $1 GROUP BY 1, 2, 3""",
        uuid.UUID(customer_id),
    )
    assert all(r["n"] == r["keys"] for r in rows)
    return {(r["kind"], r["subject"], r["channel"]): r["q"] for r in rows}


async def test_a_scripted_session_meters_each_participant_within_a_second(client: TestClient, node: Node):
    tenant = await create_tenant(client, "metered", "starter")
    resp = await client.post("/api/v1/rooms", json={"name": "show", "kind": "live"}, headers=tenant.admin)
    assert resp.status == 201, await resp.text()
    room = await resp.json()
    spans = {name: Span() for name in ("alice", "bob", "carol", "fan", "alice_pub", "bob_pub")}
    host = Grants.participant("show")
    viewer = Grants(room="show", room_join=True, can_subscribe=True)
    player = RTCPeerConnection()
    people: list[RtcClient] = []
    try:
        alice = await _join(client, tenant, "alice", host, spans["alice"])
        bob = await _join(client, tenant, "bob", host, spans["bob"])
        people += [alice, bob]
        for who, name in ((alice, "alice_pub"), (bob, "bob_pub")):
            reply = await _bracket(spans[name], "start", who.publish(ColorVideoTrack((200, 0, 0))))
            assert reply["type"] == "publish_answer", reply
        resp = await client.post(f"/api/v1/rooms/{room['id']}/recordings", json={}, headers=tenant.admin)
        assert resp.status == 201, await resp.text()
        recording = await resp.json()
        carol = await _join(client, tenant, "carol", viewer, spans["carol"])
        people.append(carol)
        player.addTransceiver("video", direction="recvonly")
        offer = await offer_from(player)
        fan = bearer(mint_token(tenant.key, tenant.secret, "fan", viewer))
        resp = await _bracket(
            spans["fan"],
            "start",
            client.post("/whep/show", data=offer.encode(), headers={**fan, "Content-Type": "application/sdp"}),
        )
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        await player.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
        resp = await client.post(
            "/api/v1/conversations",
            json={"kind": "group", "members": ["bob"], "title": "backstage"},
            headers=bearer(mint_token(tenant.key, tenant.secret, "alice", Grants())),
        )
        conversation = (await resp.json())["id"]
        for n in range(3):
            resp = await client.post(
                f"/api/v1/conversations/{conversation}/messages",
                json={"content": f"cue {n}", "idempotency_key": f"cue-{n}"},
                headers=bearer(mint_token(tenant.key, tenant.secret, "alice", Grants())),
            )
            assert resp.status == 201, await resp.text()
        # The measured time: until both hosts' video has reached the socket viewer for a while.
        await wait_for(lambda: sum(len(f) for f in carol.frames.values()) >= 60, within=60)
        resp = await client.post(f"/api/v1/recordings/{recording['id']}/stop", headers=tenant.admin)
        stopped = await resp.json()
        assert stopped["status"] == "completed", stopped
        resp = await _bracket(spans["fan"], "end", client.delete(location, headers=fan))
        assert resp.status == 200, await resp.text()
        for who, name in ((carol, "carol"), (bob, "bob"), (alice, "alice")):
            left = await _bracket(spans[name], "end", who.request({"type": "leave"}))
            assert left["type"] == "left", left
        spans["alice_pub"].end, spans["bob_pub"].end = spans["alice"].end, spans["bob"].end
    finally:
        for who in people:
            await who.close()
        await player.close()

    await wait_for(lambda: not node.meter.sessions, within=20)  # every closed session's last tick written
    await node.meter.flush()  # the counters of the last tick
    metered = await _metered(node, tenant.customer_id)
    truth = {
        ("subscribe_minutes", "alice", None): spans["alice"].seconds(),
        ("subscribe_minutes", "bob", None): spans["bob"].seconds(),
        ("publish_minutes", "alice", None): spans["alice_pub"].seconds(),
        ("publish_minutes", "bob", None): spans["bob_pub"].seconds(),
        ("viewer_minutes", "carol", "webrtc"): spans["carol"].seconds(),
        ("viewer_minutes", "fan", "whep"): spans["fan"].seconds(),
    }
    for key, seconds in truth.items():
        assert abs(metered[key] * 60 - seconds) <= TOLERANCE, (key, metered[key] * 60, seconds)
    assert abs(metered[("recording_minutes", recording["id"], None)] * 60 - stopped["duration_seconds"]) < 0.01
    assert metered[("messages", None, None)] == 3
    assert metered[("bytes_out", None, None)] > 10_000
    minute_kinds = {k: v for k, v in metered.items() if k[0] not in ("messages", "bytes_out")}
    assert set(minute_kinds) == set(truth) | {("recording_minutes", recording["id"], None)}

    resp = await client.get(
        f"/api/v1/customers/{tenant.customer_id}/usage", params={"granularity": "period"}, headers=OPERATOR
    )
    (bucket,) = (await resp.json())["buckets"]
    totals = bucket["totals"]
    assert totals["messages"] == 3 and totals["bytes_out"] == metered[("bytes_out", None, None)]
    assert totals["viewer_minutes"] == pytest.approx(sum(v for k, v in metered.items() if k[0] == "viewer_minutes"))
    assert bucket["instances"][tenant.instance_id]["publish_minutes"] == pytest.approx(
        metered[("publish_minutes", "alice", None)] + metered[("publish_minutes", "bob", None)]
    )
