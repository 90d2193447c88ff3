"""Rooms as they live on this node: participants, their tracks and subscriptions.

A :class:`LiveRoom` exists while its database room is open and someone is (or was
recently) connected. It wires the SFU: a participant's publisher connection yields
published tracks, which are routed to the subscriber connection of every other
participant that subscribes. Events go to participants over their socket's
``send``; a participant whose socket dropped keeps its media for a grace period and
may resume, so the others never see it leave.

What depends on the room's kind is its policy's (:mod:`gbmedia.rooms.policy`); a
subscriber's offers and answers are its ``SubscriberNegotiation``'s
(:mod:`gbmedia.rooms.negotiation`). :class:`LiveRooms` is what recording, streaming
and bots follow (:mod:`gbmedia.rooms.media`).

A live room whose audience outgrew its node also has **edge copies** on other nodes
(:mod:`gbmedia.rooms.cascade`): a ``LiveRoom`` with ``edge`` set, whose only host is
the program pulled from another node (a participant with ``fed_by``) and whose other
participants are viewers. Recording, streaming and bots follow only the room's own
node: edge copies are left out of what :class:`LiveRooms` tells them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from gbmedia.errors import ApiError, ProtocolError
from gbmedia.metrics import Sample
from gbmedia.rooms.audience import Audience, PlaybackSession
from gbmedia.rooms.media import ENDED, PUBLISHED, ProgramListener, RoomMedia, TrackListener, TrackOwner
from gbmedia.rooms.participant import Participant, Send, track_json
from gbmedia.rooms.policy import MeetingPolicy, RoomMembers, RoomPolicy, SessionLimits
from gbmedia.rooms.program import Program
from gbmedia.rooms.store import Room, Rooms
from gbmedia.sfu.forwarder import QUALITY_LAYERS
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.paths import ClientPath, ServerPath, server_path
from gbmedia.sfu.peers import PublisherPeer, SubscriberPeer, TrackInfo, on_connected, parse_sdp
from gbmedia.sfu.track import PublishedTrack
from gbmedia.tenancy.models import Actor, Instance
from gbmedia.tenancy.tokens import Grants

log = logging.getLogger(__name__)

# Rooms-internal followers of tracks (quality, speakers) see the room and participant themselves.
RoomTrackListener = Callable[[str, "LiveRoom", Participant, PublishedTrack], Awaitable[None]]
# The policy of each room kind (gbmedia/rooms/policy.py).
POLICIES: dict[str, Callable[[RoomMembers], RoomPolicy]] = {"meeting": MeetingPolicy, "live": Audience}
# Told of every LiveRoom this node makes (the cascade links live audiences across nodes).
CreatedListener = Callable[["LiveRoom"], None]
# Told when an announced participant joins (JOINED, reason "") or leaves (LEFT, with the reason).
MemberListener = Callable[[str, "LiveRoom", Participant, str], Awaitable[None]]
# Told (synchronously) when any participant or WHEP player leaves a room of this node.
SessionEndListener = Callable[["LiveRoom", "Participant | PlaybackSession"], None]
JOINED, LEFT = "joined", "left"
# A media restart's tracks its first offer left out wait this long for a later offer to carry them.
RESTART_HOLD_SECONDS = 10.0
# Told each time a participant's publisher or subscriber connection connects, with the path it took.
PathListener = Callable[[str, ServerPath], None]


class LiveRoom:
    def __init__(self, room: Room, registry: LiveRooms, *, edge: bool = False) -> None:
        self.room = room
        self.registry = registry
        self.edge = edge  # an edge node's copy of another node's live room (see the module docstring)
        self.session_limits = registry.session_limits
        self.participants: dict[str, Participant] = {}
        self.closed = False
        self.end_message: dict[str, Any] | None = None  # what the participants were told when the room ended here
        self._tasks: set[asyncio.Future[None]] = set()
        self.policy: RoomPolicy = POLICIES.get(room.kind, MeetingPolicy)(self)

    @property
    def audience(self) -> Audience | None:
        """A live room's audience (its policy); None in a meeting. For the transports that serve audiences."""
        return self.policy if isinstance(self.policy, Audience) else None

    def announced(self, participant: Participant) -> bool:
        """Whether the others hear of ``participant`` one by one (not hidden; in a live room, a host)."""
        return not participant.grants.hidden and self.policy.announced(participant)

    @property
    def visible(self) -> list[Participant]:
        return [p for p in self.participants.values() if self.announced(p)]

    def tracks(self) -> dict[str, PublishedTrack]:
        return {t.id: t for p in self.participants.values() for t in p.published}

    def cost(self) -> float:
        """What this room costs its node now, in placement's unit (rooms/placement.py)."""
        participants = list(self.participants.values())
        return float(sum(len(p.published) + len(p.subscriptions) for p in participants))

    def published(self) -> list[tuple[TrackOwner, PublishedTrack]]:
        return [(p, t) for p in self.participants.values() for t in p.published]

    async def program_changed(self, program: Program) -> None:
        await self.registry.program_changed(self, program)

    def session_ended(self, session: Participant | PlaybackSession) -> None:
        self.registry.session_ended(self, session)

    async def broadcast(self, message: dict[str, Any], *, exclude: Participant | None = None) -> None:
        await asyncio.gather(*(p.send(message) for p in self.participants.values() if p is not exclude))

    # --- membership ------------------------------------------------------------------

    async def join(self, identity: str, name: str, grants: Grants, *, auto_subscribe: bool, send: Send) -> Participant:
        if self.closed:
            raise ProtocolError("room_closed", "the room has closed")
        previous = next((p for p in self.participants.values() if p.identity == identity and p.fed_by is None), None)
        if previous is not None:  # the same person from a new device or tab replaces the old session
            await previous.send({"type": "removed", "reason": "duplicate_identity"})
            await self.leave(previous, "duplicate_identity")
        if self.policy.occupancy() >= self.room.max_participants:
            raise ProtocolError(
                "room_full",
                f"the room allows {self.room.max_participants} participants",
                details={"max_participants": self.room.max_participants},
            )
        participant = Participant(identity, name, grants, auto_subscribe, send)
        participant.connect_subscriber(self._new_subscriber(participant))
        self.participants[participant.id] = participant
        self.registry.by_resume_token[participant.resume_token] = (self, participant)
        if self.announced(participant):
            await self.broadcast(
                {"type": "participant_joined", "participant": participant.to_json()}, exclude=participant
            )
        self.policy.joined(participant)
        await self.registry.rooms.touch(self.room.id)
        if self.announced(participant):
            await self.registry.member_changed(JOINED, self, participant, "")
        return participant

    def joined_message(self, participant: Participant, *, resumed: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "joined",
            "protocol": 1,
            "resumed": resumed,
            "room": {
                "id": str(self.room.id),
                "name": self.room.name,
                "kind": self.room.kind,
                "max_participants": self.room.max_participants,
                "node_id": self.registry.rooms.node_id,  # the node serving it now (it changes when the room moves)
            },
            "participant": {
                "id": participant.id,
                "identity": participant.identity,
                "name": participant.name,
                "grants": participant.grants.to_claim(),
                "tracks": [track_json(t) for t in participant.published],
            },
            "participants": [p.to_json() for p in self.visible if p is not participant],
            "resume_token": participant.resume_token,
            "resume_grace_seconds": self.registry.resume_grace,
        }
        return {**message, **self.policy.joined_extra()}

    async def start_subscriptions(self, participant: Participant) -> None:
        """Auto-subscribe a newcomer to every track already published (it has its ``joined`` now)."""
        self.policy.greet(participant)
        if participant.auto_subscribe and participant.grants.can_subscribe:
            await self.set_subscribed(participant, list(self.tracks()), True, quiet=True)

    async def leave(self, participant: Participant, reason: str = "left") -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        self.session_ended(participant)
        self.registry.by_resume_token.pop(participant.resume_token, None)
        if participant.grace_task is not None and participant.grace_task is not asyncio.current_task():
            participant.grace_task.cancel()
        try:
            for track in [*participant.published, *self._release_held(participant)]:
                await self._track_ended(participant, track)
        finally:
            # Whatever telling the others did, this participant's own connections close: an open one keeps
            # its ICE and DTLS transports, and a receive thread per track that stops the process exiting.
            for down in participant.subscriptions.values():
                down.detach()
            participant.subscriptions.clear()
            if participant.publisher is not None:
                await participant.publisher.close()
            if participant.subscriber is not None:
                await participant.subscriber.close()
        if self.announced(participant):
            await self.broadcast({"type": "participant_left", "participant_id": participant.id, "reason": reason})
        await self.policy.left(participant)
        await self.registry.rooms.touch(self.room.id)
        if self.announced(participant):
            await self.registry.member_changed(LEFT, self, participant, reason)
        log.info(
            "participant left", extra={"room_id": str(self.room.id), "participant_id": participant.id, "reason": reason}
        )

    def disconnected(self, participant: Participant) -> None:
        """The socket dropped without ``leave``: keep the session for the grace period."""
        participant.send_to_socket = None

        async def expire() -> None:
            await asyncio.sleep(self.registry.resume_grace)
            if participant.send_to_socket is None:
                try:
                    await self.leave(participant, "disconnected")
                except Exception:  # e.g. the node is shutting down under it
                    log.exception("leaving after the grace period failed", extra={"participant_id": participant.id})

        participant.grace_task = asyncio.ensure_future(expire())

    async def resume(
        self,
        participant: Participant,
        send: Send,
        request_id: str | int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A new socket takes over the session: it gets ``joined`` (``resumed``, plus ``extra``) and any
        pending offer."""
        if participant.grace_task is not None:
            participant.grace_task.cancel()
            participant.grace_task = None
        participant.send_to_socket = send
        joined = {**self.joined_message(participant, resumed=True), **(extra or {})}
        if request_id is not None:
            joined["id"] = request_id
        await participant.send(joined)
        if participant.negotiation is not None:  # the answer may never have arrived
            await participant.negotiation.resend()

    async def close(self, reason: str) -> None:
        await self._end({"type": "room_closed", "reason": reason}, "room_closed")

    async def move_away(self, reason: str) -> None:
        """This node stops serving the room (it drains, or another node owns it now); the room stays open.

        Every participant is told ``moved`` and its socket ends: clients join again
        through any node and land on the room's new node (docs/protocol.md, "Clusters").
        """
        await self._end({"type": "moved", "reason": reason}, "moved")
        self.registry.live.pop(self.room.id, None)

    async def _end(self, message: dict[str, Any], leave_reason: str) -> None:
        self.closed = True
        self.end_message = message
        await self.policy.close()
        for participant in list(self.participants.values()):
            await participant.send(message)
            try:
                await self.leave(participant, leave_reason)
            except Exception:  # its connections are closed (leave's finally); the others still leave
                log.exception(
                    "a participant's leave failed while its room closed",
                    extra={"room_id": str(self.room.id), "participant_id": participant.id},
                )

    # --- media -------------------------------------------------------------------------

    async def publish(
        self, participant: Participant, sdp: str, infos: dict[str, TrackInfo], *, restart: bool = False
    ) -> tuple[str, list[PublishedTrack]]:
        """Apply a publisher offer. ``restart``: the offer comes from a fresh connection that replaces the
        participant's publisher connection (its media path failed; aiortc has no ICE restart, so the
        client starts over with a new one): the tracks it sends again keep their ids, subscribers and
        recordings, and the others see no track end and none start."""
        if not participant.grants.can_publish:
            raise ProtocolError(
                "grant_missing", "the token lacks the can_publish grant", details={"grant": "can_publish"}
            )
        description = parse_sdp(sdp, "offer")  # refuse garbage before any connection exists
        self._within_track_limits(participant, description)
        kept = self._release_held(participant)  # a restart's tracks its first offer did not carry
        previous: PublisherPeer | None = None
        if restart and participant.publisher is not None:
            previous, participant.publisher = participant.publisher, None
            kept += previous.release_tracks()
            # Published all along: a player or subscriber arriving while the old connection closes and
            # the new one is answered must find them (else it is pointed at nothing, for good).
            participant.restarting = list(kept)
            participant.media_restarts += 1
        try:
            if previous is not None:
                await previous.close()
            if participant.publisher is None:
                participant.publisher = PublisherPeer(participant.id, address=self.registry.media_address)
                self._watch(participant, "publisher", participant.publisher.pc)
            answer, added, ended = await participant.publisher.answer(sdp, infos, adopt=kept)
        except BaseException:
            participant.restarting = []
            for track in kept:
                await self._track_ended(participant, track)
            raise
        participant.restarting = []
        if restart and kept:
            self._hold(participant, kept)
        else:
            ended += kept  # not sent again: they end
        for track in ended:
            await self._track_ended(participant, track)
        await self._tracks_added(participant, added)
        return answer, added

    def _hold(self, participant: Participant, tracks: list[PublishedTrack]) -> None:
        """Keep a restart's tracks that its first offer did not carry for the next offer (a client may add
        some in a second negotiation: web/room adds a screen share so); they end after RESTART_HOLD_SECONDS."""
        participant.held_tracks = tracks

        async def end() -> None:
            await asyncio.sleep(RESTART_HOLD_SECONDS)
            for track in self._release_held(participant):
                await self._track_ended(participant, track)

        participant.held_task = task = asyncio.ensure_future(end())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _release_held(participant: Participant) -> list[PublishedTrack]:
        held, participant.held_tracks = participant.held_tracks, []
        if participant.held_task is not None and participant.held_task is not asyncio.current_task():
            participant.held_task.cancel()
        participant.held_task = None
        return held

    def _new_subscriber(self, participant: Participant) -> SubscriberPeer:
        peer = SubscriberPeer(participant.id, address=self.registry.media_address)
        self._watch(participant, "subscriber", peer.pc)
        return peer

    def _watch(self, participant: Participant, connection: str, pc: Any) -> None:
        """Tell the registry's path listener (the metrics) which path ``pc`` took each time it connects."""

        def connected() -> None:
            path = server_path(pc)
            if path is not None:
                participant.server_paths[connection] = path
                self.registry.media_connected(connection, path)

        on_connected(pc, connected)

    async def restart_subscriber(self, participant: Participant) -> None:
        """Replace the participant's subscriber connection with a fresh one (its media path failed) and
        offer it every track it received, with the same track ids and the same wishes (size, pause).

        The client discards its old connection before asking, so what is offered next is for the new
        one; an offer of the old connection still being made is never sent (its negotiation is closed).
        """
        if not participant.grants.can_subscribe:
            raise ProtocolError(
                "grant_missing", "the token lacks the can_subscribe grant", details={"grant": "can_subscribe"}
            )
        previous = participant.subscriber
        if participant.negotiation is not None:
            participant.negotiation.close()
        fresh = self._new_subscriber(participant)
        downs, participant.subscriptions = participant.subscriptions, {}
        for track_id, down in downs.items():
            down.detach()
            replacement = fresh.add(down.track)
            replacement.carry_over(down)
            participant.subscriptions[track_id] = replacement
        participant.connect_subscriber(fresh, restart=True)
        participant.media_restarts += 1
        if previous is not None:
            await previous.close()
        await self.renegotiate(participant)

    def report_path(self, participant: Participant, connection: str, path: ClientPath) -> bool:
        """Keep the path the client says a connection of it uses; True when it is new or changed."""
        changed = participant.client_paths.get(connection) != path
        participant.client_paths[connection] = path
        return changed

    def _within_track_limits(self, participant: Participant, description: Any) -> None:
        """Refuse an offer that would publish more tracks than a participant, or the room, may have.

        Every track is sent to every subscriber, and described in every subscriber's offer: an
        offer with a thousand m-lines would be a thousand forwarded tracks and offers of that size
        to everyone (an amplification), so the limits apply before any connection is touched.
        """
        sending = sum(
            1 for m in description.media if m.kind in ("audio", "video") and m.direction in ("sendonly", "sendrecv")
        )
        limits = self.registry.track_limits
        if sending > limits.per_participant:
            raise ProtocolError(
                "too_many_tracks",
                f"a participant may publish at most {limits.per_participant} tracks; the offer sends {sending}",
                details={"limit": limits.per_participant, "requested": sending, "scope": "participant"},
            )
        others = sum(len(p.published) for p in self.participants.values() if p is not participant)
        if others + sending > limits.per_room:
            raise ProtocolError(
                "too_many_tracks",
                f"the room carries at most {limits.per_room} tracks; {others} are published already",
                details={"limit": limits.per_room, "requested": sending, "published": others, "scope": "room"},
            )

    async def add_feed(self, participant: Participant, feed: Any) -> None:
        """An edge copy's host: ``participant`` (``fed_by`` set, no socket) joins with the tracks ``feed``
        pulls from another node (a :class:`~gbmedia.sfu.pull.PullPeer`, its publisher from now on).

        The viewers hear of it as of any host that joins and publishes, and auto-subscribe.
        """
        if self.closed:
            await feed.close()
            raise ProtocolError("room_closed", "the room has closed")
        self.participants[participant.id] = participant
        if self.announced(participant):
            await self.broadcast({"type": "participant_joined", "participant": participant.to_json()})
        self.policy.joined(participant)
        participant.publisher = feed
        await self._tracks_added(participant, list(feed.tracks.values()))

    async def _tracks_added(self, participant: Participant, added: list[PublishedTrack]) -> None:
        for track in added:
            if track.simulcast:
                track.on_layers = lambda t, rids, owner=participant: self._layers_needed(owner, t, rids)
                track.demand_changed()
            await self.broadcast(
                {"type": "track_published", "participant_id": participant.id, "track": track_json(track)},
                exclude=participant,
            )
            await self.registry.track_changed(PUBLISHED, self, participant, track)
            await self.policy.track_changed(PUBLISHED, track)
        for other in self._one_by_one(exclude=participant):
            if not (added and other.auto_subscribe and other.grants.can_subscribe):
                continue
            try:
                await self.set_subscribed(other, [t.id for t in added], True, quiet=True)
            except Exception as exc:  # the other's connection is closing: this publish still stands
                log.warning(
                    "could not subscribe a participant to new tracks",
                    extra={"room_id": str(self.room.id), "participant_id": other.id, "error": repr(exc)},
                )

    def _one_by_one(self, exclude: Participant | None = None) -> Iterator[Participant]:
        """The room's participants for a loop that awaits between them: whoever leaves meanwhile is left
        out (its own leave closes its connections), and the room's dict may change under the loop."""
        for participant in list(self.participants.values()):
            if participant is not exclude and self.participants.get(participant.id) is participant:
                yield participant

    async def _track_ended(self, owner: Participant, track: PublishedTrack) -> None:
        for other in self._one_by_one():
            down = other.subscriptions.pop(track.id, None)
            if down is None:
                continue
            other.subscriber.remove(down)  # type: ignore[union-attr]
            try:
                await self.renegotiate(other)
            except Exception as exc:  # its subscriber connection is closing (it is leaving too, or failed)
                log.warning(
                    "could not renegotiate after a track ended",
                    extra={
                        "room_id": str(self.room.id),
                        "participant_id": other.id,
                        "track_id": track.id,
                        "error": repr(exc),
                    },
                )
        await self.registry.track_changed(ENDED, self, owner, track)
        await self.policy.track_changed(ENDED, track)
        track.close()
        self.registry.retire(track)
        await self.broadcast(
            {"type": "track_unpublished", "participant_id": owner.id, "track_id": track.id}, exclude=owner
        )

    async def set_subscribed(
        self, participant: Participant, track_ids: list[str], subscribe: bool, *, quiet: bool = False
    ) -> None:
        if not participant.grants.can_subscribe:
            raise ProtocolError(
                "grant_missing", "the token lacks the can_subscribe grant", details={"grant": "can_subscribe"}
            )
        tracks = self.tracks()
        unknown = [t for t in track_ids if t not in tracks]
        if unknown and not quiet:
            raise ProtocolError("track_not_found", f"no such tracks: {unknown}", details={"track_ids": unknown})
        changed = False
        for track_id in track_ids:
            track = tracks.get(track_id)
            if track is None or track.participant_id == participant.id:
                continue
            if subscribe and track_id not in participant.subscriptions:
                participant.subscriptions[track_id] = participant.subscriber.add(track)  # type: ignore[union-attr]
                changed = True
            elif not subscribe and track_id in participant.subscriptions:
                participant.subscriber.remove(participant.subscriptions.pop(track_id))  # type: ignore[union-attr]
                changed = True
        if changed:
            await self.renegotiate(participant)

    async def renegotiate(self, participant: Participant) -> None:
        """Offer the subscriber its current tracks (folded into the next offer when one is in flight)."""
        if participant.negotiation is not None:
            await participant.negotiation.renegotiate()

    async def answer(self, participant: Participant, sdp: str) -> None:
        if participant.negotiation is None:
            raise ProtocolError("unexpected_answer", "there is no subscriber offer waiting for an answer")
        await participant.negotiation.answer(sdp)

    async def add_candidate(self, participant: Participant, target: str, candidate: dict[str, Any] | None) -> None:
        peer = participant.publisher if target == "publisher" else participant.subscriber
        if peer is None or peer.pc.remoteDescription is None:
            raise ProtocolError("no_connection", f"there is no {target} connection yet")
        if candidate is None or not candidate.get("candidate"):
            return  # end-of-candidates: nothing to do for aiortc
        if candidate.get("sdpMid") is None and candidate.get("sdpMLineIndex") is None:
            raise ProtocolError("invalid_candidate", "a candidate needs sdpMid or sdpMLineIndex")
        line = candidate["candidate"]
        try:
            parsed: RTCIceCandidate = candidate_from_sdp(
                line.split(":", 1)[1] if line.startswith("candidate:") else line
            )
        except (ValueError, IndexError, AssertionError) as exc:  # aioice asserts on a short line
            raise ProtocolError("invalid_candidate", f"the ICE candidate does not parse: {exc}") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await peer.add_ice_candidate(parsed)

    def track_settings(
        self,
        participant: Participant,
        track_id: str,
        *,
        paused: bool | None = None,
        quality: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Apply a subscriber's size/quality/pause wish to one of its down tracks."""
        down = participant.subscriptions.get(track_id)
        if down is None:
            raise ProtocolError("track_not_subscribed", f"you do not receive track {track_id}")
        layer: int | None = None
        size: tuple[int, int] | None = None
        if quality is not None:
            layer = QUALITY_LAYERS[quality]
        elif width is not None and height is not None:
            size = (width, height)
        elif (width is None) != (height is None):
            raise ProtocolError("invalid_message", "give both width and height, or neither")
        down.set_preferences(paused=paused, layer=layer, size=size)
        return {
            "track_id": down.track.id,
            "paused": down.paused,
            "layer": down.desired,
            "layers": [lay.to_json(time.monotonic()) for lay in down.track.layers],
        }

    def _layers_needed(self, owner: Participant, track: PublishedTrack, rids: list[str]) -> None:
        """Dynacast: tell the publisher which of its simulcast layers anyone wants."""
        task = asyncio.ensure_future(owner.send({"type": "publisher_layers", "track_id": track.id, "active": rids}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def mute(self, participant: Participant, track_id: str, muted: bool) -> None:
        track = next((t for t in participant.published if t.id == track_id), None)
        if track is None:
            raise ProtocolError("track_not_found", f"you publish no track {track_id}")
        await self._set_muted(participant, track, muted, by_admin=False)

    async def _set_muted(self, owner: Participant, track: PublishedTrack, muted: bool, *, by_admin: bool) -> None:
        """Muting stops forwarding at once (the SFU drops the track's packets).

        An administrator's mute also tells the owner, whose client should stop
        sending (LiveKit's server mute); the owner may not unmute a track an
        administrator muted unless an administrator unmutes it.
        """
        if track.muted == muted and track.muted_by_admin == (by_admin and muted):
            return
        if not by_admin and track.muted_by_admin and not muted:
            raise ProtocolError("muted_by_admin", "an administrator muted this track")
        track.muted = muted
        track.muted_by_admin = by_admin and muted
        if not muted:
            track.unmuted()  # subscribers' decoders restart on a keyframe
        event = {"type": "track_muted", "participant_id": owner.id, "track_id": track.id, "muted": muted}
        if by_admin:
            await owner.send({**event, "by_admin": True})
        await self.broadcast(event, exclude=owner)

    # --- administration (the Room API) -------------------------------------------------------

    def find(self, participant_id: str) -> Participant:
        """A participant by id or identity, or 404 ``participant_not_found``."""
        participant = self.participants.get(participant_id) or next(
            (p for p in self.participants.values() if p.identity == participant_id), None
        )
        if participant is None:
            raise ApiError(404, "participant_not_found", f"no participant {participant_id} in the room")
        return participant

    async def remove(self, participant_id: str) -> Participant:
        """Disconnect a participant: it gets ``removed``, the others ``participant_left``."""
        participant = self.find(participant_id)
        await participant.send({"type": "removed", "reason": "removed_by_admin"})
        await self.leave(participant, "removed_by_admin")
        return participant

    async def admin_mute(self, participant_id: str, track_id: str, muted: bool) -> PublishedTrack:
        participant = self.find(participant_id)
        track = next((t for t in participant.published if t.id == track_id), None)
        if track is None:
            raise ApiError(404, "track_not_found", f"participant {participant.id} publishes no track {track_id}")
        await self._set_muted(participant, track, muted, by_admin=True)
        return track


@dataclass(frozen=True)
class TrackLimits:
    """How many tracks one participant, and one room, may publish (GBMEDIA_MAX_TRACKS_PER_*)."""

    per_participant: int = 8
    per_room: int = 400


class LiveRooms:
    """This node's live rooms, found by the database room they belong to."""

    def __init__(
        self,
        rooms: Rooms,
        *,
        resume_grace: float,
        media_address: MediaAddress | None = None,
        track_limits: TrackLimits | None = None,
        session_limits: SessionLimits | None = None,
    ) -> None:
        self.rooms = rooms
        self.track_limits = track_limits or TrackLimits()
        self.session_limits = session_limits or SessionLimits()
        self.resume_grace = resume_grace
        self.media_address = media_address
        self.live: dict[uuid.UUID, LiveRoom] = {}
        self.by_resume_token: dict[str, tuple[LiveRoom, Participant]] = {}
        self.sockets = 0  # open signaling sockets on this node (the signaling side counts them)
        self._retired_in = 0
        self._retired_forwarded = 0
        self._retired_bytes_in = 0
        self._retired_bytes_forwarded = 0
        self._retired_send_drops = 0
        self._track_listeners: list[TrackListener | RoomTrackListener] = []
        self._program_listeners: list[ProgramListener] = []
        self._created_listeners: list[CreatedListener] = []
        self._member_listeners: list[MemberListener] = []
        self._session_end_listeners: list[SessionEndListener] = []
        self.path_listener: PathListener | None = None  # the node's metrics count connections by path
        rooms.on_close(self._room_closed)

    # --- what recording, streaming and bots follow (gbmedia/rooms/media.py) ------------------

    def on_track(self, listener: TrackListener | RoomTrackListener) -> None:
        self._track_listeners.append(listener)

    def on_program(self, listener: ProgramListener) -> None:
        self._program_listeners.append(listener)

    def on_created(self, listener: CreatedListener) -> None:
        self._created_listeners.append(listener)

    def on_session_end(self, listener: SessionEndListener) -> None:
        """Follow every participant (announced or not) and WHEP player leaving this node's rooms, at once
        and synchronously (usage metering stops its clock there)."""
        self._session_end_listeners.append(listener)

    def session_ended(self, live: LiveRoom, session: Participant | PlaybackSession) -> None:
        for listener in self._session_end_listeners:
            try:
                listener(live, session)
            except Exception:  # a follower's failure never breaks a leave
                log.exception("session end listener failed", extra={"room_id": str(live.room.id)})

    def on_member(self, listener: MemberListener) -> None:
        """Follow announced participants joining and leaving this node's rooms (webhooks do)."""
        self._member_listeners.append(listener)

    async def member_changed(self, event: str, live: LiveRoom, participant: Participant, reason: str) -> None:
        if live.edge:  # an edge's copy: the room's own node tells of its participants
            return
        for listener in self._member_listeners:
            try:
                await listener(event, live, participant, reason)
            except Exception:  # a follower's failure never breaks a join or a leave
                log.exception("member listener failed", extra={"event": event, "participant_id": participant.id})

    def media_connected(self, connection: str, path: ServerPath) -> None:
        if self.path_listener is not None:
            try:
                self.path_listener(connection, path)
            except Exception:  # counting must never break a connection
                log.exception("path listener failed")

    def media_of(self, room_id: uuid.UUID) -> RoomMedia | None:
        live = self.live.get(room_id)
        return live if live is not None and not live.closed and not live.edge else None

    async def track_changed(self, event: str, live: LiveRoom, participant: Participant, track: PublishedTrack) -> None:
        if live.edge:  # the room's own node records, packages and measures it
            return
        for listener in self._track_listeners:
            try:
                await listener(event, live, participant, track)
            except Exception:  # a listener's failure (a recorder's) never breaks the room
                log.exception("track listener failed", extra={"event": event, "track_id": track.id})

    async def program_changed(self, live: LiveRoom, program: Program) -> None:
        if live.edge:
            return
        for listener in self._program_listeners:
            try:
                await listener(live, program)
            except Exception:  # a follower's failure (the HLS packager's) never breaks the room
                log.exception("program listener failed", extra={"room_id": str(live.room.id)})

    def audiences(self) -> list[Audience]:
        return [live.audience for live in self.live.values() if live.audience is not None and not live.closed]

    def retire(self, track: PublishedTrack) -> None:
        """Keep an ended track's packet counts in the node's totals."""
        self._retired_in += track.packets_in
        self._retired_forwarded += track.packets_forwarded
        self._retired_bytes_in += track.bytes_in
        self._retired_bytes_forwarded += track.bytes_forwarded
        self._retired_send_drops += track.send_drops

    def forwarded_total(self) -> int:
        """RTP packets this node has sent to subscribers, ended tracks included."""
        tracks = [t for live in self.live.values() for p in live.participants.values() for t in p.published]
        return self._retired_forwarded + sum(t.packets_forwarded for t in tracks)

    def media_samples(self) -> list[Sample]:
        rooms = [live for live in self.live.values() if not live.closed]
        participants = [p for live in rooms for p in live.participants.values()]
        tracks = [t for p in participants for t in p.published]
        return [
            Sample("gbmedia_live_rooms", "Rooms with live state on this node", len(rooms)),
            Sample("gbmedia_participants", "Participants connected (or within their resume grace)", len(participants)),
            Sample("gbmedia_published_tracks", "Tracks being published", len(tracks)),
            Sample(
                "gbmedia_subscriptions",
                "Down tracks: published tracks forwarded to a subscriber",
                sum(len(p.subscriptions) for p in participants),
            ),
            Sample(
                "gbmedia_rtp_packets_received_total",
                "RTP packets received from publishers",
                self._retired_in + sum(t.packets_in for t in tracks),
                counter=True,
            ),
            Sample(
                "gbmedia_rtp_packets_forwarded_total",
                "RTP packets sent to subscribers",
                self._retired_forwarded + sum(t.packets_forwarded for t in tracks),
                counter=True,
            ),
            Sample(
                "gbmedia_rtp_bytes_received_total",
                "RTP payload bytes received from publishers",
                self._retired_bytes_in + sum(t.bytes_in for t in tracks),
                counter=True,
            ),
            Sample(
                "gbmedia_rtp_bytes_forwarded_total",
                "RTP bytes (headers included) sent to subscribers",
                self._retired_bytes_forwarded + sum(t.bytes_forwarded for t in tracks),
                counter=True,
            ),
            Sample(
                "gbmedia_rtp_send_drops_total",
                "RTP datagrams to subscribers the native fan-out dropped on a full send buffer",
                self._retired_send_drops + sum(t.send_drops for t in tracks),
                counter=True,
            ),
            *(
                Sample(
                    "gbmedia_down_tracks_by_path",
                    "Down tracks sending, by fan-out path (native: gbmedia/sfu/_fanout.c)",
                    count,
                    labels=(("path", path),),
                )
                for path, count in self.down_tracks_by_path().items()
            ),
        ]

    def down_tracks_by_path(self) -> dict[str, int]:
        """Down tracks by fan-out path: native (a C downlink sends for them) or python."""
        tracks = [t for live in self.live.values() for p in live.participants.values() for t in p.published]
        native = sum(len(t.native_links) for t in tracks)
        return {"native": native, "python": sum(len(t.down_tracks) for t in tracks) - native}

    def participant_count(self, room_id: uuid.UUID) -> int:
        """Who is in the room on this node, plus the viewers its edge nodes serve (the room is not idle)."""
        live = self.live.get(room_id)
        if live is None:
            return 0
        remote = sum(live.audience.remote.values()) if live.audience is not None else 0
        return len(live.participants) + remote

    async def room_for(self, instance: Instance, name: str, actor: Actor, kind: str = "meeting") -> LiveRoom:
        """The open room with this name, created (as ``kind``) on first join (within quotas)."""
        return self.live_for(await self.rooms.open(actor, instance.id, name, kind))

    def live_for(self, room: Room, *, edge: bool = False) -> LiveRoom:
        """The live state of an open room this node serves (``edge``: as an edge copy), made on first use."""
        live = self.live.get(room.id)
        if live is None or live.closed:
            live = self.live[room.id] = LiveRoom(room, self, edge=edge)
            for listener in self._created_listeners:
                listener(live)
        return live

    async def _room_closed(self, room: Room, reason: str) -> None:
        live = self.live.pop(room.id, None)
        if live is not None:
            await live.close(reason)

    async def close(self) -> None:
        for _, participant in self.by_resume_token.values():  # nobody resumes on a node going away
            if participant.grace_task is not None:
                participant.grace_task.cancel()
        for live in list(self.live.values()):
            with contextlib.suppress(Exception):
                await live.close("node_shutdown")
        self.live.clear()
