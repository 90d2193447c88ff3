"""A customer's webhook receiver for tests: a real aiohttp server on 127.0.0.1.

It records every request (headers, raw body, parsed JSON) and answers with the
status its ``answer`` function picks (200 unless told otherwise); ``hold`` makes it
wait before answering (a receiver that is slow while the node is killed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from tests.helpers import Tenant


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return str(self.json["type"])


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer: Callable[[Received], int] = lambda _: 200
        self.hold: asyncio.Event | None = None  # set: answer; None: answer at once
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        await self.server.close()

    def url(self, path: str = "/hook") -> str:
        return str(self.server.make_url(path))

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(request.path, CIMultiDict(request.headers), await request.read())
        self.requests.append(received)
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        status = self.answer(received)
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.requests if r.path == "/hook" and r.type == event_type]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                seen = [(r.path, r.headers.get("X-Gbmedia-Webhook-Event")) for r in self.requests]
                raise AssertionError(f"the receiver did not get what was expected within {within} s; it got {seen}")
            await asyncio.sleep(0.05)


async def create_endpoint(
    client: TestClient, tenant: Tenant, url: str, events: list[str], headers: dict[str, str] | None = None
) -> tuple[str, str]:
    """A webhook endpoint of the tenant's instance: (its id, its secret)."""
    resp = await client.post(
        f"/api/v1/instances/{tenant.instance_id}/webhooks",
        json={"url": url, "events": events},
        headers=headers or tenant.admin,
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["webhook"]["id"], body["secret"]


async def deliveries(client: TestClient, tenant: Tenant, hook_id: str) -> list[dict[str, Any]]:
    resp = await client.get(
        f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}/deliveries", headers=tenant.admin
    )
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["deliveries"])


async def delivered_or_dead(
    client: TestClient, tenant: Tenant, hook_id: str, within: float = 30.0
) -> list[dict[str, Any]]:
    """The endpoint's deliveries once none is pending any more."""
    deadline = time.monotonic() + within
    while True:
        listed = await deliveries(client, tenant, hook_id)
        if listed and all(d["status"] != "pending" for d in listed):
            return listed
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still pending after {within} s: {listed}")
        await asyncio.sleep(0.05)
