"""Live rooms on the signaling socket: hosts are announced, viewers are counted.

Viewers never hear of each other one by one (a viewer count instead), reactions
reach everyone in batches and are rate-limited per participant, and a host can
bring a viewer on stage as a co-host.
"""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from gbmedia.rooms import audience
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant
from tests.rtc import ColorVideoTrack, RtcClient, wait_for

RED = (220, 30, 30)


def host(tenant: Tenant, identity: str = "host", room: str = "show") -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants.participant(room), name=identity.title())


def viewer(tenant: Tenant, identity: str, room: str = "show", **extra: bool) -> str:
    grants = Grants(room=room, room_join=True, can_subscribe=True, **extra)
    return mint_token(tenant.key, tenant.secret, identity, grants, name=identity.title())


def types(client: RtcClient) -> list[str]:
    return [e["type"] for e in client.events]


async def test_viewers_are_counted_and_never_announced(rtc, tenant: Tenant):
    star = await rtc()
    joined = await star.join(host(tenant), kind="live")
    assert joined["room"]["kind"] == "live" and joined["viewer_count"] == 0
    ann, bob = await rtc(), await rtc()
    ann_joined = await ann.join(viewer(tenant, "ann"), auto_subscribe=False)
    assert [p["identity"] for p in ann_joined["participants"]] == ["host"]  # hosts only
    bob_joined = await bob.join(viewer(tenant, "bob"), auto_subscribe=False)
    assert [p["identity"] for p in bob_joined["participants"]] == ["host"]  # not ann
    for watcher in (star, ann, bob):
        await watcher.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 2)
    await bob.request({"type": "leave"})
    await ann.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
    await star.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
    # Nobody heard of a viewer joining or leaving.
    for watcher in (star, ann):
        assert "participant_joined" not in types(watcher) and "participant_left" not in types(watcher)
    # Viewers do hear of hosts: a second host joins and publishes.
    guest = await rtc()
    await guest.join(host(tenant, "guest"))
    event = await ann.wait_event(lambda e: e["type"] == "participant_joined")
    assert event["participant"]["identity"] == "guest"
    track = (await guest.publish(ColorVideoTrack(RED)))["tracks"][0]
    published = await ann.wait_event(lambda e: e["type"] == "track_published")
    assert published["track"]["id"] == track["id"]
    assert (await star.wait_event(lambda e: e["type"] == "participant_joined"))["participant"]["identity"] == "guest"


async def test_viewer_count_is_throttled_not_sent_per_join(rtc, tenant: Tenant, node):
    loop = asyncio.get_running_loop()
    star = await rtc()
    started = loop.time()
    await star.join(host(tenant), kind="live")
    crowd = [await rtc() for _ in range(6)]
    await asyncio.gather(*(c.join(viewer(tenant, f"v{i}"), auto_subscribe=False) for i, c in enumerate(crowd)))
    await star.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 6)
    elapsed = loop.time() - started
    counts = [e["count"] for e in star.events if e["type"] == "viewer_count"]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # only changes are sent
    # At most one message per interval (plus the first), however many arrived meanwhile.
    assert len(counts) <= elapsed / audience.VIEWER_COUNT_INTERVAL + 2
    live = next(iter(node.live_rooms.live.values()))
    assert live.audience.viewer_count() == 6 and len(live.participants) == 7


