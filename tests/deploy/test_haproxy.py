"""The HAProxy configurations in deploy/: valid, and routing one room's requests to one node.

The live tests run Debian's haproxy with deploy/haproxy/haproxy.cfg (only its ports,
servers and process settings replaced) in front of three small aiohttp servers that
stand in for nodes, so they test the balancer's rules, not gbmedia.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
STANDALONE = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
KUBERNETES = ROOT / "deploy" / "kubernetes" / "haproxy.cfg"
ROOM_HEADER = "X-Gbmedia-Room"
ROUTING = re.compile(r"^[ \t]*# >>> room routing.*?^[ \t]*# <<< room routing\n", re.MULTILINE | re.DOTALL)


def haproxy_binary() -> str:
    """Debian's haproxy (scripts/test installs it); /usr/sbin is not on every user's PATH."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if path is None:
        service_missing("haproxy not found (Debian package haproxy; scripts/test installs it)")
    return path or "haproxy"


@pytest.mark.parametrize("config", [STANDALONE, KUBERNETES], ids=lambda p: str(p.relative_to(ROOT)))
def test_haproxy_accepts_the_configuration(config: Path):
    done = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Warnings are mistakes too (an ignored keyword, a rule in the wrong place).
    assert "[WARNING]" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_both_configurations_route_rooms_alike():
    """The balancer rules are written twice (kustomize cannot read files outside its folder)."""
    standalone, kubernetes = (ROUTING.search(p.read_text()) for p in (STANDALONE, KUBERNETES))
    assert standalone and kubernetes, "the '# >>> room routing' ... '# <<< room routing' block is missing"
    assert standalone.group(0) == kubernetes.group(0)


# --- a real HAProxy in front of three stand-in nodes --------------------------------------


NODES = ("node1", "node2", "node3")
ROOMS = [f"room-{i}" for i in range(24)]


