"""Which rooms get an LL-HLS rendition, and when it starts and stops.

A live room (``kind == 'live'``) gets one rendition, produced once however many
viewers fetch it. It shows the room's program (:mod:`gbmedia.rooms.program`), the
same one WHEP players get, and follows the room's "program changed" events: the
rendition starts when the program has a video, is replaced (its URLs answer 404
until the new one has parts) when the program's video changes, and is removed
when the program has none or the room closes. When only the program's audio
changes, the rendition takes the new audio (a gap is filled with silence); a
rendition started without audio stays without it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gbmedia.metrics import Sample
from gbmedia.rooms.media import RoomEvents, RoomMedia
from gbmedia.rooms.program import Program
from gbmedia.rooms.store import Room, Rooms
from gbmedia.sfu.track import PublishedTrack
from gbmedia.streaming.packager import Program as Packager
from gbmedia.streaming.playlist import HlsConfig, Rendition

log = logging.getLogger(__name__)


@dataclass
class _Running:
    program: Packager
    video: PublishedTrack
    audio: PublishedTrack | None
    room: Room | None = None  # whose viewers the media served counts for (usage metering)


class HlsService:
    def __init__(self, config: HlsConfig, events: RoomEvents, rooms: Rooms, *, video_bitrate: int) -> None:
        self.config = config
        self.video_bitrate = video_bitrate
        self.running: dict[uuid.UUID, _Running] = {}
        self.bytes_served = 0
        # Told (room, seconds) for each part or segment served: the media time viewers fetched (usage metering).
        self.on_served: Callable[[Room, float], None] | None = None
        self._retired_parts = 0
        self._retired_encoded = 0
        self._retired_lost = 0
        self._retired_dropped = 0
        events.on_program(self._on_program)
        rooms.on_close(self._on_room_closed)

    def rendition(self, room_id: uuid.UUID) -> Rendition | None:
        running = self.running.get(room_id)
        return running.program.rendition if running is not None else None

    def served(self, room_id: uuid.UUID, seconds: float) -> None:
        """A player fetched ``seconds`` of the room's media."""
        running = self.running.get(room_id)
        if self.on_served is not None and running is not None and running.room is not None and seconds > 0:
            self.on_served(running.room, seconds)

    def program(self, room_id: uuid.UUID) -> Packager | None:
        running = self.running.get(room_id)
        return running.program if running is not None else None

    async def _on_program(self, live: RoomMedia, program: Program) -> None:
        """Only live rooms have a program (their audience tells it); a closing room starts nothing new."""
        room_id = live.room.id
        running = self.running.get(room_id)
        if running is not None and running.video is not program.video:
            await self._stop(room_id, "program_changed" if program.video is not None else "program_track_ended")
            running = None
        if program.video is None or live.closed:
            return
        if running is None:
            self._start(live, program.video, program.audio)
        elif running.audio is not program.audio and running.program.has_audio:
            if running.audio is not None:
                running.audio.remove_sink(running.program.audio_sink)  # the packager fills the gap with silence
            running.audio = program.audio
            if program.audio is not None:
                program.audio.add_sink(running.program.audio_sink)

    def _start(self, live: RoomMedia, video: PublishedTrack, audio: PublishedTrack | None) -> None:
        program = Packager(
            str(live.room.id),
            self.config,
            video_bitrate=self.video_bitrate,
            request_keyframe=video.request_keyframe,
            audio=audio is not None,
        )
        program.start()
        self.running[live.room.id] = _Running(program, video, audio, live.room)
        if audio is not None:
            audio.add_sink(program.audio_sink)
        video.add_sink(program.video_sink)
        log.info(
            "hls program started",
            extra={"room_id": str(live.room.id), "video_track": video.id, "audio_track": audio.id if audio else None},
        )

    async def _stop(self, room_id: uuid.UUID, reason: str) -> None:
        running = self.running.pop(room_id, None)
        if running is None:
            return
        running.video.remove_sink(running.program.video_sink)
        if running.audio is not None:
            running.audio.remove_sink(running.program.audio_sink)
        await running.program.stop()
        self._retired_parts += running.program.rendition.parts_total
        self._retired_encoded += running.program.stats.frames_encoded
        self._retired_lost += running.program.stats.packets_lost
        self._retired_dropped += running.program.stats.frames_dropped
        log.info("hls program stopped", extra={"room_id": str(room_id), "reason": reason})

    async def _on_room_closed(self, room: Room, reason: str) -> None:
        await self._stop(room.id, "room_closed")

    async def close(self) -> None:
        for room_id in list(self.running):
            await self._stop(room_id, "node_shutdown")

    def samples(self) -> list[Sample]:
        programs = [r.program for r in self.running.values()]
        return [
            Sample("gbmedia_hls_renditions", "LL-HLS renditions being produced on this node", len(programs)),
            Sample(
                "gbmedia_hls_parts_total",
                "LL-HLS partial segments produced",
                self._retired_parts + sum(p.rendition.parts_total for p in programs),
                counter=True,
            ),
            Sample(
                "gbmedia_hls_frames_transcoded_total",
                "Video frames encoded for HLS (VP8 sources only)",
                self._retired_encoded + sum(p.stats.frames_encoded for p in programs),
                counter=True,
            ),
            Sample(
                "gbmedia_hls_packets_lost_total",
                "RTP packets the HLS packager never got (sequence gaps)",
                self._retired_lost + sum(p.stats.packets_lost for p in programs),
                counter=True,
            ),
            Sample(
                "gbmedia_hls_frames_dropped_total",
                "Video frames the HLS packager dropped (broken by loss, or waiting for a keyframe)",
                self._retired_dropped + sum(p.stats.frames_dropped for p in programs),
                counter=True,
            ),
            Sample(
                "gbmedia_hls_bytes_served_total",
                "Bytes of HLS playlists and media served",
                self.bytes_served,
                counter=True,
            ),
        ]
