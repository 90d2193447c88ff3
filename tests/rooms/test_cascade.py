"""Seats of a cascading live room, on a real node with real Redis (gbmedia/rooms/cascade.py).

The node is the room's origin; the other nodes of its cluster are registered in the
registry as other node processes would register themselves (they serve nothing here:
only the seat arithmetic in Redis is under test). The cluster tests
(tests/test_cascade.py) show the same seats taken by real viewers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gbmedia.config import Settings
from gbmedia.node import Node
from gbmedia.rooms.cascade import EDGES_KEY, SEATS_KEY, VIEWERS_KEY, FeedProgram, program_key
from gbmedia.rooms.placement import edge_candidates
from gbmedia.rooms.program import NO_PROGRAM
from gbmedia.rooms.registry import NodeInfo, NodeLoad, RedisRegistry
from gbmedia.rooms.store import Room
from gbmedia.sfu.peers import TrackInfo
from gbmedia.tenancy.models import Actor
from tests.cluster import cluster_redis_url
from tests.conftest import make_settings
from tests.helpers import Tenant


def info(node_id: str, *, address: str = "10.0.0.1", region: str = "eu-west", cost: float = 0.0) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        region=region,
        url=f"http://{node_id}",
        internal_url=f"http://{node_id}:9000",
        media_address=address,
        udp_ports="50000-50100",
        capacity=100.0,
        max_cpu=1.0,
        load=NodeLoad(cost=cost),
    )


def test_new_edges_are_another_worker_of_the_machine_first_then_the_nearest_least_loaded():
    origin = info("origin")
    nodes = [
        origin,
        info("far", address="10.0.9.9", region="us-east"),
        info("busy-sibling", cost=60.0),
        info("sibling", cost=10.0),
        info("neighbour", address="10.0.0.2", region="eu-central"),
        info("same-region", address="10.0.0.3"),
        replace(info("draining"), draining=True),
        info("full", cost=100.0),
        replace(info("starting"), internal_url=""),
    ]
    ranked = [n.node_id for n in edge_candidates(nodes, origin)]
    assert ranked == ["sibling", "busy-sibling", "same-region", "neighbour", "far"]
    # The viewer's region counts before load among other machines.
    assert [n.node_id for n in edge_candidates(nodes, origin, region="us-east")][2] == "far"


def test_a_feeds_program_travels_as_json():
    program = FeedProgram("TR_v/TR_a", "star", "Star", {"video": TrackInfo("camera", "cam")})
    assert FeedProgram.from_json(program.to_json()) == program
    assert program_key(NO_PROGRAM) == ""


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        redis_url=cluster_redis_url(redis_url),
        node_id="origin",
        cluster_secret="test-cluster-secret-0123",
        cascade_viewers=3,
        cascade_fanout=1,
        node_ttl_seconds=30.0,
        node_max_cpu=1.0,  # this process's CPU is the whole test run's: seats by cost only
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(str(settings.redis_url))
    await client.flushdb()  # the cluster tests' database: nothing else uses it
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def node(settings: Settings, store: aioredis.Redis) -> AsyncIterator[Node]:
    """The room's origin: a node of the cluster (Redis flushed before it registers)."""
    started = await Node.start(settings)
    yield started
    await started.stop()


@pytest.fixture
async def others(store: aioredis.Redis, node: Node) -> dict[str, RedisRegistry]:
    """Three more nodes of the cluster, registered as their processes would register themselves."""
    me = node.registry.me
    registries = {
        "sibling": RedisRegistry(store, replace(info("sibling"), media_address=me.media_address), ttl=30.0),
        "remote": RedisRegistry(store, info("remote", address="10.9.9.9", region=me.region), ttl=30.0),
        "faraway": RedisRegistry(store, info("faraway", address="10.8.8.8", region="ap-south"), ttl=30.0),
    }
    for registry in registries.values():
        await registry.publish(NodeLoad())
    return registries


