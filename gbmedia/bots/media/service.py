"""This node's media bots: started and stopped by the REST API, all stopped with the node.

A bot lives where its room lives (the REST API forwards to that node first), and no
room holds more than :data:`MAX_PER_ROOM` bots: each draws or filters in a thread of
its own and encodes a video, so a few are a feature and many are a way to spend a
node's cores (docs/security.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from gbmedia.bots.media.bot import BotOptions, MediaBot, stop_all
from gbmedia.bots.media.filters import FILTERS
from gbmedia.bots.media.renderers import Chart, Clock, Renderer, Slide
from gbmedia.errors import ApiError, ProtocolError
from gbmedia.rooms.live import LiveRooms
from gbmedia.rooms.store import Room

MAX_PER_ROOM = 4


@dataclass(frozen=True)
class BotSpec:
    """What to start: the bot's name, its picture, and optionally whose video to process and how."""

    name: str = "Bot"
    show: str = "clock"  # clock, slide or chart
    title: str = ""
    lines: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    participant: str | None = None
    filter: str = "blur"
    audio: bool = True

    def renderer(self) -> Renderer:
        if self.show == "slide":
            return Slide(self.title, self.lines)
        if self.show == "chart":
            return Chart(self.values, self.title, self.lines)
        return Clock(self.title or "UTC")


@dataclass
class MediaBots:
    live_rooms: LiveRooms
    bots: dict[str, MediaBot] = field(default_factory=dict)

    def in_room(self, room_id: uuid.UUID) -> list[MediaBot]:
        return [b for b in self.bots.values() if b.live.room.id == room_id and not b.left]

    async def start(self, room: Room, spec: BotSpec) -> MediaBot:
        """Join ``spec``'s bot to ``room`` (open, on this node); it processes ``spec.participant`` if named.

        409 ``too_many_media_bots``, ``room_full`` or ``room_closed``; 404 ``participant_not_found`` or
        ``track_not_found`` for a participant that is not there or sends no video (the bot does not stay).
        """
        if len(self.in_room(room.id)) >= MAX_PER_ROOM:
            raise ApiError(
                409, "too_many_media_bots", f"a room holds at most {MAX_PER_ROOM} media bots", {"limit": MAX_PER_ROOM}
            )
        try:
            bot = await MediaBot.join(
                self.live_rooms, room, name=spec.name, renderer=spec.renderer(), options=BotOptions(audio=spec.audio)
            )
        except ProtocolError as exc:
            if exc.code == "room_full":
                raise ApiError(409, "room_full", exc.message, exc.details) from None
            if exc.code == "room_closed":
                raise ApiError(409, "room_closed", exc.message) from None
            raise
        self.bots[bot.id] = bot
        bot.on_left = lambda gone: self.bots.pop(gone.id, None)
        if spec.participant is not None:
            try:
                await bot.process(spec.participant, FILTERS[spec.filter]())
            except BaseException:
                await bot.leave()
                raise
        return bot

    def get(self, room_id: uuid.UUID, bot_id: str) -> MediaBot:
        bot = self.bots.get(bot_id)
        if bot is None or bot.live.room.id != room_id or bot.left:
            raise ApiError(404, "media_bot_not_found", f"no media bot {bot_id} in the room")
        return bot

    async def stop(self, room_id: uuid.UUID, bot_id: str) -> MediaBot:
        bot = self.get(room_id, bot_id)
        await bot.leave()
        return bot

    async def close(self) -> None:
        await stop_all(list(self.bots.values()))
        self.bots.clear()
