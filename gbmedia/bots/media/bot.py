"""A bot in a room as a media participant: it shows what it draws, or a participant's video processed.

How it joins, and why this way: **in process, through the rooms package**, as a
participant whose "socket" is a method of the bot (:meth:`MediaBot._event`), with
two aiortc peer connections of its own that the room's SFU connects to exactly as
it connects a browser's. The alternatives were worse:

- over ``/rtc`` from inside the node, the bot would need an access token, a
  WebSocket client and the node's own URL, and bots may not import signaling (the
  layers in docs/architecture.md); everything the socket adds (authentication,
  relaying to a room's node, resume) is of no use to code already on the room's node;
- straight into the SFU (handing encoded packets to a ``PublishedTrack``) would
  duplicate the publisher path (RTCP, NACK, keyframe requests, stats) that a real
  peer connection gets for free.

So the room sees an ordinary participant: others get ``participant_joined`` and
``track_published``, subscribe through the SFU without transcoding, and web/room
shows the bot's tile with its name. The media between the SFU and the bot goes over
the machine's own interface (host candidates, no STUN), which costs a little CPU
for SRTP and nothing in correctness. Pixels are touched only in the bot's worker
thread (:mod:`gbmedia.bots.media.tracks`).

The bot lives on the room's node: whoever starts one (the REST API) forwards the
request to that node first. It leaves when told to, when removed by a moderator,
or when the room closes or moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gbmedia.bots.media.filters import Filter
from gbmedia.bots.media.renderers import Clock, Renderer
from gbmedia.bots.media.tracks import BotVideoTrack, FrameWorker, ToneTrack
from gbmedia.errors import ApiError
from gbmedia.rooms.live import LiveRoom, LiveRooms
from gbmedia.rooms.participant import Participant
from gbmedia.rooms.store import Room
from gbmedia.sfu.peers import TrackInfo
from gbmedia.tenancy.tokens import Grants

log = logging.getLogger(__name__)

# The bot and the SFU are on one machine: host candidates only, nothing outside is asked.
BOT_CONFIGURATION = RTCConfiguration(iceServers=[])
ENDING = ("room_closed", "removed", "moved")  # events after which the bot is no longer in the room
TRACK_WAIT = 15.0  # seconds for a subscribed track to reach the bot (one offer/answer and ICE)


@dataclass(frozen=True)
class BotOptions:
    """How a media bot looks and sounds."""

    width: int = 640
    height: int = 360
    fps: float = 15.0
    audio: bool = True  # a quiet 440 Hz tone
    tone_hz: float = 440.0


def bot_identity(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A bot's identity in a room: ``bot:`` and its name in lower case (never a person's identity), with
    ``-2``, ``-3``... when another participant has it (the room would replace that one by the newcomer)."""
    base = "bot:" + (re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-") or "bot")
    identity, n = base, 2
    while identity in taken:
        identity, n = f"{base}-{n}", n + 1
    return identity


class MediaBot:
    """A bot participant of one room on this node. Make one with :meth:`join`."""

    def __init__(self, live: LiveRoom, participant: Participant, options: BotOptions, renderer: Renderer) -> None:
        self.id = "MB_" + uuid.uuid4().hex[:12]
        self.live = live
        self.participant = participant
        self.options = options
        self.worker = FrameWorker(f"gbmedia-mediabot-{self.id}")
        self.video = BotVideoTrack(self.worker, renderer, width=options.width, height=options.height, fps=options.fps)
        self.audio = ToneTrack(options.tone_hz) if options.audio else None
        self.publisher = RTCPeerConnection(BOT_CONFIGURATION)
        self.subscriber = RTCPeerConnection(BOT_CONFIGURATION)
        self.track_ids: dict[str, str] = {}  # subscriber mid -> the room's track id (from each offer)
        self.processing: str | None = None  # the room's track id being processed
        self.left = False
        self._remote: dict[str, MediaStreamTrack] = {}  # subscriber mid -> aiortc's remote track
        self._arrived = asyncio.Event()
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leaving: asyncio.Task[None] | None = None
        self.on_left: Callable[[MediaBot], object] | None = None  # told once the bot has left
        self.subscriber.on("track", self._on_track)

    # --- the Python API ------------------------------------------------------------------

    @classmethod
    async def join(
        cls,
        live_rooms: LiveRooms,
        room: Room,
        *,
        name: str = "Bot",
        renderer: Renderer | None = None,
        options: BotOptions | None = None,
    ) -> MediaBot:
        """Join ``room`` (open, served by this node) as ``name`` and start publishing ``renderer``'s picture
        (a clock unless told otherwise) and, unless ``options.audio`` is off, a tone."""
        live = live_rooms.live_for(room)
        grants = Grants(room=room.name, room_join=True, can_publish=True, can_subscribe=True)
        holder: list[MediaBot] = []

        async def send(message: dict[str, Any]) -> None:  # room events before the bot object exists
            if holder:
                await holder[0]._event(message)

        identity = bot_identity(name, {p.identity for p in live.participants.values()})
        participant = await live.join(identity, name, grants, auto_subscribe=False, send=send)
        bot = cls(live, participant, options or BotOptions(), renderer or Clock())
        holder.append(bot)
        bot._spawn(bot._answer_offers())
        try:
            await live.start_subscriptions(participant)
            await bot._publish()
        except BaseException:
            await bot.leave()
            raise
        log.info("media bot joined", extra={"room_id": str(room.id), "participant_id": participant.id})
        return bot

    async def show(self, renderer: Renderer) -> None:
        """Publish what ``renderer`` draws from now on (processing, if any, stops)."""
        self.video.show(renderer)
        await self._unsubscribe()

    async def process(self, participant: str, filter_: Filter) -> str:
        """Publish ``participant``'s video (its id or identity) through ``filter_``; returns the track's id.

        404 ``participant_not_found`` or ``track_not_found`` (it publishes no video).
        """
        owner = self.live.find(participant)
        videos = [t for t in owner.published if t.kind == "video"]
        if owner is self.participant or not videos:
            raise ApiError(404, "track_not_found", f"participant {owner.id} publishes no video the bot can process")
        track = next((t for t in videos if t.source == "camera"), videos[0])
        if self.processing != track.id:
            await self._unsubscribe()
            self.processing = track.id
            await self.live.set_subscribed(self.participant, [track.id], True)
        remote = await self._remote_track(track.id)
        self.video.process(remote, filter_)
        return track.id

    async def leave(self) -> None:
        """Leave the room and close everything: both connections, the tracks, the worker thread."""
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._leave())
        await asyncio.shield(self._leaving)

    @property
    def published(self) -> list[str]:
        return [t.id for t in self.participant.published]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room_id": str(self.live.room.id),
            "participant_id": self.participant.id,
            "identity": self.participant.identity,
            "name": self.participant.name,
            "tracks": self.published,
            "processing": self.processing,
            "left": self.left,
            "frames_rendered": self.video.rendered,
            "frames_processed": self.video.processed,
        }

    # --- the room's side ------------------------------------------------------------------

    async def _publish(self) -> None:
        self.publisher.addTransceiver(self.video, direction="sendonly")
        if self.audio is not None:
            self.publisher.addTransceiver(self.audio, direction="sendonly")
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        infos = {
            t.mid: TrackInfo("camera" if t.kind == "video" else "microphone", self.participant.name)
            for t in self.publisher.getTransceivers()
            if t.mid is not None
        }
        answer, _added = await self.live.publish(self.participant, self.publisher.localDescription.sdp, infos)
        await self.publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def _event(self, message: dict[str, Any]) -> None:
        """The room's events for the bot (what a browser gets on its socket); none of them waits."""
        kind = message.get("type")
        if kind == "offer":
            self._offers.put_nowait(message)
        elif kind == "track_unpublished" and message.get("track_id") == self.processing:
            self.processing = None  # the participant stopped: the bot draws again (its renderer)
            self.video.show(self.video.renderer)
        elif kind in ENDING:
            self._spawn(self.leave())

    async def _answer_offers(self) -> None:
        """The subscriber connection's offers, answered one at a time in order."""
        while True:
            offer = await self._offers.get()
            try:
                self.track_ids = dict(offer["tracks"])
                await self.subscriber.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
                await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
                await self.live.answer(self.participant, self.subscriber.localDescription.sdp)
                self._arrived.set()
            except Exception as exc:  # the bot or the room is going away
                log.warning("media bot could not answer an offer", extra={"bot_id": self.id, "error": repr(exc)})

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = next(t.mid for t in self.subscriber.getTransceivers() if t.receiver.track is track)
        if mid is not None:
            self._remote[mid] = track
            self._arrived.set()

    async def _remote_track(self, track_id: str) -> MediaStreamTrack:
        """aiortc's remote track that carries the room's track ``track_id`` (transceivers are reused)."""

        def find() -> MediaStreamTrack | None:
            mid = next((m for m, t in self.track_ids.items() if t == track_id), None)
            return self._remote.get(mid) if mid is not None else None

        async with asyncio.timeout(TRACK_WAIT):
            while (remote := find()) is None:
                self._arrived.clear()
                await self._arrived.wait()
        return remote

    async def _unsubscribe(self) -> None:
        track_id, self.processing = self.processing, None
        if track_id is not None and not self.left and track_id in self.live.tracks():
            await self.live.set_subscribed(self.participant, [track_id], False)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _leave(self) -> None:
        self.left = True
        self.video.stop()
        if self.audio is not None:
            self.audio.stop()
        try:
            if self.live.participants.get(self.participant.id) is self.participant:
                await self.live.leave(self.participant, "left")
        finally:
            for task in list(self._tasks):
                if task is not asyncio.current_task() and task is not self._leaving:
                    task.cancel()
            await self.publisher.close()
            await self.subscriber.close()
            await self.worker.close()
            if self.on_left is not None:
                self.on_left(self)
            log.info("media bot left", extra={"bot_id": self.id, "participant_id": self.participant.id})


async def stop_all(bots: list[MediaBot]) -> None:
    """Every bot leaves (a node stopping); one failing does not keep the others in."""
    for bot in bots:
        with contextlib.suppress(Exception):
            await bot.leave()
