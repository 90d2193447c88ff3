"""Which rooms get an LL-HLS rendition, and when it starts and stops.

A live room (``kind == 'live'``) gets one rendition, produced once however many
viewers fetch it: its program is the first video track published in the room and
the audio track of the same participant. When that video track ends the rendition
is removed (its URLs answer 404) and the next video track in the room, if any,
starts a new one; when the room closes everything goes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from gbmedia.metrics import Sample
from gbmedia.rooms.live import LiveRoom, LiveRooms, Participant
from gbmedia.rooms.store import Room, Rooms
from gbmedia.sfu.track import PublishedTrack
from gbmedia.streaming.packager import Program
from gbmedia.streaming.playlist import HlsConfig, Rendition

log = logging.getLogger(__name__)


@dataclass
class _Running:
    program: Program
    video: PublishedTrack
    audio: PublishedTrack | None


class HlsService:
    def __init__(self, config: HlsConfig, live_rooms: LiveRooms, rooms: Rooms, *, video_bitrate: int) -> None:
        self.config = config
        self.video_bitrate = video_bitrate
        self.live_rooms = live_rooms
        self.running: dict[uuid.UUID, _Running] = {}
        self.bytes_served = 0
        self._retired_parts = 0
        self._retired_encoded = 0
        self._retired_lost = 0
        self._retired_dropped = 0
        live_rooms.on_track(self._on_track)
        rooms.on_close(self._on_room_closed)

    def rendition(self, room_id: uuid.UUID) -> Rendition | None:
        running = self.running.get(room_id)
        return running.program.rendition if running is not None else None

    def program(self, room_id: uuid.UUID) -> Program | None:
        running = self.running.get(room_id)
        return running.program if running is not None else None

    async def _on_track(self, event: str, live: LiveRoom, participant: Participant, track: PublishedTrack) -> None:
        if live.room.kind != "live":
            return
        room_id = live.room.id
        running = self.running.get(room_id)
        if event == "published":
            if running is None and track.kind == "video":
                self._start(live, participant, track)
            return
        if running is not None and track is running.video:
            await self._stop(room_id, "program_track_ended")
            if not live.closed:
                self._start_next(live, exclude=track)
        elif running is not None and track is running.audio:
            track.remove_sink(running.program.audio_sink)  # the packager fills the gap with silence
            running.audio = None

    def _start_next(self, live: LiveRoom, *, exclude: PublishedTrack) -> None:
        for participant in live.participants.values():
            for track in participant.published:
                if track.kind == "video" and track is not exclude:
                    self._start(live, participant, track)
                    return

    def _start(self, live: LiveRoom, participant: Participant, video: PublishedTrack) -> None:
        audio = next((t for t in participant.published if t.kind == "audio"), None)
        program = Program(
            str(live.room.id),
            self.config,
            video_bitrate=self.video_bitrate,
            request_keyframe=video.request_keyframe,
            audio=audio is not None,
        )
        program.start()
        self.running[live.room.id] = _Running(program, video, audio)
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
