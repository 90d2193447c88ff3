"""A node SIGKILLed mid-session neither loses minutes (beyond its last flush interval) nor
counts any twice.

A real ``gbmedia serve`` process (tests/processes.py) meters a publishing aiortc
participant, flushing every 0.5 s. The test waits until some ticks are written, kills
the node with SIGKILL, and compares what was metered with the time the participant
was in the room until the kill: at most one flush interval (and the write in flight)
short, never more. A second process on the same database then meters the participant
again (a new session) until it leaves, and is stopped cleanly: the total is both
sessions' truth, less at most the killed node's last interval, and no tick's key is
written twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg

from gbmedia.tenancy.tokens import Grants, mint_token
from tests import processes
from tests.helpers import OPERATOR
from tests.processes import ServerProcess
from tests.rtc import ColorVideoTrack, RtcClient

FLUSH = 0.5
TEST_TIMEOUT = 240.0


async def _metered(pool: asyncpg.Pool, kind: str) -> float:
    seconds = await pool.fetchval(
        "SELECT coalesce(sum(quantity), 0)::float8 * 60 FROM usage_events WHERE subject = 'dana' AND kind = $1", kind
    )
    return float(seconds)


async def _participant(http: aiohttp.ClientSession, url: str, token: str) -> tuple[RtcClient, float]:
    client = RtcClient(await http.ws_connect(url.replace("http", "ws", 1) + "/rtc"))
    before = time.time()
    joined = await client.join(token)
    assert joined["type"] == "joined", joined
    return client, (before + time.time()) / 2


async def test_a_killed_node_neither_loses_nor_doubles_minutes(tmp_path: Path, database_url: str, pool: asyncpg.Pool):
    env = processes.node_env(tmp_path, database_url, usage_flush_seconds=str(FLUSH))
    first = ServerProcess(env, tmp_path, "first")
    second = ServerProcess(env, tmp_path, "second")
    clients: list[RtcClient] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            url = await first.start()
            async with http.post(url + "/api/v1/customers", json={"name": "m", "tier": "pro"}, headers=OPERATOR) as r:
                customer = (await r.json())["id"]
            async with http.post(
                url + f"/api/v1/customers/{customer}/instances", json={"name": "m-main"}, headers=OPERATOR
            ) as r:
                credentials = (await r.json())["credentials"]
            token = mint_token(credentials["key"], credentials["secret"], "dana", Grants.participant("one"))
            dana, joined_at = await _participant(http, url, token)
            clients.append(dana)
            assert (await dana.publish(ColorVideoTrack((0, 0, 200))))["type"] == "publish_answer"
            deadline = time.monotonic() + 60
            while await _metered(pool, "subscribe_minutes") < 1.5:  # some ticks are written...
                assert time.monotonic() < deadline, first.stderr_tail()
                await asyncio.sleep(0.1)
            first.kill()  # ...and the node dies mid-session
            killed_at = time.time()
            assert await first.exited() == -signal.SIGKILL
            await dana.close()
            truth = killed_at - joined_at
            before_kill = await _metered(pool, "subscribe_minutes")
            lost = truth - before_kill
            assert -0.05 <= lost <= FLUSH + 0.5, (truth, before_kill)  # never more than the truth
            published = await _metered(pool, "publish_minutes")
            assert 0 < published <= before_kill + 0.05

            url = await second.start()  # the same database: a restart after the crash
            token = mint_token(credentials["key"], credentials["secret"], "dana", Grants.participant("two"))
            dana, rejoined_at = await _participant(http, url, token)
            clients.append(dana)
            while await _metered(pool, "subscribe_minutes") < before_kill + 1.0:
                assert time.monotonic() < deadline + 60, second.stderr_tail()
                await asyncio.sleep(0.1)
            before = time.time()
            assert (await dana.request({"type": "leave"}))["type"] == "left"
            left_at = (before + time.time()) / 2
            await second.stop()  # a clean stop writes the last tick
            total = await _metered(pool, "subscribe_minutes")
            second_truth = left_at - rejoined_at
            assert abs(total - before_kill - second_truth) <= 0.3, (total, before_kill, second_truth)
            assert truth + second_truth - (FLUSH + 0.5) <= total <= truth + second_truth + 0.05
            duplicates = await pool.fetchval(
                "SELECT count(*) - count(DISTINCT idempotency_key) FROM usage_events WHERE subject = 'dana'"
            )
            assert duplicates == 0
    finally:
        for client in clients:
            await client.close()
        await first.ensure_dead()
        await second.stop()
