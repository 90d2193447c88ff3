"""A cluster of real ``gbmedia serve`` processes on this machine, sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from gbmedia.config import detect_public_host
from tests.helpers import OPERATOR, OPERATOR_TOKEN, Tenant
from tests.processes import ServerProcess
from tests.rtc import ColorVideoTrack, RtcClient

# Flushed by each cluster test: nothing else may use it (GBMEDIA_TEST_CLUSTER_REDIS_DB picks another
# for a second test run on the same Redis).
CLUSTER_REDIS_DB = int(os.environ.get("GBMEDIA_TEST_CLUSTER_REDIS_DB", "11"))


def cluster_redis_url(redis_url: str) -> str:
    base, _, _db = redis_url.rpartition("/")
    return f"{base}/{CLUSTER_REDIS_DB}" if base.startswith("redis") and _db.isdigit() else redis_url


class Cluster:
    """Node processes of one cluster: the same database, Redis, secret key and cluster secret."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = cluster_redis_url(redis_url)
        self.host = detect_public_host()  # browsers need a real interface address for ICE
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GBMEDIA_")}
        self.env.update(
            {
                "HOME": str(tmp_path),
                "LANG": "C.UTF-8",
                "GBMEDIA_DATABASE_URL": database_url,
                "GBMEDIA_REDIS_URL": self.redis_url,
                "GBMEDIA_HOST": self.host,
                "GBMEDIA_PUBLIC_HOST": self.host,
                "GBMEDIA_PORT": "0",
                "GBMEDIA_OPERATOR_TOKEN": OPERATOR_TOKEN,
                "GBMEDIA_SECRET_KEY": Fernet.generate_key().decode(),
                "GBMEDIA_CLUSTER_SECRET": secrets.token_urlsafe(24),
                "GBMEDIA_API_RATE_LIMIT": "100000",
                "GBMEDIA_API_RATE_BURST": "100000",
                "GBMEDIA_JOIN_RATE_BURST": "100000",  # every client joins from this machine's address
                "GBMEDIA_AUTH_FAILURE_BURST": "100000",
                "GBMEDIA_LOG_LEVEL": "info",
                "GBMEDIA_SHUTDOWN_TIMEOUT": "1",
                "GBMEDIA_DRAIN_TIMEOUT": "20",
                "GBMEDIA_NODE_MAX_CPU": "1",  # the test machine's CPU is shared: placement by cost only
                "GBMEDIA_HLS_ENABLED": "false",
                "GBMEDIA_WORKERS": "1",  # one node process each (with Redis the default is one per core)
            }
        )
        self.nodes: dict[str, ServerProcess] = {}
        self._next_ports = 41000

    async def reset_redis(self) -> None:
        client = aioredis.from_url(self.redis_url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    async def start(self, name: str, *, args: tuple[str, ...] = (), **env: str) -> ServerProcess:
        low = self._next_ports
        self._next_ports += 400
        node_env = {
            **self.env,
            "GBMEDIA_NODE_ID": name,
            "GBMEDIA_DATA_DIR": str(self.tmp_path / name),
            "GBMEDIA_UDP_PORTS": f"{low}-{low + 399}",
            "GBMEDIA_UDP_PORT": "off",  # the cluster tests check candidates against each node's own range
            "GBMEDIA_TURN_EMBEDDED": "false",  # cluster tests are about placement and relaying, not TURN
            **{f"GBMEDIA_{k.upper()}": v for k, v in env.items()},
        }
        process = ServerProcess(node_env, self.tmp_path, name, args)
        self.nodes[name] = process
        await process.start()
        return process

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes.values()), return_exceptions=True)

    async def live_nodes(self, http: aiohttp.ClientSession, via: str) -> list[dict[str, Any]]:
        async with http.get(self.nodes[via].url + "/api/v1/nodes", headers=OPERATOR) as resp:
            assert resp.status == 200, await resp.text()
            return list((await resp.json())["nodes"])

    async def wait_registered(self, http: aiohttp.ClientSession, names: set[str], within: float = 30.0) -> None:
        """Until every node in ``names`` is in the registry with its cluster listener."""
        async with asyncio.timeout(within):
            while True:
                via = next((n for n in names if n in self.nodes), next(iter(self.nodes)))  # a process of ours
                nodes = await self.live_nodes(http, via)
                if names <= {n["node_id"] for n in nodes if n["internal_url"]}:
                    return
                await asyncio.sleep(0.2)


