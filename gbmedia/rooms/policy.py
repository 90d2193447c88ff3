"""How a room's kind shapes it: a meeting, where everyone is announced, or a live room.

A :class:`~gbmedia.rooms.live.LiveRoom` delegates every kind-dependent decision to
one policy object made for its kind, so the room has no branches on its kind:
:class:`MeetingPolicy` here, :class:`~gbmedia.rooms.audience.Audience` for live
rooms (hosts announced, viewers counted, reactions, co-hosts, WHIP/WHEP sessions,
the program). A policy sees its room only through :class:`RoomMembers`, so the
policies never import the room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gbmedia.rooms.participant import Participant
from gbmedia.rooms.program import Program
from gbmedia.rooms.store import Room
from gbmedia.sfu.track import PublishedTrack


@dataclass(frozen=True)
class SessionLimits:
    """How long a session without a socket (WHIP, WHEP) has to connect, and how many one identity may hold.

    Such a session has no socket whose close would end it: one whose ICE never completes
    would stay for ever, counted against the room's participants (GBMEDIA_MEDIA_CONNECT_TIMEOUT_SECONDS,
    GBMEDIA_MAX_SESSIONS_PER_IDENTITY).
    """

    connect_timeout: float = 20.0
    per_identity: int = 5


class RoomMembers(Protocol):
    """What a policy may see and do of its room."""

    room: Room
    participants: dict[str, Participant]
    session_limits: SessionLimits

    def tracks(self) -> dict[str, PublishedTrack]: ...

    async def broadcast(self, message: dict[str, Any], *, exclude: Participant | None = None) -> None: ...

    async def leave(self, participant: Participant, reason: str = "left") -> None: ...

    async def program_changed(self, program: Program) -> None:
        """Tell whoever follows the room's program (LL-HLS) that it changed."""
        ...

    def session_ended(self, session: Any) -> None:
        """Tell the node's followers (usage metering) that a participant or WHEP player left."""
        ...


class RoomPolicy(Protocol):
    def announced(self, participant: Participant) -> bool:
        """Whether the others hear of a (not hidden) participant one by one."""
        ...

    def occupancy(self) -> int:
        """What counts against the room's ``max_participants``."""
        ...

    def joined(self, participant: Participant) -> None: ...

    def greet(self, participant: Participant) -> None:
        """The participant has its ``joined`` message: room-wide updates may go to it now."""
        ...

    async def left(self, participant: Participant) -> None: ...

    def joined_extra(self) -> dict[str, Any]:
        """What this kind adds to a ``joined`` message."""
        ...

    async def track_changed(self, event: str, track: PublishedTrack) -> None:
        """A track was published or is ending (still open) in the room."""
        ...

    async def close(self) -> None: ...


class MeetingPolicy:
    """A meeting: everyone (but the hidden) is announced; participants fill the room."""

    def __init__(self, members: RoomMembers) -> None:
        self.members = members

    def announced(self, participant: Participant) -> bool:
        return True

    def occupancy(self) -> int:
        return len(self.members.participants)

    def joined(self, participant: Participant) -> None:
        pass

    def greet(self, participant: Participant) -> None:
        pass

    async def left(self, participant: Participant) -> None:
        pass

    def joined_extra(self) -> dict[str, Any]:
        return {}

    async def track_changed(self, event: str, track: PublishedTrack) -> None:
        pass

    async def close(self) -> None:
        pass
