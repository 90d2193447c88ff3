"""The Rooms service against a real database: quotas, names, lookup, close, idle sweep."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from gbmedia.errors import ApiError
from gbmedia.rooms.store import DEFAULT_EMPTY_TIMEOUT, Room, Rooms, RoomSweeper
from gbmedia.tenancy import audit
from gbmedia.tenancy.models import Actor, Instance
from gbmedia.tenancy.service import Tenancy

ACTOR = Actor("tester", "cli", "req-1")


async def make_instance(tenancy: Tenancy, tier: str = "free", name: str = "acme") -> Instance:
    customer = await tenancy.customers.create(ACTOR, name, tier)
    instance, _ = await tenancy.instances.create(ACTOR, customer.id, f"{name}-main")
    return instance


async def api_error(awaitable) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as caught:
        await awaitable
    return caught.value


async def backdate(pool: asyncpg.Pool, room: Room, seconds: int) -> None:
    """Move the room's last activity into the past, instead of waiting for it."""
    await pool.execute(
        "UPDATE rooms SET last_active_at = now() - make_interval(secs => $2) WHERE id = $1", room.id, seconds
    )


async def status_of(pool: asyncpg.Pool, room: Room) -> str:
    return await pool.fetchval("SELECT status FROM rooms WHERE id = $1", room.id)


# --- create ------------------------------------------------------------------------


async def test_create_uses_the_tier_defaults_and_this_node(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy, "free")
    room = await rooms.create(ACTOR, instance.id, "standup")
    assert (room.name, room.kind, room.status, room.node_id) == ("standup", "meeting", "open", "node-a")
    assert (room.customer_id, room.instance_id) == (instance.customer_id, instance.id)
    assert room.max_participants == 10  # the free tier's max_participants_per_room
    assert room.empty_timeout == DEFAULT_EMPTY_TIMEOUT == 300
    assert room.metadata == {} and room.closed_at is None
    assert room.last_active_at >= room.created_at

    # The free tier has no live rooms (tenancy/gates.py); a tier with them does.
    refused = await api_error(rooms.create(ACTOR, instance.id, "show", "live", 5, 60, {"topic": "launch"}))
    assert (refused.status, refused.code, refused.details["feature"]) == (403, "feature_not_in_plan", "live")
    pro = await make_instance(tenancy, "pro", "studio")
    live = await rooms.create(ACTOR, pro.id, "show", "live", 5, 60, {"topic": "launch"})
    assert (live.kind, live.max_participants, live.empty_timeout, live.metadata) == ("live", 5, 60, {"topic": "launch"})
    for owner, made in ((instance, room), (pro, live)):
        entries = await audit.list_entries(pool, instance_id=owner.id)
        created = [e for e in entries if e.action == "room.create"]
        assert [(e.target_id, e.actor, e.request_id, e.details["name"]) for e in created] == [
            (str(made.id), "tester", "req-1", made.name)
        ]


async def test_open_rooms_are_counted_per_customer_against_the_quota(rooms: Rooms, tenancy: Tenancy):
    # Two instances of one customer share its room quota; free allows 2 open rooms.
    customer = await tenancy.customers.create(ACTOR, "multi", "starter")
    first, _ = await tenancy.instances.create(ACTOR, customer.id, "one")
    second, _ = await tenancy.instances.create(ACTOR, customer.id, "two")
    await tenancy.customers.update(ACTOR, customer.id, {"subscription_tier": "free"})
    a = await rooms.create(ACTOR, first.id, "a")
    await rooms.create(ACTOR, second.id, "b")
    error = await api_error(rooms.create(ACTOR, first.id, "c"))
    assert (error.status, error.code) == (403, "quota_max_concurrent_rooms_exceeded")
    assert error.details == {"quota": "max_concurrent_rooms", "limit": 2, "used": 2}

    await rooms.close(ACTOR, a)
    assert (await rooms.create(ACTOR, second.id, "c")).status == "open"


async def test_concurrent_creations_cannot_exceed_the_room_quota(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy, "free")
    results = await asyncio.gather(
        *[rooms.create(ACTOR, instance.id, f"r{n}") for n in range(6)], return_exceptions=True
    )
    created = [r for r in results if isinstance(r, Room)]
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(created) == 2, results
    assert len(refused) == 4 and {e.code for e in refused} == {"quota_max_concurrent_rooms_exceeded"}
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE status = 'open'") == 2


async def test_max_participants_may_not_exceed_the_tier_quota(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy, "free")
    error = await api_error(rooms.create(ACTOR, instance.id, "big", max_participants=11))
    assert (error.status, error.code) == (403, "quota_max_participants_per_room_exceeded")
    assert error.details == {"quota": "max_participants_per_room", "limit": 10, "requested": 11}
    assert await pool.fetchval("SELECT count(*) FROM rooms") == 0
    assert (await rooms.create(ACTOR, instance.id, "full", max_participants=10)).max_participants == 10


