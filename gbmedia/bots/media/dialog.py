"""What a dialog reaches of media bots: JOIN ROOM, SHOW ..., PROCESS VIDEO OF, PLAY TONE, SAY, LEAVE ROOM.

A dialog drives one media bot at a time, in a room of its own instance served by this
node (a room on another node is refused: the bot must live where its room's media is).
The bot's id is kept in the run's settings, which are JSON and saved with a run waiting
at a HEAR, so a dialog that asks something between two SHOWs still drives the same bot.
The bot outlives the run, as one started over REST does: it leaves with ``LEAVE ROOM``,
a ``DELETE`` of ``/api/v1/rooms/{room_id}/media_bots/{bot}``, or when its room closes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gbmedia.bots.errors import Fault
from gbmedia.bots.media.bot import MediaBot
from gbmedia.bots.media.service import BotSpec, MediaBots
from gbmedia.errors import ApiError, ProtocolError

if TYPE_CHECKING:
    from gbmedia.rooms.placement import Placer
    from gbmedia.rooms.store import Rooms

SETTING = "MEDIA BOT"  # the run's setting that names its bot


@dataclass
class MediaPort:
    """This node's media bots and rooms, for one instance's dialogs."""

    bots: MediaBots
    rooms: Rooms
    instance_id: uuid.UUID
    placement: Placer | None = None  # None: a single node serves every room

    async def join(self, room: str, spec: BotSpec) -> MediaBot:
        try:
            found = await self.rooms.get(self.instance_id, room)
        except ApiError:
            raise Fault(f"JOIN ROOM: the instance has no room {room[:100]!r}") from None
        if found.status != "open":
            raise Fault(f"JOIN ROOM: the room {found.name} is closed")
        if self.placement is not None:
            owner = await self.placement.owner(found)  # places the room as a REST call to it would
            if owner.node_id != self.placement.node_id:
                raise Fault(f"JOIN ROOM: the room {found.name} is served by another node ({owner.node_id})")
        try:
            return await self.bots.start(found, spec)
        except (ApiError, ProtocolError) as exc:
            raise Fault(f"JOIN ROOM: {exc.message}") from None

    def bot(self, bot_id: object) -> MediaBot:
        found = self.bots.bots.get(str(bot_id)) if bot_id else None
        if found is None or found.left or found.live.room.instance_id != self.instance_id:
            raise Fault("the dialog's media bot is not in a room: JOIN ROOM first")
        return found
