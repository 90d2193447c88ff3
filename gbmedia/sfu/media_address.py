"""Where this node's media sockets listen and what address ICE candidates carry.

A node behind NAT (a cloud VM, a Kubernetes pod with a host port) binds its UDP
sockets to a local address but must advertise the address clients can reach;
on a plain machine both are the interface address. Ports come from one configured
range so a firewall can open exactly that range.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

from gbmedia.sfu.udp_mux import UdpMux


@dataclass(frozen=True)
class MediaAddress:
    advertised: str  # the IP address put in host candidates
    bind: str  # the local address sockets bind to
    ports: tuple[int, int]  # inclusive UDP port range
    mux: UdpMux | None = field(default=None, compare=False)  # single-port mode: every connection on it

    def __post_init__(self) -> None:
        low, high = self.ports
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"invalid UDP port range {low}-{high}")


def _is_local(address: str) -> bool:
    """True when a socket can bind to ``address`` on this machine."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind((address, 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


async def resolve_media_address(host: str, ports: tuple[int, int]) -> MediaAddress:
    """The address for ``host`` (an IP or a name, resolved once, IPv4 first).

    A host name is resolved at start-up because browsers will not resolve names
    in ICE candidates (only mDNS ``.local`` ones). When the advertised address is
    not one of this machine's (NAT), sockets bind to every interface instead.
    """
    try:
        advertised = str(ipaddress.ip_address(host))
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        if not infos:  # pragma: no cover - getaddrinfo raises rather than return nothing
            raise OSError(f"cannot resolve {host}") from None
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        advertised = str(infos[0][4][0])
    bind = advertised if _is_local(advertised) else ("::" if ":" in advertised else "0.0.0.0")
    return MediaAddress(advertised, bind, ports)


def media_ports(address: MediaAddress) -> str:
    """The ports clients' media reaches, as the node registry and logs show them: ``low-high``."""
    if address.mux is not None:
        return f"{address.mux.port}-{address.mux.port}"
    low, high = address.ports
    return f"{low}-{high}"