async def test_hearts_reach_everyone_in_batches_and_are_rate_limited(rtc, tenant: Tenant):
    star, ann, bob = await rtc(), await rtc(), await rtc()
    await star.join(host(tenant), kind="live")
    await ann.join(viewer(tenant, "ann"), auto_subscribe=False)
    await bob.join(viewer(tenant, "bob"), auto_subscribe=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(
        *(ann.request({"type": "reaction", "kind": "heart"}) for _ in range(audience.REACTION_BURST + 3))
    )
    accepted = [r for r in replies if r["type"] == "ack"]
    refused = [r for r in replies if r["type"] == "error"]
    assert len(accepted) >= audience.REACTION_BURST and refused
    assert refused[0]["code"] == "reaction_rate_limited" and refused[0]["details"]["retry_after"] > 0
    await bob.request({"type": "reaction", "kind": "fire"})

    def hearts(client: RtcClient) -> int:
        return sum(e["count"] for e in client.events if e["type"] == "reaction" and e["kind"] == "heart")

    for watcher in (star, ann, bob):  # the sender sees its own hearts float too
        await wait_for(lambda w=watcher: hearts(w) == len(accepted))
        await watcher.wait_event(lambda e: e["type"] == "reaction" and e["kind"] == "fire" and e["count"] == 1)
        batches = [e for e in watcher.events if e["type"] == "reaction" and e["kind"] == "heart"]
        assert len(batches) <= (loop.time() - started) / audience.REACTION_INTERVAL + 1  # one per interval
    bad = await bob.request({"type": "reaction", "kind": "rocket"})
    assert (bad["type"], bad["code"]) == ("error", "invalid_message")


async def test_live_messages_need_a_live_room(rtc, tenant: Tenant):
    alice = await rtc()
    await alice.join(host(tenant, "alice", "standup"))  # a meeting
    error = await alice.request({"type": "reaction"})
    assert (error["type"], error["code"]) == ("error", "not_a_live_room")
    error = await alice.request({"type": "cohost_invite", "participant_id": "x"})
    assert error["code"] == "not_a_live_room"


async def test_a_viewer_invited_on_stage_becomes_a_co_host(rtc, tenant: Tenant):
    star, ann, bob = await rtc(), await rtc(), await rtc()
    await star.join(host(tenant), kind="live")
    ann_id = (await ann.join(viewer(tenant, "ann"), auto_subscribe=False))["participant"]["id"]
    await bob.join(viewer(tenant, "bob"), auto_subscribe=False)
    await star.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 2)

    # Only hosts and admins invite; only known viewers can be invited; an answer needs an invite.
    assert (await bob.request({"type": "cohost_invite", "participant_id": ann_id}))["code"] == "cohost_not_allowed"
    assert (await star.request({"type": "cohost_invite", "participant_id": "PA_nobody"}))[
        "code"
    ] == "participant_not_found"
    assert (await star.request({"type": "cohost_invite", "participant_id": "host"}))["code"] == "already_host"
    assert (await ann.request({"type": "cohost_answer", "accept": True}))["code"] == "no_invite"
    refused = await ann.publish(ColorVideoTrack(RED))
    assert refused["code"] == "grant_missing"  # a viewer may not publish before the invite

    # Declined: the host hears it, nothing changes.
    assert (await star.request({"type": "cohost_invite", "participant_id": "bob"}))["type"] == "ack"
    await bob.wait_event(lambda e: e["type"] == "cohost_invite")
    assert (await bob.request({"type": "cohost_answer", "accept": False}))["type"] == "ack"
    answer = await star.wait_event(lambda e: e["type"] == "cohost_answer")
    assert (answer["identity"], answer["accepted"]) == ("bob", False)

    assert (await star.request({"type": "cohost_invite", "participant_id": ann_id}))["type"] == "ack"
    invite = await ann.wait_event(lambda e: e["type"] == "cohost_invite")
    assert invite["from"]["identity"] == "host"
    started = await ann.request({"type": "cohost_answer", "accept": True})
    assert started["type"] == "cohost_started" and started["grants"]["can_publish"] is True
    answer = await star.wait_event(lambda e: e["type"] == "cohost_answer" and e["accepted"])
    assert answer["participant_id"] == ann_id
    # Everyone now sees ann as a host, and the count drops.
    for watcher in (star, bob):
        joined = await watcher.wait_event(lambda e: e["type"] == "participant_joined")
        assert joined["participant"]["id"] == ann_id
    await bob.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
    # The co-host publishes and a viewer sees the track; when it leaves, everyone hears it.
    reply = await ann.publish(ColorVideoTrack(RED))
    assert reply["type"] == "publish_answer"
    await bob.wait_event(lambda e: e["type"] == "track_published" and e["participant_id"] == ann_id)
    later = await rtc()
    assert sorted(
        p["identity"] for p in (await later.join(viewer(tenant, "carl"), auto_subscribe=False))["participants"]
    ) == ["ann", "host"]
    await ann.request({"type": "leave"})
    await bob.wait_event(lambda e: e["type"] == "participant_left" and e["participant_id"] == ann_id)


async def test_an_admin_viewer_may_invite(rtc, tenant: Tenant):
    star, mod, ann = await rtc(), await rtc(), await rtc()
    await star.join(host(tenant), kind="live")
    await mod.join(viewer(tenant, "mod", room_admin=True), auto_subscribe=False)
    await ann.join(viewer(tenant, "ann"), auto_subscribe=False)
    assert (await mod.request({"type": "cohost_invite", "participant_id": "ann"}))["type"] == "ack"
    await ann.wait_event(lambda e: e["type"] == "cohost_invite" and e["from"]["identity"] == "mod")
    await mod.request({"type": "leave"})  # the inviter leaves: the invite goes with it
    await star.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
    assert (await ann.request({"type": "cohost_answer", "accept": True}))["code"] == "no_invite"


async def test_a_full_live_room_counts_players_and_viewers(rtc, tenant: Tenant, client: TestClient):
    resp = await client.post(
        "/api/v1/rooms", json={"name": "tiny", "kind": "live", "max_participants": 2}, headers=tenant.admin
    )
    assert resp.status == 201
    star, ann, bob = await rtc(), await rtc(), await rtc()
    await star.join(host(tenant, room="tiny"))
    assert (await ann.join(viewer(tenant, "ann", room="tiny"), auto_subscribe=False))["type"] == "joined"
    error = await bob.join(viewer(tenant, "bob", room="tiny"), auto_subscribe=False)
    assert error["code"] == "room_full"


async def test_hidden_participants_are_neither_hosts_nor_viewers(rtc, tenant: Tenant, node, client: TestClient):
    star, recorder, ann = await rtc(), await rtc(), await rtc()
    await star.join(host(tenant), kind="live")
    hidden = mint_token(
        tenant.key,
        tenant.secret,
        "recorder",
        Grants(room="show", room_join=True, can_subscribe=True, can_publish=True, hidden=True),
    )
    await recorder.join(hidden, auto_subscribe=False)
    joined = await ann.join(viewer(tenant, "ann"), auto_subscribe=False)
    assert [p["identity"] for p in joined["participants"]] == ["host"] and joined["viewer_count"] == 1
    await star.wait_event(lambda e: e["type"] == "viewer_count" and e["count"] == 1)
    assert "participant_joined" not in types(star)
    live = next(iter(node.live_rooms.live.values()))
    assert live.audience.viewer_count() == 1 and len(live.participants) == 3
    text = await (await client.get("/metrics")).text()
    assert "gbmedia_live_viewers 1.0" in text
