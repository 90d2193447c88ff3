"""Active speakers per live room, broadcast as ``speakers`` events.

Wiring only: :class:`gbmedia.sfu.speakers.SpeakerDetector` does the measuring. Every
audio track published in a live room gets a level meter (a packet sink); while a room
has audio tracks a task ticks its detector every ``GBMEDIA_SPEAKER_INTERVAL_MS`` and
sends the room's participants the ordered list whenever it changed; a participant
that joined (or resumed on a new socket) since gets the current list at the next
tick. Hidden participants (recorders, bots with the ``hidden`` grant) are never
listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.participant import Participant
from gbmedia.sfu.speakers import SpeakerDetector
from gbmedia.sfu.track import PublishedTrack

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _RoomState:
    detector: SpeakerDetector
    task: asyncio.Task[None] | None = None
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # metered audio tracks by id
    told: dict[str, object] = field(default_factory=dict)  # participant id -> the socket sender that has the list


class RoomSpeakers:
    """Active speaker detection for every live room of a node."""

    def __init__(self, live_rooms: LiveRooms, interval: float) -> None:
        self.interval = interval
        self._rooms: dict[LiveRoom, _RoomState] = {}
        self._closed = False
        live_rooms.on_track(self._on_track)

    async def _on_track(self, event: str, live: LiveRoom, participant: Participant, track: PublishedTrack) -> None:
        if track.kind != "audio" or participant.grants.hidden or self._closed:
            return
        state = self._rooms.get(live)
        if event == "published":
            if state is None:
                state = self._rooms[live] = _RoomState(SpeakerDetector())
            track.add_sink(state.detector.add(participant.id, track.id))
            state.tracks[track.id] = track
            if state.task is None:
                state.task = asyncio.ensure_future(self._run(live, state))
        elif state is not None and track.id in state.tracks:
            meter = state.detector.remove(participant.id, track.id)
            if meter is not None:
                track.remove_sink(meter)
            del state.tracks[track.id]

    async def _run(self, live: LiveRoom, state: _RoomState) -> None:
        """Tick until the room has no audio left (after telling it nobody speaks) or closes."""
        try:
            while not live.closed:
                await asyncio.sleep(self.interval)
                changed = state.detector.tick()
                await self._tell(live, state, changed is not None)
                if state.detector.empty and not state.detector.speakers:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # a failure here must never take the room down
            log.exception("speaker detection failed", extra={"room_id": str(live.room.id)})
        finally:
            if self._rooms.get(live) is state:
                del self._rooms[live]

    @staticmethod
    async def _tell(live: LiveRoom, state: _RoomState, changed: bool) -> None:
        """Send the list to everyone when it changed, else to whoever lacks it: a newcomer,
        or a participant that resumed on a new socket (its client starts from an empty list)."""
        speakers = state.detector.speakers
        if not changed and not speakers:
            return
        event = {"type": "speakers", "speakers": [s.to_json() for s in speakers]}
        if changed:
            state.told.clear()
        targets = [
            p for p in live.participants.values() if p.connected and state.told.get(p.id) is not p.send_to_socket
        ]
        for participant in targets:
            state.told[participant.id] = participant.send_to_socket
        await asyncio.gather(*(p.send(event) for p in targets))

    async def close(self) -> None:
        self._closed = True
        for state in list(self._rooms.values()):
            if state.task is not None:
                state.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.task
        self._rooms.clear()