async def test_open_names_are_unique_per_instance_and_free_again_once_closed(rooms: Rooms, tenancy: Tenancy):
    instance = await make_instance(tenancy, "starter", "one")
    other = await make_instance(tenancy, "starter", "two")
    room = await rooms.create(ACTOR, instance.id, "standup")
    error = await api_error(rooms.create(ACTOR, instance.id, "standup"))
    assert (error.status, error.code) == (409, "room_name_taken")
    assert (await rooms.create(ACTOR, other.id, "standup")).instance_id == other.id

    await rooms.close(ACTOR, room)
    again = await rooms.create(ACTOR, instance.id, "standup")
    assert again.id != room.id and again.status == "open"


async def test_only_active_tenants_get_rooms(rooms: Rooms, tenancy: Tenancy):
    instance = await make_instance(tenancy, "starter")
    await tenancy.instances.update(ACTOR, instance.id, {"status": "suspended"})
    error = await api_error(rooms.create(ACTOR, instance.id, "x"))
    assert (error.status, error.code) == (409, "instance_not_active")

    await tenancy.instances.update(ACTOR, instance.id, {"status": "active"})
    await tenancy.customers.update(ACTOR, instance.customer_id, {"status": "suspended"})
    error = await api_error(rooms.create(ACTOR, instance.id, "x"))
    assert (error.status, error.code) == (409, "customer_not_active")

    error = await api_error(rooms.create(ACTOR, uuid.uuid4(), "x"))
    assert (error.status, error.code) == (404, "instance_not_found")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "webinar"},
        {"empty_timeout": 0},
        {"empty_timeout": 86401},
        {"max_participants": 0},
        {"name": ""},
        {"name": "a b"},
        {"name": "x" * 201},
        {"name": "x\n"},
    ],
)
async def test_create_refuses_bad_settings_from_any_caller(rooms: Rooms, tenancy: Tenancy, kwargs: dict):
    instance = await make_instance(tenancy)
    kwargs = {"name": "x", **kwargs}
    error = await api_error(rooms.create(ACTOR, instance.id, **kwargs))
    assert (error.status, error.code) == (400, "invalid_room_settings")


# --- get, list ---------------------------------------------------------------------


async def test_get_by_id_or_name_within_the_instance_only(rooms: Rooms, tenancy: Tenancy):
    instance = await make_instance(tenancy, "starter", "one")
    other = await make_instance(tenancy, "starter", "two")
    old = await rooms.create(ACTOR, instance.id, "standup")
    await rooms.close(ACTOR, old)
    current = await rooms.create(ACTOR, instance.id, "standup")

    assert await rooms.get(instance.id, current.id) == current
    assert await rooms.get(instance.id, str(current.id)) == current
    assert (await rooms.get(instance.id, "standup")).id == current.id  # the open one first
    await rooms.close(ACTOR, current)
    assert (await rooms.get(instance.id, "standup")).id == current.id  # else the newest closed
    assert (await rooms.get(None, old.id)).id == old.id  # the operator, by id
    looks_like_an_id = str(uuid.uuid4())
    named = await rooms.create(ACTOR, instance.id, looks_like_an_id)
    assert (await rooms.get(instance.id, looks_like_an_id)).id == named.id

    for instance_id, key in [
        (other.id, current.id),
        (other.id, "standup"),
        (instance.id, uuid.uuid4()),
        (instance.id, "nope"),
        (None, "standup"),
    ]:
        error = await api_error(rooms.get(instance_id, key))
        assert (error.status, error.code) == (404, "room_not_found"), (instance_id, key)


async def test_list_filters_by_instance_and_status_newest_first(rooms: Rooms, tenancy: Tenancy):
    instance = await make_instance(tenancy, "starter", "one")
    other = await make_instance(tenancy, "starter", "two")
    a = await rooms.create(ACTOR, instance.id, "a")
    b = await rooms.create(ACTOR, instance.id, "b")
    c = await rooms.create(ACTOR, other.id, "c")
    await rooms.close(ACTOR, a)

    def names(found: list[Room]) -> list[str]:
        return [r.name for r in found]

    assert names(await rooms.list(instance.id)) == ["b"]
    assert names(await rooms.list(instance.id, "closed")) == ["a"]
    assert names(await rooms.list(instance.id, "all")) == ["b", "a"]
    assert names(await rooms.list(None, "all")) == ["c", "b", "a"]
    assert names(await rooms.list(None, "all", limit=1, offset=1)) == ["b"]
    assert [r.id for r in await rooms.list(other.id)] == [c.id]
    error = await api_error(rooms.list(instance.id, "bogus"))  # type: ignore[arg-type]
    assert (error.status, error.code) == (400, "invalid_query")
    assert b.status == "open"


# --- close, touch ------------------------------------------------------------------


