"""Which network path a participant's media takes: the ICE candidate pair in use.

An operator asks "is this person relayed, and how?". The server's own ICE agent
(aioice, through :func:`gbmedia.sfu.aiortc_adapter.selected_pair`) knows the pair it
nominated: its remote candidate says how the client reaches the node (``host``: a
direct address; ``srflx``: through a NAT; ``relay``: through a TURN server;
``prflx``: learnt from a check before the client signalled it). It cannot see how a
relayed client reaches its TURN server (UDP, TCP or TLS): only the client knows
that, so a browser reports its own view of the pair (``media_path`` on the socket,
docs/protocol.md) and both are shown side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aiortc import RTCPeerConnection

from gbmedia.sfu import aiortc_adapter

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class ServerPath:
    """The nominated pair as the node's ICE agent sees it."""

    local_address: str  # ip:port of the node's media socket
    remote_type: str  # host | srflx | prflx | relay: how the client reaches the node
    remote_address: str  # where the client's media comes from (a TURN relay's address when relayed)
    protocol: str  # udp: aioice speaks ICE over UDP only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClientPath:
    """The pair as the client's WebRTC stack reports it (its ``getStats()``)."""

    candidate_type: str  # the client's local candidate: host | srflx | prflx | relay
    protocol: str  # udp | tcp: the client's candidate's transport
    relay_protocol: str | None = None  # udp | tcp | tls: how a relayed client reaches its TURN server

    @property
    def label(self) -> str:
        """One bounded word for metrics and the overlay: host, srflx, prflx, relay_udp, relay_tcp, relay_tls."""
        if self.candidate_type == "relay":
            return f"relay_{self.relay_protocol or 'udp'}"
        return self.candidate_type

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_path(pc: RTCPeerConnection) -> ServerPath | None:
    """``pc``'s nominated pair, or None while ICE has not connected (or after it closed)."""
    pair = aiortc_adapter.selected_pair(pc)
    if pair is None:
        return None
    local, remote = pair
    return ServerPath(
        local_address=_address(local.host, local.port),
        remote_type=remote.type,
        remote_address=_address(remote.host, remote.port),
        protocol=remote.transport.lower(),
    )
