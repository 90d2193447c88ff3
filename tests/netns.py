"""A second host on this machine for tests: a Linux network namespace joined to it by a veth pair.

What runs inside (``ip netns exec``) has its own interfaces, routes and firewall, so
a test can cut one client's UDP (an nftables rule inside the namespace) while the
node and every other client keep theirs: a network that lets only TCP out, or a
network change in the middle of a call. Needs root (``ip netns``) and nftables.

The namespace reaches the machine through 198.51.100.0/30 (a documentation range,
never the machine's own subnet): packets for any of the machine's own addresses are
delivered locally, so pages and media reach the node at its interface address, with
no forwarding or NAT. Names carry the test process id and a counter; :func:`namespace`
always removes what it made, and the first one a process makes removes what a killed run
left (its process gone): a leftover's veth would hold our address, and its route would win.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.lib.netns import remove_leftovers as sweep
from bench.lib.netns import run  # raises BenchError, a RuntimeError, when a command fails

_counter = itertools.count()
_swept = False
LEFT_BY = re.compile(r"^gbt(\d+)n\d+\b")  # a namespace's name: the test process id, then a counter


def missing() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages iproute2, nftables)"
    return None


async def no_ipv6(namespace: str, *interfaces: str) -> None:
    """Turns IPv6 off for these interfaces (or `all`, `default`) of a namespace (its own /proc/sys/net)."""
    for interface in interfaces:
        path = f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6"
        await run("ip", "netns", "exec", namespace, "sh", "-c", f"echo 1 > {path}")


@dataclass(frozen=True)
class Namespace:
    name: str
    outer_link: str  # the veth end on the machine's side
    address: str  # the namespace's address (what the node sees its clients come from)

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    async def block_udp(self) -> None:
        """Drop every UDP datagram leaving or reaching the namespace (a network that lets only TCP through)."""
        await run(*self.command("nft", "add", "table", "inet", "gbtest"))
        for chain, hook in (("out", "output"), ("in", "input")):
            await run(
                *self.command(
                    "nft", "add", "chain", "inet", "gbtest", chain, f"{{ type filter hook {hook} priority 0 ; }}"
                )
            )
            await run(*self.command("nft", "add", "rule", "inet", "gbtest", chain, "meta", "l4proto", "udp", "drop"))

    async def unblock_udp(self) -> None:
        await run(*self.command("nft", "delete", "table", "inet", "gbtest"))

    def wrapper(self, executable: str, directory: Path) -> str:
        """A script that runs ``executable`` inside the namespace (for Playwright's ``executable_path``:
        ``ip netns exec`` execs in place, so the browser keeps the pipe Playwright drives it through)."""
        script = directory / f"{Path(executable).name}-in-{self.name}"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {executable} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return str(script)


async def remove_leftovers() -> list[str]:
    """Delete the namespaces whose test process is gone (a run killed mid-test); their names."""
    return await sweep(LEFT_BY)


@asynccontextmanager
async def namespace() -> AsyncIterator[Namespace]:
    global _swept
    if not _swept:
        _swept = True
        await remove_leftovers()
    number = next(_counter)
    name = f"gbt{os.getpid()}n{number}"
    outer, inner = f"gbo{os.getpid() % 100000}{number}", f"gbi{os.getpid() % 100000}{number}"
    # Each namespace its own /30 (a counter past 63 wraps: only one test uses a namespace at a time).
    base = 4 * (number % 64)
    host_side, ns_side = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    created = False
    try:
        await run("ip", "netns", "add", name)
        created = True
        # No IPv6 inside: its link-local address turns usable (DAD) a second or two after the link comes up,
        # and Chromium, started by then, takes that for a network change and aborts its loads
        # (ERR_NETWORK_CHANGED, seen failing a page's module load).
        await no_ipv6(name, "all", "default")
        await run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        await run("ip", "link", "set", inner, "netns", name)
        await no_ipv6(name, inner)
        await run("ip", "addr", "add", f"{host_side}/30", "dev", outer)
        await run("ip", "link", "set", outer, "up")
        await run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_side}/30", "dev", inner)
        await run("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        await run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        await run("ip", "netns", "exec", name, "ip", "route", "add", "default", "via", host_side)
        yield Namespace(name, outer, ns_side)
    finally:
        if created:
            await run("ip", "netns", "del", name)  # removes the inner end, and with it the pair
        await run("ip", "link", "del", outer, check=False)  # gone already with its peer, normally