async def test_close_is_idempotent_and_audited_once(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy)
    room = await rooms.create(ACTOR, instance.id, "standup")
    heard: list[tuple[uuid.UUID, str]] = []

    async def listener(closed: Room, reason: str) -> None:
        heard.append((closed.id, reason))

    rooms.on_close(listener)
    closed = await rooms.close(ACTOR, room)
    assert closed.status == "closed" and closed.closed_at is not None
    again = await rooms.close(ACTOR, room)
    assert again == closed
    assert heard == [(room.id, "api")]
    entries = [e for e in await audit.list_entries(pool, instance_id=instance.id) if e.action == "room.close"]
    assert [(e.target_id, e.details["reason"]) for e in entries] == [(str(room.id), "api")]


async def test_a_failing_close_listener_does_not_undo_the_close(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy)
    room = await rooms.create(ACTOR, instance.id, "standup")

    async def broken(closed: Room, reason: str) -> None:
        raise RuntimeError("listener bug")

    rooms.on_close(broken)
    assert (await rooms.close(ACTOR, room)).status == "closed"
    assert await status_of(pool, room) == "closed"


async def test_touch_moves_last_activity_of_open_rooms_only(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy)
    room = await rooms.create(ACTOR, instance.id, "standup")
    await backdate(pool, room, 600)
    before = (await rooms.get(instance.id, room.id)).last_active_at
    assert await rooms.touch(room.id) is True
    assert (await rooms.get(instance.id, room.id)).last_active_at > before
    await rooms.close(ACTOR, room)
    assert await rooms.touch(room.id) is False
    assert await rooms.touch(uuid.uuid4()) is False


# --- idle rooms ----------------------------------------------------------------------


async def test_close_idle_closes_empty_rooms_past_their_timeout(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy, "starter")
    idle = await rooms.create(ACTOR, instance.id, "idle", empty_timeout=1)
    fresh = await rooms.create(ACTOR, instance.id, "fresh", empty_timeout=3600)
    elsewhere = await Rooms(pool, tenancy.customers, tenancy.instances, node_id="node-b").create(
        ACTOR, instance.id, "elsewhere", empty_timeout=1
    )
    for room in (idle, fresh, elsewhere):
        await backdate(pool, room, 60)
    heard: list[tuple[str, str]] = []

    async def listener(closed: Room, reason: str) -> None:
        heard.append((closed.name, reason))

    rooms.on_close(listener)
    closed = await rooms.close_idle(lambda room_id: 0)
    assert [r.id for r in closed] == [idle.id]
    assert closed[0].status == "closed" and closed[0].closed_at is not None
    assert heard == [("idle", "idle")]
    # Within its timeout, or on another node (that node's sweeper owns it): left open.
    assert [await status_of(pool, r) for r in (fresh, elsewhere)] == ["open", "open"]
    (entry,) = [e for e in await audit.list_entries(pool, instance_id=instance.id) if e.action == "room.close"]
    assert (entry.actor, entry.actor_kind, entry.target_id) == ("node:node-a", "system", str(idle.id))
    assert entry.details["reason"] == "idle"
    assert await rooms.close_idle(lambda room_id: 0) == []


async def test_a_room_with_participants_stays_open_and_its_clock_restarts(
    rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool
):
    instance = await make_instance(tenancy)
    room = await rooms.create(ACTOR, instance.id, "busy", empty_timeout=1)
    await backdate(pool, room, 60)
    asked: list[uuid.UUID] = []

    def one_participant(room_id: uuid.UUID) -> int:
        asked.append(room_id)
        return 1

    assert await rooms.close_idle(one_participant) == []
    assert asked == [room.id]
    assert await status_of(pool, room) == "open"
    seen = (await rooms.get(instance.id, room.id)).last_active_at
    assert await pool.fetchval("SELECT now() - $1::timestamptz < interval '30 seconds'", seen)

    async def nobody(room_id: uuid.UUID) -> int:  # an async count works too
        return 0

    # Empty now: it closes once its empty_timeout has passed since it was last seen busy.
    deadline = time.monotonic() + 30
    closed: list[Room] = []
    while not closed and time.monotonic() < deadline:
        closed = await rooms.close_idle(nobody)
        if not closed:
            await asyncio.sleep(0.1)
    assert [r.id for r in closed] == [room.id]


async def test_the_sweeper_closes_idle_rooms_in_the_background(rooms: Rooms, tenancy: Tenancy, pool: asyncpg.Pool):
    instance = await make_instance(tenancy)
    room = await rooms.create(ACTOR, instance.id, "idle", empty_timeout=1)
    calls = 0

    def flaky(room_id: uuid.UUID) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("signaling hiccup")  # one failed sweep must not stop the sweeper
        return 0

    sweeper = RoomSweeper(rooms, flaky, interval=0.05)
    await backdate(pool, room, 60)
    sweeper.start()
    try:
        assert sweeper.running
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await status_of(pool, room) == "closed":
                break
            await asyncio.sleep(0.05)
        assert await status_of(pool, room) == "closed"
        assert calls >= 2
    finally:
        await sweeper.stop()
    assert not sweeper.running
    await sweeper.stop()  # stopping twice is harmless
