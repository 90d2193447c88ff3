"""A participant of a room on this node: who it is, what it may do, its connections.

The participant is plain state; the room (:mod:`gbmedia.rooms.live`) decides what
happens to it, and holds it (a participant does not point back at its room, so this
module needs nothing of the room's). Its subscriber connection's offer/answer state has one owner,
:class:`~gbmedia.rooms.negotiation.SubscriberNegotiation`, created with it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gbmedia.rooms.negotiation import SubscriberNegotiation
from gbmedia.sfu.forwarder import DownTrack
from gbmedia.sfu.paths import ClientPath, ServerPath, server_path
from gbmedia.sfu.peers import PublisherPeer, SubscriberPeer
from gbmedia.sfu.track import PublishedTrack
from gbmedia.tenancy.tokens import Grants

Send = Callable[[dict[str, Any]], Awaitable[None]]


def track_json(track: PublishedTrack) -> dict[str, Any]:
    return {
        "id": track.id,
        "kind": track.kind,
        "source": track.source,
        "name": track.name,
        "muted": track.muted,
        "mid": track.mid,
        "layers": list(track.rids),
    }


@dataclass(eq=False)
class Participant:
    identity: str
    name: str
    grants: Grants
    auto_subscribe: bool
    send_to_socket: Send | None
    id: str = field(default_factory=lambda: "PA_" + uuid.uuid4().hex[:12])
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    publisher: PublisherPeer | None = None
    subscriber: SubscriberPeer | None = None
    negotiation: SubscriberNegotiation | None = None  # the subscriber connection's offers and answers
    subscriptions: dict[str, DownTrack] = field(default_factory=dict)
    grace_task: asyncio.Task[None] | None = None
    joined_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # On an edge node (gbmedia/rooms/cascade.py): the host whose program this node pulls from the node named
    # here; it has no socket, and its publisher is the pulling connection. None for everyone else.
    fed_by: str | None = None
    # The path each media connection ("publisher", "subscriber") took when it last connected, as the
    # node's ICE agent saw it, and as the client reported it (gbmedia/sfu/paths.py).
    server_paths: dict[str, ServerPath] = field(default_factory=dict)
    client_paths: dict[str, ClientPath] = field(default_factory=dict)
    media_restarts: int = 0  # connections replaced after their media path failed
    # A publisher restart's tracks its first offer did not carry, waiting for the next (gbmedia/rooms/live.py).
    held_tracks: list[PublishedTrack] = field(default_factory=list)
    held_task: asyncio.Task[None] | None = None
    # A publisher restart's tracks while its new connection is being answered: still published (players,
    # the program, subscriptions must not see them vanish and come back), each until the answer adopts it.
    restarting: list[PublishedTrack] = field(default_factory=list)

    def connect_subscriber(self, subscriber: SubscriberPeer, *, restart: bool = False) -> None:
        """Give the participant its subscriber connection (``restart``: replacing one); offers go out on its socket."""
        self.subscriber = subscriber
        self.negotiation = SubscriberNegotiation(subscriber, self.send, restart=restart)

    @property
    def connected(self) -> bool:
        """False while the socket is away (within the resume grace period)."""
        return self.send_to_socket is not None

    @property
    def published(self) -> list[PublishedTrack]:
        tracks = list(self.publisher.tracks.values()) if self.publisher else []
        return tracks + [t for t in self.restarting if t not in tracks] if self.restarting else tracks

    @property
    def is_host(self) -> bool:
        """Publishes and is seen: in a live room, a host (announced); everyone else there is counted."""
        return self.grants.can_publish and not self.grants.hidden

    @property
    def is_viewer(self) -> bool:
        return not self.grants.can_publish and not self.grants.hidden

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "tracks": [track_json(t) for t in self.published],
        }

    def to_admin_json(self) -> dict[str, Any]:
        """What the Room API shows: the protocol's view plus state and grants."""
        return {
            **self.to_json(),
            "state": "active" if self.connected else "disconnected",
            "joined_at": self.joined_at.isoformat(),
            "hidden": self.grants.hidden,
            "can_publish": self.grants.can_publish,
            "can_subscribe": self.grants.can_subscribe,
            "subscriptions": sorted(self.subscriptions),
        }

    def connections_json(self) -> dict[str, Any]:
        """Each media connection's state and path now: the node's view (``server``: the nominated pair,
        read live) and the client's (``client``: its last ``media_path`` report); null where unknown."""
        out: dict[str, Any] = {}
        for name, peer in (("publisher", self.publisher), ("subscriber", self.subscriber)):
            pc = getattr(peer, "pc", None)  # an edge's pulled feed has a connection too; a bot's may not
            if pc is None:
                out[name] = None
                continue
            path = server_path(pc)
            client = self.client_paths.get(name)
            out[name] = {
                "state": pc.connectionState,
                "server": path.to_json() if path is not None else None,
                "client": client.to_json() if client is not None else None,
            }
        return {**out, "restarts": self.media_restarts}

    async def send(self, message: dict[str, Any]) -> None:
        """Deliver an event; dropped while the socket is away (resume resends state)."""
        if self.send_to_socket is not None:
            try:
                await self.send_to_socket(message)
            except (ConnectionError, RuntimeError):
                self.send_to_socket = None
