"""Fixtures of the browser tests: the node on the interface address, and a tenant on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.config import detect_public_host
from gbmedia.node import Node
from tests.helpers import Tenant, create_tenant


@pytest.fixture
async def site(node: Node) -> AsyncIterator[TestClient]:
    """The node's app on the interface address, as a browser elsewhere would reach it (ICE uses it)."""
    async with TestClient(TestServer(create_app(node), host=detect_public_host())) as client:
        yield client


@pytest.fixture
async def tenant(site: TestClient) -> Tenant:
    return await create_tenant(site)
