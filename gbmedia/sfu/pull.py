"""The receiving end of a server-to-server feed: a node pulling another node's program.

A live room that cascades (:mod:`gbmedia.rooms.cascade`) is fed from node to node
over WebRTC, the way a WHEP player is fed: the pulling node offers to receive one
video and one audio, the feeding node answers with the codec its program uses
(:class:`~gbmedia.sfu.playback.PlaybackPeer`) and forwards the program's packets
without transcoding. On the pulling side each received m-line becomes a
:class:`~gbmedia.sfu.track.PublishedTrack`, exactly like a publisher's, so the
node's own viewers get it through the ordinary forwarding path, and its keyframe
requests (PLI) go back up the feed like any subscriber's go to a publisher; NACKs
are answered by each hop from its own down tracks' history.

The connection is a server connection in every other respect: one bundled
transport, no RTX, host candidates on the node's media address and UDP range (the
nodes of one machine reach each other on it, nodes of several machines too).
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpReceiver

from gbmedia.sfu import aiortc_adapter
from gbmedia.sfu.media_address import MediaAddress
from gbmedia.sfu.peers import TrackInfo, apply_remote, parse_sdp, server_configuration, set_local
from gbmedia.sfu.track import PublishedTrack

PULL_KINDS = ("video", "audio")
# What a feed may carry: the codecs the forwarder forwards (as WHEP offers them), no RTX.
FORWARDED = {"video": ("video/vp8", "video/h264"), "audio": ("audio/opus", "audio/pcmu", "audio/pcma")}


class PullPeer:
    """One feed: the program's tracks as they arrive from the feeding node."""

    def __init__(self, owner_id: str, address: MediaAddress | None = None) -> None:
        self.owner_id = owner_id  # the participant the tracks are published as (their participant_id)
        self.pc = RTCPeerConnection(server_configuration())
        self.address = address
        self.tracks: dict[str, PublishedTrack] = {}  # by mid, like a publisher connection's
        self.closed = False

    async def offer(self) -> str:
        """The offer to send to the feeding node: receive one video and one audio."""
        for kind in PULL_KINDS:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            codecs = [c for c in RTCRtpReceiver.getCapabilities(kind).codecs if c.mimeType.lower() in FORWARDED[kind]]
            aiortc_adapter.prefer_codecs(transceiver, codecs)
        await set_local(self.pc, await self.pc.createOffer(), self.address)
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str, infos: dict[str, TrackInfo]) -> list[PublishedTrack]:
        """Apply the feeding node's answer; a track for each kind in ``infos`` that it sends.

        Raises :class:`~gbmedia.sfu.peers.NegotiationError` for an answer that cannot be used.
        """
        parse_sdp(answer_sdp, "answer")
        await apply_remote(self.pc, answer_sdp, "answer")
        for transceiver in self.pc.getTransceivers():
            info = infos.get(transceiver.kind)
            mid = transceiver.mid
            if info is None or mid is None or transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            codec = aiortc_adapter.negotiated_codec(transceiver)
            if codec is None:
                continue
            track = PublishedTrack(
                self.owner_id, transceiver.kind, info.source, transceiver.receiver, codec, mid, name=info.name
            )
            track.attach()
            self.tracks[mid] = track
        return list(self.tracks.values())

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    async def close(self) -> None:
        self.closed = True
        for track in self.tracks.values():
            track.close()
        self.tracks.clear()
        await self.pc.close()