async def create_tenant_over_http(http: aiohttp.ClientSession, url: str, name: str = "acme") -> Tenant:
    async with http.post(url + "/api/v1/customers", json={"name": name, "tier": "pro"}, headers=OPERATOR) as resp:
        assert resp.status == 201, await resp.text()
        customer = await resp.json()
    async with http.post(
        url + f"/api/v1/customers/{customer['id']}/instances", json={"name": f"{name}-main"}, headers=OPERATOR
    ) as resp:
        assert resp.status == 201, await resp.text()
        body = await resp.json()
    return Tenant(customer["id"], body["instance"]["id"], body["credentials"]["key"], body["credentials"]["secret"])


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path, database_url, redis_url)
    await cluster.reset_redis()
    try:
        yield cluster
    finally:
        await cluster.stop()


class ReconnectingParticipant:
    """A client that follows docs/protocol.md ("Clusters") with no help from the test.

    It joins and publishes a coloured camera; when its socket ends it reconnects (to
    the next of ``urls`` when one refuses, as a load balancer would) and resumes;
    after ``resume_failed`` or ``moved`` it joins afresh and publishes again. Every
    session is kept, with the time each decoded video frame arrived.
    """

    def __init__(self, http: aiohttp.ClientSession, urls: list[str], token: str, color: tuple[int, int, int]) -> None:
        self.http = http
        self.urls = urls
        self.token = token
        self.color = color
        self.sessions: list[tuple[float, RtcClient]] = []  # (started at, client)
        self.errors: list[dict[str, Any]] = []  # error messages other than the expected resume_failed
        self.moves = 0
        self.resume_token: str | None = None
        self.joined = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(60):
            await self.joined.wait()

    @property
    def client(self) -> RtcClient:
        return self.sessions[-1][1]

    def frames_since(self, moment: float) -> int:
        return sum(1 for _, c in self.sessions for t in c.video_arrivals if t > moment)

    def frames_of_sessions_since(self, moment: float) -> int:
        """Frames decoded by the sessions that started after ``moment`` (a rejoin's, not the old one's)."""
        return sum(len(c.video_arrivals) for started, c in self.sessions if started > moment)

    async def _socket(self) -> aiohttp.ClientWebSocketResponse:
        while True:
            for url in self.urls:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    return await self.http.ws_connect(url.replace("http", "ws", 1) + "/rtc?room=standup")
            await asyncio.sleep(0.2)

    async def _run(self) -> None:
        while not self._closing:
            client = RtcClient(await self._socket())
            try:
                reply = await self._join(client)
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                await client.close()
                continue
            if reply is None:
                await client.close()
                await asyncio.sleep(0.2)
                continue
            self.sessions.append((time.monotonic(), client))
            self.joined.set()
            await client._tasks[0]  # until the socket ends
            if any(e["type"] == "moved" for e in client.events):
                self.moves += 1
                self.resume_token = None  # the room moved: join afresh on its new node
            self.errors += [e for e in client.events if e["type"] == "error" and e["code"] != "resume_failed"]
            if not self._closing:
                await asyncio.sleep(0.1)

    async def _join(self, client: RtcClient) -> dict[str, Any] | None:
        if self.resume_token is not None:
            reply = await asyncio.wait_for(client.join(self.token, resume=self.resume_token), 20)
            if reply["type"] == "joined":
                return reply
            self.resume_token = None
        reply = await asyncio.wait_for(client.join(self.token), 20)
        if reply["type"] != "joined":
            self.errors.append(reply)
            return None
        self.resume_token = reply["resume_token"]
        await asyncio.wait_for(client.publish(ColorVideoTrack(self.color)), 20)
        return reply

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for _, client in self.sessions:
            with contextlib.suppress(Exception):
                await client.close()
