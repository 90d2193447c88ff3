"""Usage of this node's rooms: participant, publishing and viewer minutes, and bytes sent.

What counts (docs/api.md, "Usage"):

* ``subscribe_minutes``: a participant's time in a room, from its join to its leave
  (a resume within the grace period is the same session). Hidden participants
  (recorders, bots at work) are the service's own and are not billed.
* ``publish_minutes``: the time a participant has at least one published track (WHIP
  encoders too).
* ``viewer_minutes``: a live room's viewers instead of ``subscribe_minutes``:
  ``channel`` ``webrtc`` for viewers on the socket, ``whep`` for WHEP players (edge
  nodes' pulls are servers, not viewers).
* ``bytes_out``: RTP bytes forwarded to subscribers and players, per room.

Starts and ends are exact: a session starts at the participant's ``joined_at`` (or a
player's ``started_at``) and stops when :class:`~gbmedia.rooms.live.LiveRooms` says it
left; publishing starts and stops with the track events. Before each of the meter's
flushes :meth:`RoomMeter.scan` opens what it has not seen yet, closes what is gone
without being told, and takes the byte counts' growth.
"""

from __future__ import annotations

import time

from gbmedia.rooms.audience import PlaybackSession
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.media import PUBLISHED, RoomMedia, TrackOwner
from gbmedia.rooms.participant import Participant
from gbmedia.rooms.store import Room
from gbmedia.sfu.track import PublishedTrack
from gbmedia.tenancy.metering import Usage, UsageMeter


def _owner(room: Room) -> Usage:
    return Usage(room.customer_id, room.instance_id, room.id)


def _metered(participant: Participant) -> bool:
    return participant.fed_by is None and not participant.grants.hidden


class RoomMeter:
    def __init__(self, meter: UsageMeter, live_rooms: LiveRooms) -> None:
        self.meter = meter
        self.live_rooms = live_rooms
        self.opened: set[str] = set()  # session ids this module opened and has not closed
        self._bytes: dict[PublishedTrack, int] = {}  # bytes_forwarded already counted, per track

    def attach(self) -> None:
        self.live_rooms.on_track(self.track_changed)
        self.live_rooms.on_session_end(self.session_ended)
        self.meter.before_flush(self.scan)

    # --- sessions -------------------------------------------------------------------------

    def _presence(self, live: LiveRoom, participant: Participant) -> str:
        session_id = f"in:{participant.id}"
        if session_id not in self.opened:
            viewer = live.room.kind == "live" and participant.is_viewer
            self.meter.open(
                session_id,
                _owner(live.room),
                "viewer_minutes" if viewer else "subscribe_minutes",
                subject=participant.identity,
                channel="webrtc" if viewer else None,
                started=participant.joined_at.timestamp(),
            )
            self.opened.add(session_id)
        return session_id

    def _publishing(self, room: Room, participant: Participant) -> str:
        session_id = f"pub:{participant.id}"
        if session_id not in self.opened:
            self.meter.open(session_id, _owner(room), "publish_minutes", subject=participant.identity)
            self.opened.add(session_id)
        return session_id

    def _player(self, live: LiveRoom, session: PlaybackSession) -> str:
        session_id = f"whep:{session.id}"
        if session_id not in self.opened:
            self.meter.open(
                session_id,
                _owner(live.room),
                "viewer_minutes",
                subject=session.identity,
                channel="whep",
                started=session.started_at,
            )
            self.opened.add(session_id)
        return session_id

    def _close(self, session_id: str, at: float) -> None:
        if session_id in self.opened:
            self.opened.discard(session_id)
            self.meter.close(session_id, at)

    def session_ended(self, live: LiveRoom, session: Participant | PlaybackSession) -> None:
        now = time.time()
        if isinstance(session, PlaybackSession):
            if session.edge is None:
                self._close(self._player(live, session), now)
            return
        if _metered(session):
            self._close(self._presence(live, session), now)
            self._close(f"pub:{session.id}", now)

    async def track_changed(self, event: str, live: RoomMedia, owner: TrackOwner, track: PublishedTrack) -> None:
        if not isinstance(owner, Participant) or not _metered(owner):
            return
        if event == PUBLISHED:
            self._publishing(live.room, owner)
            return
        self._count_bytes(live.room, track)
        self._bytes.pop(track, None)
        if not any(t is not track for t in owner.published):
            self._close(f"pub:{owner.id}", time.time())

    # --- the scan before each flush ---------------------------------------------------------

    def _count_bytes(self, room: Room, track: PublishedTrack) -> None:
        sent = track.bytes_forwarded
        grown = sent - self._bytes.get(track, 0)
        if grown > 0:
            self.meter.count(Usage(room.customer_id, room.instance_id, room.id), "bytes_out", grown)
        self._bytes[track] = max(sent, self._bytes.get(track, 0))

    def scan(self) -> None:
        seen: set[str] = set()
        tracks: set[PublishedTrack] = set()
        for live in list(self.live_rooms.live.values()):
            if live.closed:
                continue
            for participant in list(live.participants.values()):
                for track in participant.published:
                    self._count_bytes(live.room, track)
                    tracks.add(track)
                if not _metered(participant):
                    continue
                seen.add(self._presence(live, participant))
                if participant.published and not live.edge:
                    seen.add(self._publishing(live.room, participant))
            audience = live.audience
            if audience is not None:
                for player in list(audience.playback.values()):
                    if player.edge is None:
                        seen.add(self._player(live, player))
        now = time.time()
        for session_id in self.opened - seen:
            self._close(session_id, now)
        for track in [t for t in self._bytes if t not in tracks]:
            del self._bytes[track]
