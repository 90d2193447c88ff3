"""The subscribers' own host (bench/lib/netns.py): a namespace whose receive runs in a thread of its own.

What the forwarding benchmark's figures depend on: the server's datagrams reach the
subscribers inside it and are received by the namespace's NAPI thread (not in the
sender's system call), that thread stays off the server's CPUs, replies come back, and
nothing is left behind, even by a run that was killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from bench import fanout_floor, forwarding
from bench.lib import netns
from bench.lib.errors import BenchError
from bench.lib.targets import GbmediaTarget, JanusTarget
from tests.conftest import service_missing
from tests.sfu.test_fanout import native

COUNT = 200

RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
print(sock.getsockname()[1], flush=True)
got = 0
while got < int(sys.argv[2]):
    data, peer = sock.recvfrom(2048)
    got += 1
sock.sendto(str(got).encode(), peer)
"""


@pytest.fixture
def can_make() -> None:
    if (why := netns.missing()) is not None:
        service_missing(why)


def runs_of(pid: int) -> int:
    """How many times the thread ``pid`` was put on a CPU so far."""
    for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
        if line.startswith("nr_switches"):
            return int(line.split(":")[1])
    raise AssertionError(f"no nr_switches for {pid}")


async def names() -> list[str]:
    return [line.split()[0] for line in (await netns.run("ip", "netns", "list")).splitlines() if line.strip()]


async def test_the_servers_datagrams_reach_the_subscribers_host_and_are_received_in_its_own_thread(
    can_make: None,
) -> None:
    server_cpus = {min(os.sched_getaffinity(0))}
    async with netns.subscriber_host(server_cpus) as host:
        assert host.name in await names()
        assert f"inet {host.server_address}/30" in await netns.run("ip", "-4", "-o", "addr", "show", host.outer_link)
        assert "tcp-segmentation-offload: off" in await netns.run("ethtool", "-k", host.outer_link)
        # A queue in front of the link, as in front of a network card, holds what veth's ring cannot.
        queue = json.loads(await netns.run("tc", "-s", "-j", "qdisc", "show", "dev", host.outer_link))
        assert [(q["kind"], q["options"]["limit"]) for q in queue] == [("pfifo", netns.LINK_QUEUE)]
        inside = await netns.run(*host.command("ethtool", "-k", host.inner_link))
        assert "generic-receive-offload: on" in inside
        threaded = await netns.run(*host.command("cat", f"/sys/class/net/{host.inner_link}/threaded"))
        assert threaded.strip() == "1"
        assert host.napi_thread is not None
        # It runs before any process, as a card's interrupt would: behind busy subscribers its ring overflowed.
        assert os.sched_getscheduler(host.napi_thread) == os.SCHED_FIFO
        if len(os.sched_getaffinity(0)) > 1:
            assert not os.sched_getaffinity(host.napi_thread) & server_cpus  # off the server's CPUs

        receiver = await asyncio.create_subprocess_exec(
            *host.command(sys.executable, "-c", RECEIVER, host.address, str(COUNT)), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert receiver.stdout is not None
            port = int(await receiver.stdout.readline())
            runs_before = runs_of(host.napi_thread)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind((host.server_address, 0))
            sender.settimeout(10)
            try:
                for _ in range(COUNT):
                    sender.sendto(b"x" * 1200, (host.address, port))
                    await asyncio.sleep(0.001)
                reply, source = await asyncio.to_thread(sender.recvfrom, 64)
            finally:
                sender.close()
            assert reply == str(COUNT).encode() and source[0] == host.address  # every datagram, and the way back
            assert runs_of(host.napi_thread) > runs_before  # received by the namespace's own thread
            assert await host.link_drops() == 0  # the link's and its queue's counts: nothing dropped here
        finally:
            if receiver.returncode is None:
                receiver.kill()
            await receiver.wait()
    assert host.name not in await names()
    assert host.outer_link not in await netns.run("ip", "-br", "link")
    assert await host.link_drops() == 0  # the link is gone: nothing to read


async def test_two_hosts_at_once_take_different_addresses_and_a_killed_runs_is_removed(can_make: None) -> None:
    # named by a process that has exited, as a killed run leaves it
    stale = f"gbb{int(await netns.run('sh', '-c', 'echo $$'))}n0"
    await netns.run("ip", "netns", "add", stale)
    try:
        async with netns.subscriber_host() as first, netns.subscriber_host() as second:
            assert stale not in await names()  # swept by the first
            assert first.server_address != second.server_address and first.name != second.name
            assert {first.name, second.name} <= set(await names())
        assert not {first.name, second.name} & set(await names())
    finally:
        await netns.run("ip", "netns", "del", stale, check=False)


async def test_without_root_or_ethtool_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netns.missing() == "network namespaces need root"
    with pytest.raises(BenchError, match="cannot have a host of their own: network namespaces need root"):
        async with netns.subscriber_host():
            pass
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "ethtool" else f"/usr/bin/{tool}")
    assert netns.missing() == "ethtool is not installed (Debian package ethtool)"


