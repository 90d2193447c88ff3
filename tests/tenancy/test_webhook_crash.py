"""A webhook is never lost when its node is killed mid-delivery: the next node delivers it.

A real ``gbmedia serve`` process (tests/processes.py) on the test PostgreSQL sends a
chat message's ``message_created`` event to a receiver that holds the request without
answering; the node is SIGKILLed while the request is in flight, so no outcome is ever
written. A second process on the same database takes the delivery again once the
first claim lapses (twice the 2 s timeout plus 5 s), delivers it with the same event id,
and the listing shows the first attempt interrupted and the second one delivered.
"""

from __future__ import annotations

import asyncio
import hmac
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.tenancy.webhook_dispatch import INTERRUPTED
from gbmedia.tenancy.webhook_events import signature
from tests import processes
from tests.helpers import OPERATOR, bearer
from tests.processes import ServerProcess
from tests.tenancy.webhook_receiver import Receiver

TEST_TIMEOUT = 240.0  # the whole test; it normally takes about fifteen seconds


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


def node_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return processes.node_env(
        tmp_path,
        database_url,
        webhook_allow_networks="127.0.0.0/8",
        webhook_timeout_seconds="2",
        webhook_backoff_seconds="0.2",
    )


async def test_a_node_killed_mid_delivery_loses_no_event(tmp_path: Path, database_url: str, receiver: Receiver):
    env = node_env(tmp_path, database_url)
    first = ServerProcess(env, tmp_path, "first")
    second = ServerProcess(env, tmp_path, "second")  # the same database and secret key
    receiver.hold = asyncio.Event()  # the first request gets no answer while the node dies
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            url = await first.start()
            async with http.post(url + "/api/v1/customers", json={"name": "hooked"}, headers=OPERATOR) as resp:
                assert resp.status == 201, await resp.text()
                customer = (await resp.json())["id"]
            async with http.post(
                url + f"/api/v1/customers/{customer}/instances", json={"name": "hooked-main"}, headers=OPERATOR
            ) as resp:
                assert resp.status == 201, await resp.text()
                instance = (await resp.json())["instance"]["id"]
                credentials = (await resp.json())["credentials"]
            hooks = f"/api/v1/instances/{instance}/webhooks"
            async with http.post(
                url + hooks, json={"url": receiver.url(), "events": ["message_created"]}, headers=OPERATOR
            ) as resp:
                assert resp.status == 201, await resp.text()
                hook_id, secret = (await resp.json())["webhook"]["id"], (await resp.json())["secret"]
            alice = bearer(mint_token(credentials["key"], credentials["secret"], "alice", Grants()))
            async with http.post(url + "/api/v1/conversations", json={"members": ["bob"]}, headers=alice) as resp:
                assert resp.status == 201, await resp.text()
                conversation = (await resp.json())["id"]
            async with http.post(
                url + f"/api/v1/conversations/{conversation}/messages",
                json={"content": "survive this", "idempotency_key": "k1"},
                headers=alice,
            ) as resp:
                assert resp.status == 201, await resp.text()  # committed, with its event

            await asyncio.wait_for(receiver.arrived.wait(), 60)  # the first attempt is in flight...
            first.kill()  # ...and its node dies before any outcome is written
            assert await first.exited() == -signal.SIGKILL
            hold, receiver.hold = receiver.hold, None
            hold.set()
            (interrupted,) = receiver.requests
            assert interrupted.json["data"]["message"]["content"] == "survive this"

            url = await second.start()
            await receiver.wait_for(lambda: len(receiver.requests) >= 2, within=120)
            delivered = receiver.requests[1]
            assert delivered.headers["X-Gbmedia-Webhook-Id"] == interrupted.headers["X-Gbmedia-Webhook-Id"]
            assert delivered.body == interrupted.body
            assert delivered.headers["X-Gbmedia-Webhook-Attempt"] == "2"
            expected = signature(secret, delivered.headers["X-Gbmedia-Webhook-Timestamp"], delivered.body)
            assert hmac.compare_digest(delivered.headers["X-Gbmedia-Webhook-Signature"], expected)

            listing = url + f"{hooks}/{hook_id}/deliveries"
            while True:
                async with http.get(listing, headers=OPERATOR) as resp:
                    assert resp.status == 200, await resp.text()
                    (delivery,) = (await resp.json())["deliveries"]
                if delivery["status"] != "pending":
                    break
                await asyncio.sleep(0.05)
            assert (delivery["status"], delivery["attempts"]) == ("delivered", 2)
            first_try, second_try = delivery["attempt_log"]
            assert (first_try["status_code"], first_try["error"]) == (None, INTERRUPTED)
            assert first_try["finished_at"] is not None
            assert (second_try["status_code"], second_try["error"]) == (200, None)
            assert len(receiver.requests) == 2
    finally:
        await first.ensure_dead()
        await second.stop()
