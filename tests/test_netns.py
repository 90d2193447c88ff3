"""The test namespaces (tests/netns.py): what a killed run leaves does not break the next one."""

from __future__ import annotations

import subprocess

from tests import netns
from tests.conftest import service_missing


def gone_pid() -> int:
    """The id of a process that has exited (a killed test run's)."""
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(done.stdout)


async def test_a_killed_runs_namespace_is_removed_before_ours_takes_its_address():
    if (why := netns.missing()) is not None:
        service_missing(why)
    stale, outer = f"gbt{gone_pid()}n0", "gbostale0"
    await netns.run("ip", "netns", "add", stale)
    try:  # as a run killed mid-test leaves it: the veth's host side holds the first /30's address
        await netns.run("ip", "link", "add", outer, "type", "veth", "peer", "name", "gbistale0")
        await netns.run("ip", "link", "set", "gbistale0", "netns", stale)
        await netns.run("ip", "addr", "add", "198.51.100.1/30", "dev", outer)
        await netns.run("ip", "link", "set", outer, "up")
        assert stale in await netns_names()

        assert await netns.remove_leftovers() == [stale]
        assert stale not in await netns_names()
        assert outer not in await netns.run("ip", "-br", "link")  # the pair went with the namespace
        async with netns.namespace() as ours:
            assert await netns.remove_leftovers() == []  # ours (a live process's) stays
            assert ours.name in await netns_names()
            shown = await netns.run("ip", "-br", "addr", "show", "to", "198.51.100.0/24")
            holders = [line.split()[0].partition("@")[0] for line in shown.splitlines() if line.strip()]
            assert holders == [ours.outer_link]  # the only link with an address of the range: ours
    finally:
        await netns.run("ip", "netns", "del", stale, check=False)
        await netns.run("ip", "link", "del", outer, check=False)


async def netns_names() -> str:
    return await netns.run("ip", "netns", "list")
