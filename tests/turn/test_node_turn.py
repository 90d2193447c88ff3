"""How a node comes by its TURN servers: configured ones, its own coturn child, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gbmedia.config import detect_public_host
from gbmedia.node import Node
from gbmedia.tenancy.tokens import Grants, mint_token
from gbmedia.turn.coturn import CoturnPlan, EmbeddedCoturn
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.turn.test_coturn import allocation


async def test_configured_turn_servers_get_credentials_and_no_child_is_started(
    turnserver: str, tmp_path: Path, database_url: str
):
    address = detect_public_host()
    external = EmbeddedCoturn(CoturnPlan(tmp_path / "external", address, address, (44000, 44999)), turnserver)
    await external.start()  # stands in for an operator's coturn: the node knows only its URLs and secret
    try:
        settings = make_settings(
            tmp_path, database_url, turn_urls=",".join(external.urls), turn_secret=external.secret, turn_embedded=True
        )
        node = await Node.start(settings)
        try:
            assert node.coturn is None and node.turn is not None and node.turn.urls == external.urls
            issued = node.turn.issue("p_dave")
            async with allocation(external.urls[1], issued.username, issued.credential) as turn:
                assert turn.relayed_address[0] == address
        finally:
            await node.stop()
    finally:
        await external.stop()


async def test_the_embedded_coturn_starts_and_stops_with_the_node(turnserver: str, tmp_path: Path, database_url: str):
    node = await Node.start(make_settings(tmp_path, database_url, turn_embedded=True, turn_relay_ports="44000-44999"))
    try:
        assert node.coturn is not None and node.turn is not None and node.turn.urls == node.coturn.urls
        assert node.coturn.plan.directory == node.settings.data_dir / "turn" / node.settings.node_id
        process = node.coturn._process
        assert process is not None and process.returncode is None
        issued = node.turn.issue("p_erin")
        async with allocation(node.turn.urls[0], issued.username, issued.credential):
            pass
    finally:
        await node.stop()
    assert process.returncode is not None


async def test_without_a_turn_server_joined_names_none(client: TestClient, tenant: Tenant, rtc: Any, node: Node):
    assert node.turn is None and node.coturn is None  # tests' nodes start no coturn unless asked
    frank = await rtc()
    joined = await frank.join(mint_token(tenant.key, tenant.secret, "frank", Grants.participant("plain")))
    assert joined["ice_servers"] == [] and joined["ice_servers_expire_at"] is None
    assert (await frank.request({"type": "ice_servers"}))["ice_servers"] == []