@dataclass
class StandIn:
    """A stand-in node: answers with its name and the room header the balancer set."""

    name: str
    ready: bool = True
    server: TestServer | None = None
    sockets: list[web.WebSocketResponse] = field(default_factory=list)

    def app(self) -> web.Application:
        async def readyz(request: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

        async def rtc(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            self.sockets.append(ws)
            await ws.send_json(self.answer(request))
            async for message in ws:  # echo: shows the socket still works later
                await ws.send_str(message.data)
            return ws

        async def anything(request: web.Request) -> web.Response:
            return web.json_response(self.answer(request))

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/rtc", rtc)
        app.router.add_route("*", "/{tail:.*}", anything)
        return app

    def answer(self, request: web.Request) -> dict[str, str | None]:
        return {"node": self.name, "room": request.headers.get(ROOM_HEADER)}


@dataclass
class Balancer:
    url: str
    stats_url: str
    nodes: dict[str, StandIn]
    http: aiohttp.ClientSession

    async def answer(self, method: str, path: str, **kwargs: object) -> dict[str, str | None]:
        async with self.http.request(method, self.url + path, **kwargs) as response:  # type: ignore[arg-type]
            assert response.status == 200, f"{method} {path}: {response.status} {await response.text()}"
            return await response.json()

    async def node_of_socket(self, room: str) -> str:
        async with self.http.ws_connect(f"{self.url}/rtc?room={room}") as ws:
            answer = await ws.receive_json(timeout=5)
            assert answer["room"] == room
            return answer["node"]

    async def server_states(self) -> dict[str, str]:
        async with self.http.get(self.stats_url + "/stats;csv") as response:
            text = (await response.text()).lstrip("# ")
        return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "gbmedia"}

    async def wait_for(self, states: dict[str, str]) -> None:
        for _ in range(100):
            current = await self.server_states()
            if all(current.get(name, "").startswith(state) for name, state in states.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"servers never reached {states}: {current}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(config: str, port: int, stats_port: int, servers: dict[str, int]) -> str:
    """deploy/haproxy/haproxy.cfg on test ports and servers, in the foreground, logging to stderr."""

    def replace(pattern: str, new: str, text: str) -> str:
        text, count = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert count, f"deploy/haproxy/haproxy.cfg no longer has a line matching {pattern!r}"
        return text

    config = replace(r"^\s*(chroot|user|group|stats socket) .*\n", "", config)
    config = replace(r"^(\s*)maxconn \d+$", r"\1maxconn 1000", config)  # within an ordinary user's fd limit
    config = replace(r"^(\s*)log /dev/log local0\n(\s*log /dev/log .*\n)?", r"\1log stderr format raw local0\n", config)
    config = replace(r"^(\s*)bind :80$", rf"\1bind 127.0.0.1:{port}", config)
    config = replace(r"^(\s*)bind 127\.0\.0\.1:8404$", rf"\1bind 127.0.0.1:{stats_port}", config)
    # Faster health checks than production's 2 s, so a node leaves and rejoins in a second.
    lines = "".join(f"    server {name} 127.0.0.1:{p} inter 100ms fall 2 rise 1\n" for name, p in servers.items())
    return replace(r"^\s*server .*\n(?:\s*server .*\n)*", lines, config)


@pytest.fixture
async def balancer(tmp_path: Path) -> AsyncIterator[Balancer]:
    binary = haproxy_binary()
    nodes = {name: StandIn(name) for name in NODES}
    for node in nodes.values():
        node.server = TestServer(node.app(), host="127.0.0.1")
        await node.server.start_server()
    port, stats_port = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(STANDALONE.read_text(), port, stats_port, {n: s.server.port for n, s in nodes.items()}))  # type: ignore[union-attr,misc]
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(binary, "-db", "-f", str(config), stdout=out, stderr=out)
    http = aiohttp.ClientSession()
    try:
        lb = Balancer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", nodes, http)
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                await lb.server_states()
                break
            assert process.returncode is None, f"haproxy exited: {log.read_text()}"
            await asyncio.sleep(0.1)
        await lb.wait_for(dict.fromkeys(NODES, "UP"))
        yield lb
    finally:
        await http.close()
        if process.returncode is None:
            process.terminate()
        await process.wait()
        for node in nodes.values():
            for ws in node.sockets:
                await ws.close()
            await node.server.close()  # type: ignore[union-attr]


async def owners(lb: Balancer) -> dict[str, str]:
    """Each room's node, asserting that every kind of request for the room reaches that node.

    (The stand-ins are given the name where gbmedia's REST and HLS paths carry the room's id:
    what is checked is that the balancer reads the key from each place.)
    """
    result = {}
    for room in ROOMS:
        reached = {
            await lb.node_of_socket(room),
            (await lb.answer("POST", "/api/v1/rooms", json={"name": room, "kind": "meeting"}))["node"],
            (await lb.answer("POST", f"/whip/{room}"))["node"],
            (await lb.answer("PATCH", f"/whip/{room}/some-session"))["node"],
            (await lb.answer("POST", f"/whep/{room}"))["node"],
            (await lb.answer("GET", f"/api/v1/rooms/{room}/participants"))["node"],
            (await lb.answer("GET", f"/hls/{room}/live.m3u8"))["node"],
        }
        assert len(reached) == 1, f"{room}'s requests reached {reached}"
        result[room] = reached.pop()
    return result


async def test_one_room_reaches_one_node_and_rooms_spread(balancer: Balancer):
    placed = await owners(balancer)
    assert set(placed.values()) == set(NODES)
    # Hashing is a pure function of the room and the server list: asking again changes nothing.
    assert await owners(balancer) == placed
    # A client cannot choose the node by sending the header itself.
    answer = await balancer.answer("POST", "/whip/room-0", headers={ROOM_HEADER: "something-else"})
    assert answer == {"node": placed["room-0"], "room": "room-0"}
    # Percent-encoding does not make two keys of one room.
    assert (await balancer.answer("POST", "/whep/room%2D1"))["node"] == placed["room-1"]
    # Creating a room without a name in the body: no key, spread like any request.
    assert (await balancer.answer("POST", "/api/v1/rooms", json={"kind": "live"}))["room"] is None


async def test_requests_naming_no_room_are_spread(balancer: Balancer):
    reached = [(await balancer.answer("GET", "/api/v1/customers"))["node"] for _ in range(9)]
    assert set(reached) == set(NODES)
    assert (await balancer.answer("GET", "/api/v1/customers"))["room"] is None


async def test_node_metrics_are_not_public(balancer: Balancer):
    async with balancer.http.get(balancer.url + "/metrics") as response:
        assert response.status == 404


async def test_a_node_failing_readyz_leaves_the_ring_and_keeps_its_sockets(balancer: Balancer):
    placed = await owners(balancer)
    room_on_1 = next(room for room, node in placed.items() if node == "node1")
    async with balancer.http.ws_connect(f"{balancer.url}/rtc?room={room_on_1}") as ws:
        assert (await ws.receive_json(timeout=5))["node"] == "node1"

        balancer.nodes["node1"].ready = False
        await balancer.wait_for({"node1": "DOWN", "node2": "UP", "node3": "UP"})
        # New requests for node1's rooms go to the others; no other room moves (consistent
        # hashing: with hash-type map-based some of node2's and node3's rooms would swap).
        now = await owners(balancer)
        assert {room: node for room, node in now.items() if placed[room] != "node1"} == {
            room: node for room, node in placed.items() if node != "node1"
        }
        assert {now[room] for room, node in placed.items() if node == "node1"} <= {"node2", "node3"}
        # A draining node keeps its open connections (its clients are told to move).
        await ws.send_str("still there")
        assert await ws.receive_str(timeout=5) == "still there"

    balancer.nodes["node1"].ready = True
    await balancer.wait_for(dict.fromkeys(NODES, "UP"))
    assert await owners(balancer) == placed
