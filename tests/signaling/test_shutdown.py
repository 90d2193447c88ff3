"""A node that shuts down closes its clients' sockets with 1012 (reconnect, resume) instead of waiting on them."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.node import Node
from gbmedia.signaling.ws import OPEN_SOCKETS
from gbmedia.tenancy.tokens import Grants, mint_token
from tests.helpers import create_tenant


async def test_a_stopping_node_tells_every_socket_to_reconnect(node: Node):
    client = TestClient(TestServer(create_app(node)))
    await client.start_server()
    try:
        tenant = await create_tenant(client)
        sockets = []
        for who in ("alice", "bob"):
            ws = await client.ws_connect("/rtc")
            await ws.send_json(
                {
                    "type": "join",
                    "id": "1",
                    "token": mint_token(tenant.key, tenant.secret, who, Grants.participant("bye")),
                }
            )
            assert (await ws.receive_json())["type"] == "joined"
            sockets.append(ws)
        assert len(client.app[OPEN_SOCKETS]) == 2

        closing = asyncio.ensure_future(client.server.close())  # the app's shutdown, as on SIGTERM
        for ws in sockets:
            message = await ws.receive(timeout=30)
            while message.type == WSMsgType.TEXT:  # a leave notice may come first
                message = await ws.receive(timeout=30)
            assert message.type == WSMsgType.CLOSE and (message.data, message.extra) == (1012, "node shutting down")
        await asyncio.wait_for(closing, 30)
        assert client.app[OPEN_SOCKETS] == set()
    finally:
        await client.close()