async def live_room(node: Node, tenant: Tenant) -> Room:
    return await node.rooms.create(Actor("test", "api_key"), uuid.UUID(tenant.instance_id), "show", kind="live")


async def test_seats_fill_the_origin_then_edges_in_turn_and_concurrent_routers_never_overfill(
    node: Node, tenant: Tenant, store: aioredis.Redis, others: dict[str, RedisRegistry]
):
    room = await live_room(node, tenant)
    origin = node.registry.me
    # Twelve viewers routed at once, as twelve nodes might: three seats each, never a fourth.
    seats = await asyncio.gather(*(node.cascade.seat_viewer(room, origin) for _ in range(12)))
    served: dict[str, int] = {}
    for seat in seats:
        assert seat.seat is not None
        served[seat.node.node_id] = served.get(seat.node.node_id, 0) + 1
        assert seat.edge == (seat.node.node_id != "origin")
    assert served == {"origin": 3, "sibling": 3, "remote": 3, "faraway": 3}
    # The origin feeds one edge (the fanout); after it, edges feed edges.
    tree = {k.decode(): v.decode() for k, v in (await store.hgetall(EDGES_KEY + str(room.id))).items()}
    assert tree == {"sibling": "origin", "remote": "sibling", "faraway": "remote"}
    # Nobody left to cascade to: the origin serves past its limit rather than refuse.
    extra = await node.cascade.seat_viewer(room, origin)
    assert extra.node.node_id == "origin" and extra.seat is None


async def test_a_joined_seat_counts_what_the_node_serves_and_an_edge_leaves_only_when_nobody_is_on_the_way(
    node: Node, tenant: Tenant, store: aioredis.Redis, others: dict[str, RedisRegistry]
):
    room = await live_room(node, tenant)
    origin = node.registry.me
    mine = [await node.cascade.seat_viewer(room, origin) for _ in range(3)]
    assert {s.node.node_id for s in mine} == {"origin"}
    seats_key, viewers_key = SEATS_KEY + str(room.id), VIEWERS_KEY + str(room.id)
    assert await store.zcard(seats_key) == 3
    await node.cascade.seated(room.id, mine[0].seat or "")
    assert await store.zcard(seats_key) == 2
    # What the node really serves counts, not the seat: nobody is in the room here, so a seat is free again.
    assert await store.hget(viewers_key, "origin") == b"0"
    assert (await node.cascade.seat_viewer(room, origin)).node.node_id == "origin"

    edge_seat = await node.cascade.seat_viewer(room, origin)
    assert edge_seat.node.node_id == "sibling"
    edges_key = EDGES_KEY + str(room.id)
    await store.hset(edges_key, "remote", "sibling")  # an edge the sibling feeds, not pulling yet
    keys = [edges_key, viewers_key, seats_key]
    leave = node.cascade._leave
    # A viewer is on its way to the sibling: it stays an edge.
    assert await leave(keys=keys, args=["sibling", 0, "0"]) == 0
    assert (await store.hgetall(edges_key))[b"sibling"] == b"origin"
    # Forced (its copy ended), it leaves, and the edge it fed pulls from the origin instead.
    assert await leave(keys=keys, args=["sibling", 0, "1"]) == 1
    assert await store.hgetall(edges_key) == {b"remote": b"origin"}


async def test_a_dead_edge_leaves_the_tree_when_the_next_viewer_is_seated(
    node: Node, tenant: Tenant, store: aioredis.Redis, others: dict[str, RedisRegistry]
):
    room = await live_room(node, tenant)
    origin = node.registry.me
    for _ in range(4):
        await node.cascade.seat_viewer(room, origin)
    assert await store.hgetall(EDGES_KEY + str(room.id)) == {b"sibling": b"origin"}
    await others["sibling"].withdraw()  # its process is gone
    seat = await node.cascade.seat_viewer(room, origin)
    assert seat.node.node_id == "remote"  # a new edge: the sibling's seats are gone with it
    assert await store.hgetall(EDGES_KEY + str(room.id)) == {b"remote": b"origin"}
