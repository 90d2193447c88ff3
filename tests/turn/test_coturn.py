"""The node's embedded coturn, a real ``turnserver`` child: it accepts the credentials the node issues,
refuses forged and expired ones, and relays only towards the node's own media address.

aioice (aiortc's ICE library) speaks TURN to it the way a client's ICE agent does; the
answers (401, 403) are coturn's own, so what is checked here is coturn's reading of
the credentials and of the configuration the node wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from gbmedia.config import detect_public_host
from gbmedia.turn.coturn import CoturnPlan, EmbeddedCoturn
from gbmedia.turn.credentials import TurnCredentials
from tests.processes import gone


def host_port(url: str) -> tuple[str, int]:
    """``turn:192.0.2.2:3478?transport=udp`` -> ("192.0.2.2", 3478)."""
    _scheme, host, rest = url.split(":", 2)
    return host, int(rest.split("?")[0])


@pytest.fixture
async def coturn(turnserver: str, tmp_path: Path) -> AsyncIterator[EmbeddedCoturn]:
    address = detect_public_host()
    server = EmbeddedCoturn(CoturnPlan(tmp_path / "turn", address, address, (41000, 41999)), turnserver)
    await server.start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def allocation(url: str, username: str, password: str) -> AsyncIterator[Any]:
    """A TURN allocation over ``url``'s transport (udp, tcp, or TLS for turns:); its protocol object."""
    server = host_port(url)
    loop = asyncio.get_running_loop()
    transport: Any

    def client(cls: type) -> Any:
        return cls(server, username=username, password=password, lifetime=600, channel_refresh_time=500)

    if url.endswith("transport=udp"):
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: client(TurnClientUdpProtocol), remote_addr=server
        )
    else:
        context = None
        if url.startswith("turns:"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the embedded coturn's certificate is self-signed
        transport, protocol = await loop.create_connection(
            lambda: client(TurnClientTcpProtocol), host=server[0], port=server[1], ssl=context
        )
    try:
        await protocol.connect()
        yield protocol
    finally:
        if protocol.refresh_task is not None:
            protocol.refresh_task.cancel()
        transport.close()


def error_code(failure: pytest.ExceptionInfo[stun.TransactionFailed]) -> int:
    return int(failure.value.response.attributes["ERROR-CODE"][0])


async def test_issued_credentials_allocate_over_udp_tcp_and_tls(coturn: EmbeddedCoturn):
    assert [u.split(":")[0] for u in coturn.urls] == ["turn", "turn", "turns"]
    issued = TurnCredentials(coturn.urls, coturn.secret, 600).issue("p_alice")
    for url in coturn.urls:
        async with allocation(url, issued.username, issued.credential) as turn:
            assert turn.relayed_address[0] == coturn.plan.advertised, url
            assert 41000 <= turn.relayed_address[1] <= 41999


async def test_forged_and_expired_credentials_are_refused(coturn: EmbeddedCoturn):
    url = coturn.urls[0]
    forged = TurnCredentials(coturn.urls, "not-the-node-secret", 600).issue("p_mallory")
    with pytest.raises(stun.TransactionFailed) as failure:
        async with allocation(url, forged.username, forged.credential):
            pass
    assert error_code(failure) == 401
    expired = TurnCredentials(coturn.urls, coturn.secret, 600).issue("p_late", now=time.time() - 1200)
    assert expired.expires_at < time.time()
    with pytest.raises(stun.TransactionFailed) as failure:
        async with allocation(url, expired.username, expired.credential):
            pass
    assert error_code(failure) == 401


async def test_a_relay_reaches_the_node_and_no_other_private_or_loopback_address(coturn: EmbeddedCoturn):
    issued = TurnCredentials(coturn.urls, coturn.secret, 600).issue("p_alice")
    async with allocation(coturn.urls[0], issued.username, issued.credential) as turn:
        await turn.channel_bind(0x4000, (coturn.plan.advertised, 9))  # the node's media address: allowed
        for number, internal in enumerate(("10.1.2.3", "192.168.1.1", "172.16.0.1", "127.0.0.1", "169.254.169.254")):
            with pytest.raises(stun.TransactionFailed) as failure:
                await turn.channel_bind(0x4001 + number, (internal, 9))
            assert error_code(failure) == 403, internal


async def test_the_secret_stays_in_a_private_file_and_stop_ends_the_child(coturn: EmbeddedCoturn):
    conf = coturn.plan.directory / "turnserver.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert f"static-auth-secret={coturn.secret}" in conf.read_text()
    process = coturn._process
    assert process is not None and process.returncode is None
    await coturn.stop()
    assert process.returncode is not None
    host, port = host_port(coturn.urls[1])
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)


KILLED_NODE = """
import asyncio, pathlib, sys
from gbmedia.turn.coturn import CoturnPlan, EmbeddedCoturn

async def main():
    plan = CoturnPlan(pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[2], (46000, 46999))
    coturn = EmbeddedCoturn(plan, sys.argv[3])
    await coturn.start()
    print(coturn._process.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_the_child_dies_with_a_node_killed_outright(turnserver: str, tmp_path: Path):
    """A node SIGKILLed (a crashed worker) runs no shutdown: coturn must not outlive it."""
    node = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_NODE,
        str(tmp_path / "turn"),
        detect_public_host(),
        turnserver,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert node.stdout is not None
        child = int(await asyncio.wait_for(node.stdout.readline(), 30))
        assert not gone(child)
    finally:
        node.kill()
        await node.wait()
    for _ in range(200):
        if gone(child):
            break
        await asyncio.sleep(0.05)
    assert gone(child)
