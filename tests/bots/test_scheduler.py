"""SET SCHEDULE: a due schedule fires once even when two nodes' schedulers see it at once (the clock injected)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
from aiohttp.test_utils import TestClient

from gbmedia.bots.scheduler import Scheduler
from gbmedia.node import Node
from tests.bots.chat import upload
from tests.helpers import OPERATOR, Tenant

REPORT = """
SET SCHEDULE "0 8 * * *"
TABLE ticks
  id integer key auto
  note string(20)
END TABLE
SAVE "ticks", "morning"
TALK "report saved"
"""


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def ticks(pool: asyncpg.Pool, instance_id: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM bot_rows WHERE instance_id = $1 AND table_name = 'ticks'", uuid.UUID(instance_id)
    )


async def test_a_schedule_fires_once_per_time_with_two_schedulers(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
):
    dialog = await upload(client, tenant, "report", REPORT)
    assert dialog["schedule"] == "0 8 * * *"
    next_at = await pool.fetchval(
        "SELECT next_at FROM schedules WHERE instance_id = $1 AND dialog_name = 'report'", uuid.UUID(tenant.instance_id)
    )
    assert (next_at.hour, next_at.minute) == (8, 0)
    runner = node.bots.engine.runner
    clock = Clock(next_at - dt.timedelta(seconds=1))
    # Two nodes' schedulers on the same database (the node's own one is left to its slow loop).
    one, two = Scheduler(pool, runner, clock=clock), Scheduler(pool, runner, clock=clock)

    assert await asyncio.gather(one.tick(), two.tick()) == [[], []]  # not due yet
    clock.now = next_at + dt.timedelta(seconds=3)
    first, second = await asyncio.gather(one.tick(), two.tick())
    assert len(first) + len(second) == 1
    (firing,) = first + second
    assert firing.dialog == "report" and firing.outcome is not None and firing.outcome.status == "done"
    assert await ticks(pool, tenant.instance_id) == 1
    assert await asyncio.gather(one.tick(), two.tick()) == [[], []]  # the same time again: already fired

    clock.now = next_at + dt.timedelta(days=1, seconds=1)  # the next morning
    first, second = await asyncio.gather(two.tick(), one.tick())
    assert len(first) + len(second) == 1
    assert await ticks(pool, tenant.instance_id) == 2
    logged = await pool.fetch(
        "SELECT message FROM instance_logs WHERE instance_id = $1 ORDER BY id", uuid.UUID(tenant.instance_id)
    )
    assert [r["message"] for r in logged] == ["TALK report saved", "TALK report saved"]


async def test_a_missed_schedule_fires_once_and_a_deleted_dialog_takes_its_schedule(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
):
    await upload(client, tenant, "report", REPORT)
    next_at = await pool.fetchval("SELECT next_at FROM schedules WHERE dialog_name = 'report'")
    clock = Clock(next_at + dt.timedelta(days=10))  # the node was away for ten mornings
    scheduler = Scheduler(pool, node.bots.engine.runner, clock=clock)
    assert len(await scheduler.tick()) == 1
    assert await scheduler.tick() == []
    assert await ticks(pool, tenant.instance_id) == 1

    resp = await client.delete("/api/v1/bots/dialogs/report", headers=tenant.admin)
    assert resp.status == 204
    clock.now += dt.timedelta(days=2)
    assert await scheduler.tick() == []
    assert await pool.fetchval("SELECT count(*) FROM schedules") == 0


async def test_a_due_schedule_is_passed_by_while_the_instance_turns_bots_off(
    client: TestClient, node: Node, tenant: Tenant, pool: asyncpg.Pool
):
    await upload(client, tenant, "report", REPORT)
    next_at = await pool.fetchval(
        "SELECT next_at FROM schedules WHERE instance_id = $1 AND dialog_name = 'report'", uuid.UUID(tenant.instance_id)
    )
    clock = Clock(next_at + dt.timedelta(seconds=1))
    scheduler = Scheduler(pool, node.bots.engine.runner, clock=clock)
    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}", json={"features": {"bots": False}}, headers=OPERATOR
    )
    assert resp.status == 200
    (firing,) = await scheduler.tick()
    assert firing.outcome is None  # claimed (not replayed later), not run
    assert await ticks(pool, tenant.instance_id) == 0
    logged = await pool.fetch("SELECT message FROM instance_logs WHERE instance_id = $1", uuid.UUID(tenant.instance_id))
    assert any("scheduled run skipped" in r["message"] and "bots" in r["message"] for r in logged)

    resp = await client.patch(
        f"/api/v1/instances/{tenant.instance_id}", json={"features": {"bots": True}}, headers=OPERATOR
    )
    clock.now = next_at + dt.timedelta(days=1, seconds=1)
    (firing,) = await scheduler.tick()
    assert firing.outcome is not None and firing.outcome.status == "done"
    assert await ticks(pool, tenant.instance_id) == 1
