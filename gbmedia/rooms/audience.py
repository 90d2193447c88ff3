"""Live rooms (``kind = "live"``): hosts on stage, an audience that watches.

A meeting announces every participant to every other one. A live room with
thousands of viewers cannot: each join would be a message to thousands. So in a
live room only **hosts** (participants whose token carries ``can_publish``, or
viewers promoted to co-host) are announced and listed; **viewers** are counted.
The count (distinct identities of viewers on sockets and WHEP players) goes to
everyone as ``viewer_count``, on change but at most once per
:data:`VIEWER_COUNT_INTERVAL`, so a crowd arriving costs one message per second
per socket, not one per arrival.

Reactions (hearts) are rate-limited per participant and sent to the room in
batches (``reaction`` with a count per kind every :data:`REACTION_INTERVAL`),
for the same reason. A host or an administrator may invite a viewer to co-host;
when it accepts it gains ``can_publish`` and appears to everyone as a host.

WHIP ingest sessions are participants without a socket; WHEP playback sessions
are not participants at all (they cannot send or receive signaling): they are
audience members fed the room's **program** (:mod:`gbmedia.rooms.program`), which
the room's LL-HLS rendition follows too.

The audience is the live room's :class:`~gbmedia.rooms.policy.RoomPolicy`; it sees
its room only through :class:`~gbmedia.rooms.policy.RoomMembers`.

In a cluster a live audience may span nodes (:mod:`gbmedia.rooms.cascade`): the
room's own node (the origin) and edge nodes that serve further viewers from a copy
of the room. Each copy's audience has a :class:`AudienceLink` to the others: it
reports its own viewers, learns theirs (``remote``), so ``viewer_count`` is the
room's total everywhere, and hands its reactions on so hearts reach every viewer.
WHEP sessions that feed an edge (``PlaybackSession.edge``) are servers, not viewers:
they are neither counted nor charged against ``max_participants``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gbmedia.errors import ProtocolError
from gbmedia.metrics import Sample
from gbmedia.ratelimit import MemoryRateLimiter
from gbmedia.rooms.media import ENDED
from gbmedia.rooms.participant import Participant
from gbmedia.rooms.policy import RoomMembers
from gbmedia.rooms.program import NO_PROGRAM, Program, program_of
from gbmedia.sfu.playback import PlaybackPeer
from gbmedia.sfu.track import PublishedTrack

log = logging.getLogger(__name__)

VIEWER_COUNT_INTERVAL = 1.0  # seconds: the most often viewer_count goes out
REACTION_INTERVAL = 0.25  # seconds: reactions are batched this long
REACTION_RATE = 5.0  # reactions per second per participant, sustained
REACTION_BURST = 10


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


def new_etag() -> str:
    return f'"{uuid.uuid4().hex}"'


@dataclass(eq=False)
class IngestSession:
    """A WHIP encoder publishing as ``participant``."""

    id: str
    participant: Participant
    ice_ufrag: str | None
    etag: str = field(default_factory=new_etag)

    @property
    def identity(self) -> str:
        return self.participant.identity


@dataclass(eq=False)
class PlaybackSession:
    """A WHEP player watching the room's program, or an edge node pulling it (``edge``: that node's id)."""

    id: str
    identity: str
    name: str
    peer: PlaybackPeer
    ice_ufrag: str | None
    etag: str = field(default_factory=new_etag)
    edge: str | None = None
    started_at: float = field(default_factory=time.time)  # epoch seconds, for usage metering


class AudienceLink(Protocol):
    """The audience's tie to the room's copies on other nodes (gbmedia/rooms/cascade.py)."""

    def local_changed(self) -> None:
        """This node's viewers changed: report them (done in the background, coalesced)."""
        ...

    async def reactions(self, counts: dict[str, int]) -> None:
        """A batch of this node's reactions, for the viewers on the other nodes."""
        ...

    async def program_changed(self, program: Program) -> None:
        """The program of this copy changed (edges that pull from it follow)."""
        ...

    async def closed(self) -> None:
        """This copy of the room ends (closed, moved away, or an edge released)."""
        ...