async def test_a_failing_step_removes_what_was_made(can_make: None, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(name: str, inner: str, outer: str) -> None:
        raise BenchError("threaded NAPI refused")

    monkeypatch.setattr(netns, "tune_receive", refuse)
    before = set(await names())
    with pytest.raises(BenchError, match="threaded NAPI refused"):
        async with netns.subscriber_host():
            pass
    assert set(await names()) == before


async def test_local_subscribers_and_auto_without_namespaces_run_on_this_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with forwarding.subscribers_where(forwarding.parse_args(["--subscriber-host", "local"])) as host:
        assert host is None
    monkeypatch.setattr(netns, "missing", lambda: "network namespaces need root")
    async with forwarding.subscribers_where(forwarding.parse_args([])) as host:
        assert host is None
    assert "[subscribers] on this host: network namespaces need root" in capsys.readouterr().err


def test_servers_listen_where_the_subscribers_host_reaches_them(tmp_path: Path) -> None:
    args = forwarding.parse_args(["--server-env", "GBMEDIA_LOG_LEVEL=debug"])
    assert GbmediaTarget(args, tmp_path / "a").server.extra_env.get("GBMEDIA_HOST") is None  # loopback, as before
    args.server_address = "203.0.113.5"
    env = GbmediaTarget(args, tmp_path / "b").server.extra_env
    assert env["GBMEDIA_HOST"] == env["GBMEDIA_PUBLIC_HOST"] == "203.0.113.5"  # signaling and ICE candidates
    assert env["GBMEDIA_LOG_LEVEL"] == "debug"  # --server-env still comes last
    janus_server = JanusTarget(args, tmp_path / "c").server
    assert janus_server.ip == janus_server.http_ip == "203.0.113.5"
    args.janus_ip = "192.0.2.9"
    assert JanusTarget(args, tmp_path / "d").server.ip == "192.0.2.9"  # --janus-ip still wins for ICE


def test_entering_a_namespace_that_is_not_there_is_refused() -> None:
    with pytest.raises(FileNotFoundError):
        netns.enter("gbb-nowhere")


async def test_the_fan_out_floor_measures_with_its_receivers_on_this_host_or_in_a_namespace(can_make: None) -> None:
    native()
    for receivers in ("local", "netns"):
        args = fanout_floor.parse_args(["--receivers", receivers, "--subscribers", "2", "--seconds", "0.3"])
        (row,), host = await fanout_floor.measure_all(args)
        assert (host is not None) == (receivers == "netns")
        assert row["incoming_packets"] > 10 and row["received"] == 2 * row["incoming_packets"]  # every datagram


def test_the_queues_drops_are_read_from_tcs_json() -> None:
    # `tc -s -j qdisc show dev <link>` as this machine's iproute2 prints it, with drops added
    shown = (
        '[{"kind":"pfifo","handle":"8002:","root":true,"refcnt":3,"options":{"limit":1000},"bytes":0,'
        '"packets":0,"drops":7,"overlimits":0,"requeues":0,"backlog":0,"qlen":0}]'
    )
    assert netns.queue_drops(shown) == 7
    assert netns.queue_drops('Cannot find device "gbbo1n0"\n') == 0  # the link is gone
    assert netns.queue_drops("") == 0
