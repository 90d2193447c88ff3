"""ICE consent freshness on the node's connections (gbmedia.sfu.aiortc_adapter.keep_consent).

aioice gives each consent check one 0.5 s try and closes after six misses; a node whose
event loop or shared UDP socket runs more than half a second behind for half a minute
lost its live host that way (bench.live, 600 viewers joining). Here two real aioice
agents connect over loopback; the answering side then answers late, or not at all, and
the times are scaled down (interval, expiry, retransmissions are module settings).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioice import Connection

from gbmedia.sfu import aiortc_adapter

LATE = 0.8  # seconds: past aioice's single 0.5 s try, inside the retransmission window


@pytest.fixture
async def agents(monkeypatch) -> AsyncIterator[tuple[Connection, Connection]]:
    monkeypatch.setattr(aiortc_adapter, "CONSENT_INTERVAL", 0.3)
    monkeypatch.setattr(aiortc_adapter, "CONSENT_EXPIRY", 2.5)
    monkeypatch.setattr(aiortc_adapter, "CONSENT_RETRANSMISSIONS", 2)  # a check waits 0.5 + 1 + 2 s
    node, peer = Connection(ice_controlling=True), Connection(ice_controlling=False)
    node.query_consent = functools.partial(aiortc_adapter.keep_consent, node)  # type: ignore[method-assign]
    peer.query_consent = lambda: asyncio.sleep(3600)  # type: ignore[method-assign]  # only the node checks here
    for agent in (node, peer):
        await agent.gather_candidates()
    for agent, other in ((node, peer), (peer, node)):
        for candidate in other.local_candidates:
            await agent.add_remote_candidate(candidate)
        await agent.add_remote_candidate(None)
        agent.remote_username, agent.remote_password = other.local_username, other.local_password
    await asyncio.gather(node.connect(), peer.connect())
    yield node, peer
    await node.close()
    await peer.close()


def answer(peer: Connection, delay: float | None, answered: list[float]) -> None:
    """The peer answers checks ``delay`` seconds late (None: never)."""
    loop = asyncio.get_running_loop()
    original = peer.request_received

    def late(message: Any, addr: Any, protocol: Any) -> None:
        if delay is not None:
            answered.append(loop.time())
            loop.call_later(delay, original, message, addr, protocol)

    peer.request_received = late  # type: ignore[method-assign]


async def test_checks_answered_late_keep_the_connection(agents):
    node, peer = agents
    answered: list[float] = []
    answer(peer, LATE, answered)
    await asyncio.sleep(5.0)  # twice the expiry
    assert len(answered) >= 3  # checks went on, and each was answered late
    assert node._query_consent_task is not None and not node._query_consent_task.done()
    assert node._nominated  # still connected
    await node.send(b"still sending")
    assert await asyncio.wait_for(peer.recv(), 2) == b"still sending"


async def test_checks_never_answered_end_the_connection(agents):
    node, peer = agents
    answer(peer, None, [])
    await asyncio.wait_for(node._query_consent_task, 10)  # the consent task closed it and ended
    assert node._query_consent_task is None and not node._nominated
    with pytest.raises(ConnectionError):
        await node.send(b"after consent expired")
