"""The webhook events of a node's live rooms: participants, tracks, and live rooms going on air.

Rooms starting and finishing are written by :mod:`gbmedia.rooms.store` in the
transaction that opens or closes the room. What happens only in a node's memory (a
participant joining, a track published, a live room's program appearing) has no
transaction: :class:`RoomWebhooks` follows :class:`~gbmedia.rooms.live.LiveRooms` and
writes each such event in one of its own as it happens
(:class:`~gbmedia.tenancy.webhook_events.WebhookEmitter`).

Which participants count: the announced ones, those the room's others hear of (not
``hidden`` recorders and bots at work, not a live room's viewers, who are an audience
and not members). A live room is on air (``live_started``) from the moment its
program has a track (its host publishes) until it has none (``live_ended``), or the
room ends under it.
"""

from __future__ import annotations

import uuid
from typing import Any

from gbmedia.rooms.live import JOINED, LiveRoom, LiveRooms
from gbmedia.rooms.media import PUBLISHED, RoomMedia, TrackOwner
from gbmedia.rooms.participant import Participant, track_json
from gbmedia.rooms.program import Program
from gbmedia.rooms.store import Room
from gbmedia.rooms.store import room_hook_json as room_json
from gbmedia.sfu.track import PublishedTrack
from gbmedia.tenancy.webhook_events import WebhookEmitter


def participant_json(participant: TrackOwner) -> dict[str, Any]:
    return {"id": participant.id, "identity": participant.identity, "name": getattr(participant, "name", "")}


class RoomWebhooks:
    def __init__(self, emitter: WebhookEmitter) -> None:
        self.emitter = emitter
        self.on_air: set[uuid.UUID] = set()  # live rooms of this node whose program has a track

    def attach(self, live_rooms: LiveRooms) -> None:
        live_rooms.on_member(self.member_changed)
        live_rooms.on_track(self.track_changed)
        live_rooms.on_program(self.program_changed)
        live_rooms.rooms.on_close(self.room_closed)

    async def member_changed(self, event: str, live: LiveRoom, participant: Participant, reason: str) -> None:
        data: dict[str, Any] = {"room": room_json(live.room), "participant": participant_json(participant)}
        if event == JOINED:
            await self.emitter.publish(live.room.instance_id, "participant_joined", data)
        else:
            await self.emitter.publish(live.room.instance_id, "participant_left", {**data, "reason": reason})

    async def track_changed(self, event: str, live: RoomMedia, owner: TrackOwner, track: PublishedTrack) -> None:
        kind = "track_published" if event == PUBLISHED else "track_unpublished"
        data = {"room": room_json(live.room), "participant": participant_json(owner), "track": track_json(track)}
        await self.emitter.publish(live.room.instance_id, kind, data)

    async def program_changed(self, live: RoomMedia, program: Program) -> None:
        room = live.room
        has_media = program.video is not None or program.audio is not None
        if has_media and room.id not in self.on_air:
            self.on_air.add(room.id)
            await self.emitter.publish(room.instance_id, "live_started", {"room": room_json(room)})
        elif not has_media and room.id in self.on_air:
            self.on_air.discard(room.id)
            await self.emitter.publish(
                room.instance_id, "live_ended", {"room": room_json(room), "reason": "no_program"}
            )

    async def room_closed(self, room: Room, reason: str) -> None:
        if room.id in self.on_air:
            self.on_air.discard(room.id)
            await self.emitter.publish(room.instance_id, "live_ended", {"room": room_json(room), "reason": reason})
