"""What recording, live streaming and bots see of the rooms on this node.

They follow media, not membership: which tracks are published in which room, and
what a live room's program is. This small interface is all they depend on, so the
room model can change without them (and they never import the transports).
:class:`~gbmedia.rooms.live.LiveRooms` implements :class:`RoomEvents`, and its
rooms :class:`RoomMedia`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from gbmedia.rooms.program import Program
from gbmedia.rooms.store import Room
from gbmedia.sfu.track import PublishedTrack

PUBLISHED = "published"
ENDED = "ended"


class TrackOwner(Protocol):
    """Who publishes a track."""

    id: str
    identity: str


class RoomMedia(Protocol):
    """A room with live media on this node."""

    room: Room
    closed: bool

    def published(self) -> list[tuple[TrackOwner, PublishedTrack]]:
        """Every track being published in the room now, with its owner."""
        ...


# Told when a track starts (PUBLISHED) or stops (ENDED) being published; an ended
# track is still open (its sinks can be removed) while listeners run.
TrackListener = Callable[[str, RoomMedia, TrackOwner, PublishedTrack], Awaitable[None]]
# Told when a live room's program changes (a new video or audio, or none).
ProgramListener = Callable[[RoomMedia, Program], Awaitable[None]]


class RoomEvents(Protocol):
    def on_track(self, listener: TrackListener) -> None: ...

    def on_program(self, listener: ProgramListener) -> None: ...

    def media_of(self, room_id: uuid.UUID) -> RoomMedia | None:
        """The room's live media on this node, if it has any."""
        ...
