"""One UDP socket for every ICE connection of a node process (single-port mode).

Operators ask for one port: one firewall rule, one Kubernetes port per pod. With
``GBMEDIA_UDP_PORT`` every peer connection's host candidate is the same socket, and
datagrams are handed to the right connection here:

- a STUN Binding request names its connection in USERNAME (``local-ufrag:remote``);
  once its MESSAGE-INTEGRITY checks out with that connection's password, the sender's
  address is that connection's, and everything else from it (DTLS, SRTP, SRTCP,
  consent checks) goes there too;
- a STUN response goes to the connection whose transaction it answers (the node's own
  connectivity checks reach addresses that have not written to it yet);
- anything else from an address no connection owns is dropped and counted;
- a connection may take its SRTP and SRTCP before its protocol does (:meth:`MuxedTransport.receive_media`):
  a published track's RTP, and the RTCP of publishers and subscribers, then skip aioice's queue
  and the task behind it.

A consent check on a connection's selected pair (RFC 7675: every 5 s from each client) is
answered here, without aioice parsing it a second time and building the answer from its
attribute tables (:func:`binding_success`, when the connection's ``answer`` says it is one).

The connections' protocols (aioice's ``StunProtocol``, attached by the aiortc adapter)
see a :class:`MuxedTransport` in place of a socket of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioice import stun

log = logging.getLogger(__name__)

Address = tuple[str, int]


class MuxedProtocol(Protocol):
    """What the mux needs of a connection's protocol (aioice's StunProtocol has it)."""

    transactions: dict[bytes, Any]

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def datagram_received(self, data: bytes, addr: Address) -> None: ...


# Takes a connection's SRTP or SRTCP datagram (first byte 128-191) before its protocol does: True when it took it,
# False to let it go the usual way (aioice, then aiortc's DTLS transport).
MediaReceiver = Callable[[bytes], bool]

# Answers a connection's authenticated Binding request itself: the response's bytes, or None to
# leave the request to the connection (anything but a plain consent check on its selected pair).
ConsentAnswer = Callable[[MuxedProtocol, stun.Message, Address], bytes | None]


@dataclass
class _Entry:
    ufrag: str
    password: bytes
    protocol: MuxedProtocol
    answer: ConsentAnswer | None = None
    addresses: set[Address] = field(default_factory=set)
    media: MediaReceiver | None = None


# RFC 8489: the Binding success response's header and the attributes aioice writes into it.
_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE = struct.Struct("!HH")
_ADDRESS = struct.Struct("!HHBBH")  # XOR-MAPPED-ADDRESS: type, length, 0, family, port ^ cookie's top half
_FINGERPRINT = struct.Struct("!HHI")
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = 0x0020
_MESSAGE_INTEGRITY = 0x0008
_FINGERPRINT_TYPE = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_COOKIE_BYTES = stun.COOKIE.to_bytes(4, "big")


def binding_success(transaction_id: bytes, addr: Address, password: bytes) -> bytes:
    """aioice's answer to a Binding request from ``addr``, byte for byte: XOR-MAPPED-ADDRESS, then
    MESSAGE-INTEGRITY keyed with ``password`` and FINGERPRINT.

    A handful of struct packs where aioice builds a ``Message`` and packs the address through
    ``ipaddress`` per answer: with a consent check every 5 s per connection, that and the second
    parse were a visible part of the node's CPU per subscriber (bench.forwarding, muted publisher).
    """
    host = addr[0].partition("%")[0]  # a link-local IPv6 address's scope is not on the wire
    raw = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    pad = _COOKIE_BYTES + transaction_id
    mapped = _ADDRESS.pack(
        _XOR_MAPPED_ADDRESS, 4 + len(raw), 0, 1 if len(raw) == 4 else 2, addr[1] ^ (stun.COOKIE >> 16)
    ) + bytes(a ^ b for a, b in zip(raw, pad, strict=False))
    signed = len(mapped) + 24  # the body as MESSAGE-INTEGRITY covers it: up to and with itself
    head = _HEADER.pack(_BINDING_SUCCESS, signed, stun.COOKIE, transaction_id)
    integrity = hmac.digest(password, head + mapped, "sha1")
    body = mapped + _ATTRIBUTE.pack(_MESSAGE_INTEGRITY, 20) + integrity
    message = _HEADER.pack(_BINDING_SUCCESS, signed + 8, stun.COOKIE, transaction_id) + body
    return message + _FINGERPRINT.pack(_FINGERPRINT_TYPE, 4, (zlib.crc32(message) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF)


@dataclass
class MuxCounters:
    """Datagrams the mux could not place, by reason, and consent checks it answered (the node exports
    them: :func:`gbmedia.node.udp_samples`)."""

    unknown_address: int = 0  # not STUN, from an address no connection owns
    unknown_ufrag: int = 0  # a Binding request for a connection that is not here
    bad_integrity: int = 0  # a Binding request whose MESSAGE-INTEGRITY does not check out
    unmatched_response: int = 0  # a STUN response to no transaction of ours
    consent_answered: int = 0  # consent checks answered by the mux itself (not an error: see binding_success)
    rtp_direct: int = 0  # SRTP/SRTCP handed to its connection's media receiver (MuxedTransport.receive_media)


class MuxedTransport(asyncio.DatagramTransport):
    """The shared socket, as one connection's protocol sees it: sends go out of the one port."""

    def __init__(self, mux: UdpMux, entry: _Entry) -> None:
        super().__init__()
        self._mux = mux
        self._entry = entry
        self._closing = False

    @property
    def mux(self) -> UdpMux:
        """The shared socket (the native fan-out sends on its descriptor directly)."""
        return self._mux

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if self._closing or addr is None:
            return
        self._mux.send(data, (addr[0], addr[1]))

    def receive_media(self, receiver: MediaReceiver | None) -> None:
        """Offer this connection's SRTP datagrams to ``receiver`` first (None: no longer).

        What it takes skips the connection's protocol and the queue behind it: a published track's
        RTP, handled in the same call (gbmedia.sfu.aiortc_adapter). What it declines goes the usual way.
        """
        self._entry.media = receiver

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._entry.media = None
        self._mux.detach(self._entry)
        asyncio.get_running_loop().call_soon(self._entry.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.local_address
        return default


# Linux's <linux/in.h> (Python's socket module does not name them). PROBE sends every datagram with
# Don't Fragment set and the kernel's path-MTU guesses ignored: for an unconnected socket the kernel
# then writes IP ID 0 instead of hashing an ID per datagram (__ip_select_ident: 3 % of a natively
# forwarding node's CPU, measured with perf at 256 subscribers). Media datagrams stay under 1,200
# bytes (RTP, SCTP, DTLS fragments), so nothing needs fragmenting.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3


class UdpMux(asyncio.DatagramProtocol):
    """The node's one media socket and the table from remote address to connection."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._by_ufrag: dict[str, _Entry] = {}
        self._by_address: dict[Address, _Entry] = {}
        self.counters = MuxCounters()
        self.local_address: Address = ("", 0)
        self.fileno = -1  # the socket's descriptor, for the native fan-out's sendmmsg
        self.native_fanout = False  # set by the node: its down tracks forward natively (gbmedia/sfu/fanout.py)

    @classmethod
    async def bind(cls, host: str, port: int) -> UdpMux:
        """Bind ``host:port`` (port 0: one the kernel picks) and start demultiplexing."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _, mux = await loop.create_datagram_endpoint(cls, local_addr=(host, port), family=family)
        return mux

    @property
    def port(self) -> int:
        return self.local_address[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a burst of keyframes to many subscribers must not overflow the queue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            if sock.family == socket.AF_INET:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            self.fileno = sock.fileno()
        sockname = transport.get_extra_info("sockname")
        self.local_address = (sockname[0], sockname[1])

    def close(self) -> None:
        self.fileno = -1
        self.native_fanout = False
        if self._transport is not None:
            self._transport.close()
        for entry in list(self._by_ufrag.values()):
            entry.protocol.connection_lost(None)
        self._by_ufrag.clear()
        self._by_address.clear()

    @property
    def connections(self) -> int:
        return len(self._by_ufrag)

    def attach(
        self,
        ufrag: str,
        password: str,
        protocol_factory: Callable[[], MuxedProtocol],
        answer: ConsentAnswer | None = None,
    ) -> MuxedProtocol:
        """A protocol for the connection whose local ICE username fragment is ``ufrag``; ``answer``
        may answer its consent checks here (:data:`ConsentAnswer`)."""
        if ufrag in self._by_ufrag:
            raise ValueError(f"ICE ufrag {ufrag!r} is already on this port")
        protocol = protocol_factory()
        entry = _Entry(ufrag, password.encode(), protocol, answer)
        self._by_ufrag[ufrag] = entry
        protocol.connection_made(MuxedTransport(self, entry))
        return protocol

    def detach(self, entry: _Entry) -> None:
        if self._by_ufrag.get(entry.ufrag) is entry:
            del self._by_ufrag[entry.ufrag]
        for address in entry.addresses:
            if self._by_address.get(address) is entry:
                del self._by_address[address]
        entry.addresses.clear()

    def send(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def _own(self, entry: _Entry, addr: Address) -> None:
        previous = self._by_address.get(addr)
        if previous is entry:
            return
        if previous is not None:  # the client's port now serves another connection (a new one)
            previous.addresses.discard(addr)
        self._by_address[addr] = entry
        entry.addresses.add(addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        if data and data[0] < 2:  # RFC 7983: 0-3 is STUN; aioice only ever sees 0-1 (no TURN channel data)
            try:
                message = stun.parse_message(data)
            except ValueError:
                message = None
            if message is not None:
                self._stun_received(message, data, addr)
                return
        entry = self._by_address.get(addr)
        if entry is None:
            self.counters.unknown_address += 1
            return
        if entry.media is not None and data and 127 < data[0] < 192 and entry.media(data):
            self.counters.rtp_direct += 1
            return
        entry.protocol.datagram_received(data, addr)

    def _stun_received(self, message: stun.Message, data: bytes, addr: Address) -> None:
        if message.message_class == stun.Class.REQUEST:
            username = message.attributes.get("USERNAME")
            ufrag = username.partition(":")[0] if isinstance(username, str) else ""
            entry = self._by_ufrag.get(ufrag)
            if entry is None:
                self.counters.unknown_ufrag += 1
                return
            if "MESSAGE-INTEGRITY" in message.attributes and message.check_message_integrity(entry.password):
                self._own(entry, addr)
                if entry.answer is not None and (response := entry.answer(entry.protocol, message, addr)) is not None:
                    self.counters.consent_answered += 1
                    self.send(response, addr)
                    return
            else:
                self.counters.bad_integrity += 1  # the connection answers 400/401 itself
            entry.protocol.datagram_received(data, addr)
            return
        if message.message_class == stun.Class.INDICATION:
            return  # aioice ignores them too
        entry = self._by_address.get(addr)
        if entry is None or message.transaction_id not in entry.protocol.transactions:
            entry = next(
                (e for e in self._by_ufrag.values() if message.transaction_id in e.protocol.transactions), None
            )
        if entry is None:
            self.counters.unmatched_response += 1
            return
        if message.message_class == stun.Class.RESPONSE:
            self._own(entry, addr)
        # what aioice's StunProtocol.datagram_received does with a response, without parsing it again
        entry.protocol.transactions[message.transaction_id].response_received(message, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("media socket error: %s", exc)
