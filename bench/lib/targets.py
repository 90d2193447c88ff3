"""The servers a forwarding run measures, one after the other: gbmedia and Janus behind one interface.

Each target starts its server, publishes the run's one stream, tells the subscriber
workers how to join (only the signaling differs) and reads the server's own count of
packets sent, so the same load and the same counting code measure both.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib import janus
from bench.lib.errors import BenchError
from bench.lib.publisher import JanusPublisher, Publisher
from bench.lib.server import Server, create_tenant, read_metrics
from gbmedia.tenancy.tokens import Grants, mint_token

ROOM = "bench-forwarding"


class GbmediaTarget:
    """``gbmedia serve`` (embedded PostgreSQL), one tenant; subscribers join ``/rtc`` with their own tokens.

    ``gbmedia`` forwards on the native path (gbmedia/sfu/_fanout.c): it refuses to start without
    it rather than measure the other one; ``gbmedia-python`` on the Python path, the reference.
    ``--server-env`` comes last, so it can override either.
    """

    name = "gbmedia"
    native_forwarding = "on"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"GBMEDIA_NATIVE_FORWARDING": self.native_forwarding}
        if args.server_address:  # the subscribers on another host reach it (signaling and media) there
            env.update(GBMEDIA_HOST=args.server_address, GBMEDIA_PUBLIC_HOST=args.server_address)
        env.update(dict(args.server_env))
        self.server = Server(workdir, args.startup_timeout, env)
        self.key = self.secret = ""

    async def start(self, session: aiohttp.ClientSession) -> str:
        await self.server.start()
        # Enterprise: rooms of up to 1,000 participants (pro allows 300; the table goes to 512 subscribers).
        self.key, self.secret = await create_tenant(session, self.server.url, tier="enterprise")
        return (
            f"gbmedia serve on {self.server.url}, pid {self.server.pid}, "
            f"embedded PostgreSQL pid {self.server.postgres_pid()}"
        )

    async def publish(self, session: aiohttp.ClientSession, args: argparse.Namespace) -> Publisher:
        publisher = Publisher(args.bitrate, clip=args.clip)
        token = mint_token(self.key, self.secret, "publisher", Grants.participant(ROOM))
        await publisher.start(session, self.server.url, token, args.join_timeout)
        return publisher

    async def sent_packets(self, session: aiohttp.ClientSession, subs: list[dict[str, Any]]) -> int:
        """RTP packets gbmedia sent to subscribers so far, from its own counter on ``/metrics``."""
        metrics = await read_metrics(self.server.url, session)
        if "gbmedia_rtp_packets_forwarded_total" not in metrics:
            raise BenchError("gbmedia's /metrics has no gbmedia_rtp_packets_forwarded_total")
        return int(metrics["gbmedia_rtp_packets_forwarded_total"])

    def join_commands(self, n: int, per: int) -> list[dict[str, Any]]:
        """The ``join`` command of each subscriber worker: ``per`` subscribers each, ``n`` in all."""
        grants = Grants(room=ROOM, room_join=True, can_subscribe=True)
        tokens = [mint_token(self.key, self.secret, f"sub-{n}-{i}", grants, name=f"Subscriber {i}") for i in range(n)]
        return [
            {"cmd": "join", "server": "gbmedia", "url": self.server.url, "tokens": tokens[i : i + per]}
            for i in range(0, n, per)
        ]

    async def close(self) -> None:
        """Nothing beside the server to close."""


class JanusTarget:
    """Janus 1.1.2 VideoRoom (``bench.lib.janus``), one room; each subscriber its own Janus session."""

    name = "janus"
    room = 4242

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.server = janus.JanusServer(
            workdir,
            args.startup_timeout,
            args.janus_ip or args.server_address,
            args.janus_binary,
            http_ip=args.server_address or "127.0.0.1",
        )
        self.control: janus.JanusSession | None = None
        self.feed = 0

    async def start(self, session: aiohttp.ClientSession) -> str:
        await self.server.start()
        self.control = janus.JanusSession(session, self.server.url)
        await self.control.create()
        await janus.create_room(self.control, self.room)
        return (
            f"janus {self.server.version} on {self.server.url}, pid {self.server.pid}, ICE on "
            f"{self.server.ip}, room {self.room}"
        )

    async def publish(self, session: aiohttp.ClientSession, args: argparse.Namespace) -> Publisher:
        publisher = JanusPublisher(args.bitrate, clip=args.clip)
        await publisher.start(session, self.server.url, self.room, args.join_timeout)
        self.feed = publisher.feed_id
        return publisher

    async def sent_packets(self, session: aiohttp.ClientSession, subs: list[dict[str, Any]]) -> int:
        """RTP packets Janus sent to these subscribers so far, from its admin API (each handle's out stats)."""
        handles = [tuple(s["janus_handle"]) for s in subs if s.get("janus_handle")]
        return await janus.sent_packets(session, self.server, handles)

    def join_commands(self, n: int, per: int) -> list[dict[str, Any]]:
        """The ``join`` command of each subscriber worker: ``per`` subscribers each, ``n`` in all."""
        names = [f"sub-{n}-{i}" for i in range(n)]
        return [
            {
                "cmd": "join",
                "server": "janus",
                "url": self.server.url,
                "room": self.room,
                "feed": self.feed,
                "names": names[i : i + per],
            }
            for i in range(0, n, per)
        ]

    async def close(self) -> None:
        if self.control is not None:
            await self.control.destroy()


class GbmediaPythonTarget(GbmediaTarget):
    """gbmedia on its Python fan-out path (GBMEDIA_NATIVE_FORWARDING=off)."""

    name = "gbmedia-python"
    native_forwarding = "off"


Target = GbmediaTarget | JanusTarget
TARGETS: dict[str, type[GbmediaTarget] | type[JanusTarget]] = {
    "gbmedia": GbmediaTarget,
    "gbmedia-python": GbmediaPythonTarget,
    "janus": JanusTarget,
}
