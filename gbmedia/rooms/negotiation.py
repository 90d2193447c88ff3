"""The subscriber connection's offers and answers, with one owner.

The server offers to a subscriber whenever the set of tracks it receives changes.
A client holds at most one offer: a change while an offer is being made, or waits
for its answer, or while the answer is being applied, is folded into one more
offer after that answer (LiveKit's transport keeps the same rule). The states move
synchronously, before any await, so two changes racing on the event loop can never
produce two offers, and a second answer to one offer is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

from gbmedia.errors import ProtocolError
from gbmedia.sfu.peers import SubscriberPeer

Send = Callable[[dict[str, Any]], Awaitable[None]]


class State(enum.Enum):
    IDLE = "idle"
    OFFERING = "offering"  # creating the offer (ICE gathering)
    AWAITING_ANSWER = "awaiting_answer"
    ANSWERING = "answering"  # applying the client's answer


class SubscriberNegotiation:
    def __init__(self, peer: SubscriberPeer, send: Send, *, restart: bool = False) -> None:
        self.peer = peer
        self._send = send
        # A replacement connection (a media restart): its offers say ``restart`` until one is answered, so
        # the client tells them from offers of the connection it discarded that were still on their way.
        self.restart = restart
        self.state = State.IDLE
        self.pending_offer: str | None = None  # the offer the client has to answer
        self.again = False  # a change arrived meanwhile: offer once more after the answer
        self.closed = False  # its connection was replaced (a media restart): it offers nothing more

    async def renegotiate(self) -> None:
        """Offer the current set of tracks now, or after the answer in flight."""
        if self.closed:
            return
        if self.state is not State.IDLE:
            self.again = True
            return
        self.state = State.OFFERING
        self.again = False
        try:
            sdp, tracks = await self.peer.offer()
        except BaseException:
            self.state = State.IDLE
            raise
        if self.closed:  # replaced while the offer was made: the client has discarded that connection
            return
        self.pending_offer = sdp
        self.state = State.AWAITING_ANSWER
        await self._send(self._offer(sdp, tracks))

    async def answer(self, sdp: str) -> None:
        """Apply the client's answer; then make the offer that changes meanwhile asked for."""
        if self.state is not State.AWAITING_ANSWER:
            raise ProtocolError("unexpected_answer", "there is no subscriber offer waiting for an answer")
        self.state = State.ANSWERING
        try:
            await self.peer.accept_answer(sdp)
        except BaseException:
            self.state = State.AWAITING_ANSWER  # the offer still waits: the client may answer again
            raise
        self.pending_offer = None
        self.state = State.IDLE
        self.restart = False
        if self.again:
            await self.renegotiate()

    async def resend(self) -> None:
        """Send the waiting offer again (a resumed socket may never have received it)."""
        if self.pending_offer is not None and self.state is State.AWAITING_ANSWER:
            await self._send(self._offer(self.pending_offer, self.peer.track_ids_by_mid()))

    def _offer(self, sdp: str, tracks: dict[str, str]) -> dict[str, object]:
        message: dict[str, object] = {"type": "offer", "sdp": sdp, "tracks": tracks}
        if self.restart:
            message["restart"] = True
        return message

    def close(self) -> None:
        """The connection is being replaced: no offer of it goes out any more, and no answer is taken."""
        self.closed = True
        self.pending_offer = None
        self.state = State.IDLE