class Audience:
    """The live-room policy of one room: viewers, reactions, co-hosts, sessions, the program."""

    def __init__(self, live: RoomMembers) -> None:
        self.live = live
        self.current_program = NO_PROGRAM  # the program players show and the room's followers were told of
        self.ingest: dict[str, IngestSession] = {}
        self.playback: dict[str, PlaybackSession] = {}
        self.invites: dict[str, str] = {}  # invited participant id -> inviting participant id
        # Participants that have their `joined`: counts and reactions go only to them, so a
        # newcomer's first message is always its `joined` (which carries the count).
        self.greeted: set[str] = set()
        self._reactions = MemoryRateLimiter(REACTION_RATE, REACTION_BURST)
        self._pending_reactions: Counter[str] = Counter()
        self._sent_count: int | None = None
        self._count_sent_at = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._count_task: asyncio.Task[None] | None = None
        self._reaction_task: asyncio.Task[None] | None = None
        self.closed = False
        self.link: AudienceLink | None = None  # set in a cluster (gbmedia/rooms/cascade.py)
        self.remote: dict[str, int] = {}  # viewers the room's copies on other nodes serve, by node id

    # --- who is who ------------------------------------------------------------------

    def announced(self, participant: Participant) -> bool:
        """Whether the room hears of ``participant`` one by one (hosts do, viewers are counted)."""
        return participant.is_host

    def local_viewer_count(self) -> int:
        """Viewers on this node: distinct identities on sockets and WHEP players, hosts left out."""
        participants = self.live.participants.values()
        hosts = {p.identity for p in participants if p.is_host}
        viewers = {p.identity for p in participants if p.is_viewer}
        viewers |= {s.identity for s in self.playback.values() if s.edge is None}
        return len(viewers - hosts)

    def viewer_count(self) -> int:
        """The room's viewers: this node's and those of its copies on other nodes."""
        return self.local_viewer_count() + sum(self.remote.values())

    def audience_size(self) -> int:
        """Who this copy of the room serves beyond its hosts: viewers, players and edges pulling from it."""
        viewers = sum(1 for p in self.live.participants.values() if not p.is_host)
        return viewers + len(self.playback)

    @property
    def players(self) -> list[PlaybackSession]:
        return [s for s in self.playback.values() if s.edge is None]

    def occupancy(self) -> int:
        """What counts against the room's ``max_participants``: participants and players (not edges)."""
        return len(self.live.participants) + len(self.players)

    def set_remote(self, node_id: str, count: int) -> None:
        """Another node reports the viewers it serves (0: none, forgotten)."""
        before = self.remote.get(node_id, 0)
        if count > 0:
            self.remote[node_id] = count
        else:
            self.remote.pop(node_id, None)
        if count != before:
            self.count_changed(report=False)

    def joined_extra(self) -> dict[str, Any]:
        return {"viewer_count": self.viewer_count()}

    # --- membership hooks (called by LiveRoom) -------------------------------------------

    def joined(self, participant: Participant) -> None:
        self.count_changed()

    def greet(self, participant: Participant) -> None:
        self.greeted.add(participant.id)

    async def broadcast(self, message: dict[str, Any]) -> None:
        """To every participant that has its ``joined`` (others get the state in it)."""
        await asyncio.gather(*(q.send(message) for q in list(self.live.participants.values()) if q.id in self.greeted))

    async def left(self, participant: Participant) -> None:
        self.greeted.discard(participant.id)
        self.invites.pop(participant.id, None)
        for invited, inviter in list(self.invites.items()):
            if inviter == participant.id:
                del self.invites[invited]
        for session_id, session in list(self.ingest.items()):
            if session.participant is participant:
                del self.ingest[session_id]
        self.count_changed()
        await self.update_program()

    def count_changed(self, *, report: bool = True) -> None:
        """Schedule a ``viewer_count`` (sent only if the count differs from the last one sent);
        ``report``: this node's own viewers changed, so the other nodes are told."""
        if self.closed:
            return
        if report and self.link is not None:
            self.link.local_changed()
        if self._count_task is not None:
            return
        self._count_task = self._spawn(self._send_count())

    async def _send_count(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            wait = self._count_sent_at + VIEWER_COUNT_INTERVAL - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        finally:
            self._count_task = None
        count = self.viewer_count()
        if count == self._sent_count or self.closed:
            return
        self._sent_count, self._count_sent_at = count, loop.time()
        await self.broadcast({"type": "viewer_count", "count": count})

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- messages on the socket ------------------------------------------------------

    async def react(self, participant: Participant, kind: str) -> None:
        decision = await self._reactions.take(participant.id)
        if not decision.allowed:
            raise ProtocolError(
                "reaction_rate_limited",
                f"at most {REACTION_RATE:g} reactions a second",
                details={"retry_after": round(decision.retry_after, 3)},
            )
        self._pending_reactions[kind] += 1
        if self._reaction_task is None:
            self._reaction_task = self._spawn(self._send_reactions())

    async def _send_reactions(self) -> None:
        try:
            await asyncio.sleep(REACTION_INTERVAL)
        finally:
            self._reaction_task = None
        pending, self._pending_reactions = self._pending_reactions, Counter()
        await self.remote_reactions(pending)
        if self.link is not None and pending:
            await self.link.reactions(dict(pending))

    async def remote_reactions(self, counts: dict[str, int]) -> None:
        """Reactions to show this node's participants (its own batch, or another node's)."""
        for kind, count in counts.items():
            await self.broadcast({"type": "reaction", "kind": kind, "count": count})

    async def invite(self, inviter: Participant, participant_id: str) -> None:
        if not (inviter.is_host or inviter.grants.moderates(self.live.room.name)):
            raise ProtocolError("cohost_not_allowed", "only a host or a room_admin may invite co-hosts")
        target = self.live.participants.get(participant_id) or next(
            (q for q in self.live.participants.values() if q.identity == participant_id), None
        )
        if target is None or target.grants.hidden:
            raise ProtocolError("participant_not_found", f"no participant {participant_id} in the room")
        if target.is_host:
            raise ProtocolError("already_host", f"{target.identity} is already a host")
        self.invites[target.id] = inviter.id
        await target.send(
            {"type": "cohost_invite", "from": {"id": inviter.id, "identity": inviter.identity, "name": inviter.name}}
        )

    async def answer_invite(self, participant: Participant, accept: bool) -> dict[str, Any]:
        inviter_id = self.invites.pop(participant.id, None)
        if inviter_id is None:
            raise ProtocolError("no_invite", "nobody has invited you to co-host")
        inviter = self.live.participants.get(inviter_id)
        if inviter is not None:
            await inviter.send(
                {
                    "type": "cohost_answer",
                    "participant_id": participant.id,
                    "identity": participant.identity,
                    "accepted": accept,
                }
            )
        if not accept:
            return {"type": "ack"}
        participant.grants = dataclasses.replace(participant.grants, can_publish=True)
        log.info(
            "viewer became a co-host",
            extra={"room_id": str(self.live.room.id), "participant_id": participant.id, "invited_by": inviter_id},
        )
        await self.live.broadcast(
            {"type": "participant_joined", "participant": participant.to_json()}, exclude=participant
        )
        self.count_changed()
        return {"type": "cohost_started", "grants": participant.grants.to_claim()}

    # --- the program and its players ----------------------------------------------------

    async def track_changed(self, event: str, track: PublishedTrack) -> None:
        await self.update_program(ended=track if event == ENDED else None)

    async def update_program(self, ended: PublishedTrack | None = None) -> None:
        """Follow the program after a publish, an end (``ended`` is still open), a leave or a new player:
        point every player at it, and tell the room when it changed."""
        program = program_of(self.live.participants.values(), without=ended)
        live_tracks = set(self.live.tracks().values())
        for session in self.playback.values():
            self._point(session, program, ended, live_tracks)
        if program != self.current_program:
            self.current_program = program
            await self.live.program_changed(program)
            if self.link is not None:
                await self.link.program_changed(program)

    @staticmethod
    def _point(
        session: PlaybackSession, program: Program, ended: PublishedTrack | None, live_tracks: set[PublishedTrack]
    ) -> None:
        for kind in session.peer.slots:
            wanted = program.get(kind)
            current = session.peer.playing(kind)
            if wanted is not None and session.peer.can_play(wanted):
                if current is not wanted:
                    session.peer.play(wanted)
            elif current is not None and (current is ended or current not in live_tracks):
                session.peer.stop(kind)

    def sessions_of(self, identity: str) -> int:
        """The WHEP players ``identity`` holds in this copy of the room (checked against its limit)."""
        return sum(1 for s in self.players if s.identity == identity)

    async def add_playback(self, session: PlaybackSession) -> None:
        self.playback[session.id] = session
        await self.update_program()
        self.count_changed()

        @session.peer.pc.on("connectionstatechange")
        async def on_state() -> None:
            if session.peer.pc.connectionState in ("failed", "closed") and session.id in self.playback:
                await self.end_playback(session, "connection_" + session.peer.pc.connectionState)

        async def end_unconnected() -> None:
            if self.playback.get(session.id) is session:
                await self.end_playback(session, "connect_timeout")

        self._reap_unless_connected(session.id, session.peer.pc, end_unconnected)

    def _reap_unless_connected(self, session_id: str, pc: Any, end: Callable[[], Awaitable[None]]) -> None:
        """End a session whose connection is not up within the connect timeout.

        A session without a socket ends only when its connection fails or closes, and a
        connection whose ICE never completes (an offer with unreachable candidates, a
        player that posted and went away) stays ``connecting`` for ever in aiortc: it
        would count against ``max_participants`` and keep the room open. A connection up
        by then is left alone (its later failure ends it through ``connectionstatechange``).
        """

        async def check() -> None:
            await asyncio.sleep(self.live.session_limits.connect_timeout)
            if pc.connectionState in ("connected", "closed"):  # up, or already ended (DELETE, a failure)
                return
            log.info(
                "session not connected in time; ending it",
                extra={"room_id": str(self.live.room.id), "session_id": session_id, "state": pc.connectionState},
            )
            try:
                await end()
            except Exception:  # its connection is closed (leave's finally); nothing else to undo
                log.exception("ending an unconnected session failed", extra={"session_id": session_id})

        self._spawn(check())

    async def end_playback(self, session: PlaybackSession, reason: str = "deleted") -> None:
        if self.playback.pop(session.id, None) is None:
            return
        self.live.session_ended(session)
        await session.peer.close()
        self.count_changed()
        log.info(
            "playback ended", extra={"room_id": str(self.live.room.id), "session_id": session.id, "reason": reason}
        )

    def add_ingest(self, session: IngestSession) -> None:
        self.ingest[session.id] = session
        publisher = session.participant.publisher
        if publisher is None:  # pragma: no cover - WHIP creates the publisher before this
            return

        @publisher.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = publisher.pc.connectionState
            if state in ("failed", "closed") and self.ingest.get(session.id) is session:
                del self.ingest[session.id]
                await self.live.leave(session.participant, "disconnected")

        async def end_unconnected() -> None:
            if self.ingest.get(session.id) is session:
                del self.ingest[session.id]
                await self.live.leave(session.participant, "connect_timeout")

        self._reap_unless_connected(session.id, publisher.pc, end_unconnected)

    async def close(self) -> None:
        self.closed = True
        for session in list(self.playback.values()):
            await self.end_playback(session, "room_closed")
        self.ingest.clear()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            try:
                await self.link.closed()
            except Exception:  # the other nodes find out by themselves (their heartbeat checks)
                log.exception("telling other nodes the room ended failed", extra={"room_id": str(self.live.room.id)})


def audience_samples(audiences: list[Audience]) -> list[Sample]:
    return [
        Sample(
            "gbmedia_live_viewers",
            "Viewers this node serves in live rooms (distinct identities on sockets and WHEP players)",
            sum(a.local_viewer_count() for a in audiences),
        ),
        Sample("gbmedia_whip_sessions", "WHIP ingest sessions", sum(len(a.ingest) for a in audiences)),
        Sample("gbmedia_whep_sessions", "WHEP playback sessions", sum(len(a.players) for a in audiences)),
        Sample(
            "gbmedia_cascade_feeds",
            "Live rooms' programs this node sends to edge nodes (one per edge that pulls from it)",
            sum(len(a.playback) - len(a.players) for a in audiences),
        ),
    ]
