"""A live room's membership with real aiortc clients: what a leave closes, whatever the others' state."""

from __future__ import annotations

import asyncio

from gbmedia.rooms.live import LiveRoom
from gbmedia.rooms.participant import Participant
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import Tenant
from tests.rtc import ColorVideoTrack, RtcClient, receiver_threads, wait_for

RED = (220, 30, 30)
GREEN = (30, 200, 30)


def token(tenant: Tenant, identity: str) -> str:
    return mint_token(tenant.key, tenant.secret, identity, Grants.participant("standup"), name=identity.title())


async def two_publishers(rtc, tenant: Tenant, node) -> tuple[LiveRoom, list[RtcClient], Participant, Participant]:  # type: ignore[no-untyped-def]
    """Alice and bob in one room, each publishing video and receiving the other's."""
    alice, bob = await rtc(), await rtc()
    await alice.join(token(tenant, "alice"))
    alice_track = (await alice.publish(ColorVideoTrack(RED)))["tracks"][0]["id"]
    await bob.join(token(tenant, "bob"))
    bob_track = (await bob.publish(ColorVideoTrack(GREEN)))["tracks"][0]["id"]
    await wait_for(lambda: len(bob.decoded(alice_track)) >= 1 and len(alice.decoded(bob_track)) >= 1, within=20)
    live = next(iter(node.live_rooms.live.values()))
    by_identity = {p.identity: p for p in live.participants.values()}
    return live, [alice, bob], by_identity["alice"], by_identity["bob"]


async def test_a_leave_closes_its_connections_even_when_telling_another_fails(rtc, tenant: Tenant, node):
    """Alice's leave renegotiates bob (her track ends for him); bob's subscriber is closed already (he is
    leaving too). Alice's own connections must close anyway, or their receive threads live on."""
    live, _, alice, bob = await two_publishers(rtc, tenant, node)
    assert bob.subscriber is not None and alice.publisher is not None and alice.subscriber is not None
    await bob.subscriber.pc.close()
    await live.leave(alice)
    assert alice.id not in live.participants
    assert (alice.publisher.pc.connectionState, alice.subscriber.pc.connectionState) == ("closed", "closed")
    assert bob.id in live.participants  # bob is still a member until his own leave


async def test_participants_leaving_at_once_close_every_connection(rtc, tenant: Tenant, node):
    before = receiver_threads()
    live, clients, alice, bob = await two_publishers(rtc, tenant, node)
    peers = [peer for p in (alice, bob) for peer in (p.publisher, p.subscriber) if peer is not None]
    assert len(peers) == 4 and receiver_threads() - before  # the server's receivers and the clients' decode
    await asyncio.gather(live.leave(alice), live.leave(bob))
    assert live.participants == {}
    assert [peer.pc.connectionState for peer in peers] == ["closed"] * 4
    for client in clients:
        await client.close()
    await wait_for(lambda: not receiver_threads() - before, within=5)  # every receiver's thread stopped


async def test_a_publish_stands_when_another_cannot_be_subscribed(rtc, tenant: Tenant, node):
    """Bob's subscriber connection is closing when alice publishes one more track: her publish is answered
    and the room goes on (bob cannot be offered it; his own leave or resume settles him)."""
    live, clients, alice, bob = await two_publishers(rtc, tenant, node)
    assert bob.subscriber is not None
    await bob.subscriber.pc.close()
    reply = await clients[0].publish(ColorVideoTrack(GREEN))  # her second track
    assert reply["type"] == "publish_answer" and len(reply["tracks"]) == 2
    assert {t.id for t in alice.published} == {t["id"] for t in reply["tracks"]}
    assert set(live.participants) == {alice.id, bob.id}


async def test_a_room_closing_without_its_database_still_closes_every_connection(rtc, tenant: Tenant, node):
    """Each leave marks the room active in PostgreSQL; with the pool gone every leave fails there, after
    its connections closed, and the room's other participants still leave."""
    live, _, alice, bob = await two_publishers(rtc, tenant, node)
    peers = [peer for p in (alice, bob) for peer in (p.publisher, p.subscriber) if peer is not None]
    await node.db.pool.close()
    await live.close("node_shutdown")
    assert live.participants == {}
    assert [peer.pc.connectionState for peer in peers] == ["closed"] * 4
