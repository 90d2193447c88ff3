"""Placement: the cost model, the choice of node, and the atomic claim in real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gbmedia.errors import ApiError
from gbmedia.rooms.placement import (
    LOCAL_PREFERENCE,
    NEW_ROOM_COST,
    LocalPlacement,
    RedisPlacement,
    choose_node,
    live_cost,
    meeting_cost,
    region_distance,
    room_cost,
)
from gbmedia.rooms.registry import LocalRegistry, NodeInfo, NodeLoad, RedisRegistry
from gbmedia.rooms.store import Rooms
from gbmedia.tenancy.service import Tenancy
from tests.rooms.test_store import ACTOR, make_instance

PLACEMENT_REDIS_DB = 12


def node(node_id: str, region: str = "eu-west", cost: float = 0.0, **extra: object) -> NodeInfo:
    values: dict = {
        "node_id": node_id,
        "region": region,
        "url": f"http://{node_id}",
        "internal_url": f"http://{node_id}:7881",
        "media_address": "198.51.100.1",
        "udp_ports": "50000-50100",
        "capacity": 1000.0,
        "max_cpu": 0.85,
        "load": NodeLoad(cost=cost),
    }
    values.update(extra)
    return NodeInfo(**values)


def test_a_meeting_costs_the_square_of_its_size_and_a_live_room_its_audience():
    assert meeting_cost(2) == 2 * 2 * 1 + 4
    assert meeting_cost(10) / meeting_cost(5) > 3.5  # quadratic, not linear
    assert live_cost(1000) / live_cost(500) < 2.01  # linear
    assert room_cost(published_tracks=4, subscriptions=12) == 16


def test_the_least_loaded_node_of_the_closest_region_with_room_to_spare_wins():
    nodes = [node("a", cost=500), node("b", cost=100), node("c", "us-east", cost=0)]
    assert choose_node(nodes, region="eu-west", kind="meeting").node_id == "b"
    # A full node is skipped; a full region falls back to the same area, then anywhere.
    full = [node("a", cost=999), node("b", "eu-central", cost=900), node("c", "us-east", cost=0)]
    assert choose_node(full, region="eu-west", kind="meeting").node_id == "b"
    assert choose_node([node("a", cost=999), node("c", "us-east")], region="eu-west", kind="live").node_id == "c"
    assert region_distance("eu-west", "eu-west") == 0 and region_distance("eu-west", "eu-north") == 1
    assert region_distance("eu-west", "ap-south") == 2


def test_a_full_draining_busy_or_unreachable_node_takes_no_new_room():
    assert choose_node([node("a", cost=1000 - NEW_ROOM_COST["meeting"] + 1)], region="eu-west", kind="meeting") is None
    assert choose_node([node("a", draining=True)], region="eu-west", kind="meeting") is None
    assert choose_node([node("a", load=NodeLoad(cpu=0.9))], region="eu-west", kind="meeting") is None
    # max_cpu 1 turns the CPU limit off (shared test machines), cost still counts.
    assert choose_node([node("a", max_cpu=1.0, load=NodeLoad(cpu=3.0))], region="eu-west", kind="meeting")
    # A node without its cluster listener yet only keeps rooms it places itself.
    starting = node("a", internal_url="")
    assert choose_node([starting], region="eu-west", kind="meeting") is None
    assert choose_node([starting], region="eu-west", kind="meeting", prefer="a") is starting


def test_the_asking_node_keeps_a_room_when_it_is_nearly_as_free_as_the_best():
    nodes = [node("a", cost=50), node("b", cost=0)]
    assert choose_node(nodes, region="eu-west", kind="meeting", prefer="a").node_id == "a"
    nodes = [node("a", cost=400), node("b", cost=0)]
    assert choose_node(nodes, region="eu-west", kind="meeting", prefer="a").node_id == "b"


def test_load_share_is_the_larger_of_cost_and_cpu():
    assert node("a", cost=500).load_share == 0.5
    assert node("a", cost=100, load=NodeLoad(cost=100, cpu=0.85)).load_share == pytest.approx(1.0)
    restored = NodeInfo.from_json(__import__("json").dumps(node("a", cost=5).to_json()))
    assert restored == node(
        "a", cost=5, incarnation=restored.incarnation, pid=restored.pid, started_at=restored.started_at
    )


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    base = redis_url.rpartition("/")[0]
    client = aioredis.from_url(f"{base}/{PLACEMENT_REDIS_DB}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def registered(client: aioredis.Redis, info: NodeInfo) -> RedisRegistry:
    registry = RedisRegistry(client, info, ttl=3.0)
    await registry.publish(info.load)
    return registry


async def test_two_nodes_placing_one_room_at_once_agree_on_one_owner(
    redis_client: aioredis.Redis,
    rooms: Rooms,
    tenancy: Tenancy,
    pool: asyncpg.Pool,
):
    instance = await make_instance(tenancy, "pro")
    first = RedisPlacement(redis_client, await registered(redis_client, node("n1")), rooms)
    second = RedisPlacement(redis_client, await registered(redis_client, node("n2")), rooms)
    for attempt in range(10):
        room = await rooms.create(ACTOR, instance.id, f"race-{attempt}")
        # Each prefers itself (equal load): without the claim, each would keep the room.
        owners = await asyncio.gather(*(p.owner(room) for p in (first, second, first, second)))
        assert len({o.node_id for o in owners}) == 1, owners
        assert await pool.fetchval("SELECT node_id FROM rooms WHERE id = $1", room.id) == owners[0].node_id


async def test_a_room_whose_node_died_is_placed_again_and_a_full_cluster_refuses(
    redis_client: aioredis.Redis,
    rooms: Rooms,
    tenancy: Tenancy,
):
    instance = await make_instance(tenancy, "pro")
    dead_registry = await registered(redis_client, node("dead"))
    dead = RedisPlacement(redis_client, dead_registry, rooms)
    room = await rooms.create(ACTOR, instance.id, "stranded")
    assert (await dead.owner(room)).node_id == "dead"
    await dead_registry.withdraw()  # as if its entry expired
    alive = RedisPlacement(redis_client, await registered(redis_client, node("alive")), rooms)
    assert (await alive.owner(room)).node_id == "alive"
    assert await alive.owners([room.id]) == ["alive"]
    # The old owner's fence now sees another owner; releasing is only for the owner.
    assert await dead.owners([room.id]) == ["alive"]
    await dead.release(room.id)
    assert await alive.owners([room.id]) == ["alive"]
    await alive.release(room.id)
    assert await alive.owners([room.id]) == [None]

    full = RedisPlacement(redis_client, await registered(redis_client, node("alive", cost=1000)), rooms)
    other = await rooms.create(ACTOR, instance.id, "nowhere")
    with pytest.raises(ApiError) as refused:
        await full.owner(other)
    assert refused.value.status == 503 and refused.value.code == "cluster_full"


async def test_adoption_moves_rooms_off_dead_nodes_only(
    redis_client: aioredis.Redis,
    rooms: Rooms,
    tenancy: Tenancy,
    pool: asyncpg.Pool,
):
    instance = await make_instance(tenancy, "pro")
    alive = RedisPlacement(redis_client, await registered(redis_client, node("node-a")), rooms)
    mine = await rooms.create(ACTOR, instance.id, "mine")  # rooms fixture: node_id node-a
    stranded = await rooms.create(ACTOR, instance.id, "stranded")
    await pool.execute("UPDATE rooms SET node_id = 'gone' WHERE id = $1", stranded.id)
    adopted = await alive.adopt_orphans()
    assert [(r.id, owner) for r, owner in adopted] == [(stranded.id, "node-a")]
    assert await pool.fetchval("SELECT node_id FROM rooms WHERE id = $1", stranded.id) == "node-a"
    assert await pool.fetchval("SELECT node_id FROM rooms WHERE id = $1", mine.id) == "node-a"
    assert await alive.adopt_orphans() == []


async def test_the_registry_lists_live_nodes_forgets_dead_ones_and_passes_drain_requests(
    redis_client: aioredis.Redis,
):
    a = await registered(redis_client, node("a"))
    b = await registered(redis_client, node("b", cost=7))
    assert [n.node_id for n in await a.live_nodes()] == ["a", "b"]
    assert (await a.get("b")).load.cost == 7
    # Forgetting checks the incarnation: a restarted node under the same id is kept.
    restarted = node("b")
    assert not await a.forget(restarted)
    assert await a.forget(b.me)
    assert [n.node_id for n in await a.live_nodes()] == ["a"]
    assert not await b.drain_requested()
    await a.request_drain("b")
    assert await b.drain_requested()
    await b.clear_drain()
    assert not await b.drain_requested()


async def test_a_single_node_places_everything_on_itself():
    me = node("solo")
    registry = LocalRegistry(me)
    placement = LocalPlacement(registry)
    assert placement.node_id == "solo"
    assert await registry.live_nodes() == [me] and await registry.get("solo") == me
    assert await registry.get("other") is None and not await registry.forget(me)
    assert await placement.owners([]) == [] and await placement.adopt_orphans() == []
    await registry.request_drain("solo")
    assert await registry.drain_requested()


async def test_rooms_placed_in_one_burst_spread_before_any_heartbeat_counts_them(
    redis_client: aioredis.Redis, rooms: Rooms, tenancy: Tenancy
):
    instance = await make_instance(tenancy, "pro")
    first = RedisPlacement(redis_client, await registered(redis_client, node("n1")), rooms)
    await registered(redis_client, node("n2"))
    owners = []
    for attempt in range(12):  # all through n1, faster than any heartbeat
        room = await rooms.create(ACTOR, instance.id, f"burst-{attempt}")
        owners.append((await first.owner(room)).node_id)
    # n1 keeps rooms while it is within LOCAL_PREFERENCE of the freest node, then they go to n2.
    cost = NEW_ROOM_COST["meeting"]
    assert owners[:4] == ["n1"] * 4 and owners.count("n2") >= 4, owners
    loads = {n.node_id: n.load.cost for n in await first.registry.live_nodes()}
    assert loads == {"n1": owners.count("n1") * cost, "n2": owners.count("n2") * cost}
    assert loads["n1"] - loads["n2"] <= LOCAL_PREFERENCE * 1000 + cost


async def test_a_room_the_owners_heartbeat_counts_is_no_longer_charged_as_placed(
    redis_client: aioredis.Redis, rooms: Rooms, tenancy: Tenancy
):
    """A heartbeat between two placements used to count a new room twice (its report and the
    placement charge, until the charge expired): a nearly full cluster answered cluster_full."""
    instance = await make_instance(tenancy, "pro")
    registry = await registered(redis_client, node("n1", capacity=50))
    placement = RedisPlacement(redis_client, registry, rooms, recent_ms=60_000)
    cost = NEW_ROOM_COST["meeting"]
    first = await rooms.create(ACTOR, instance.id, "first")
    assert (await placement.owner(first)).node_id == "n1"
    assert [n.load.cost for n in await registry.live_nodes()] == [cost]  # charged until counted
    # n1's heartbeat counts its placed room (what ClusterMember.read_load reports).
    placed = await rooms.open_on("n1")
    assert placed == {"meeting": [first.id]}
    await registry.publish(NodeLoad(cost=cost, counted_rooms=(str(first.id),)))
    assert [n.load.cost for n in await registry.live_nodes()] == [cost]  # once, not twice
    assert (await placement.owner(await rooms.create(ACTOR, instance.id, "second"))).node_id == "n1"  # 48 <= 50
    assert [n.load.cost for n in await registry.live_nodes()] == [2 * cost]
    assert "counted_rooms" not in (await redis_client.get("gbmedia:node:n1")).decode()  # not stored in the entry
