"""Fixtures of the room tests: tenancy and the Rooms store on the test database."""

from __future__ import annotations

import asyncpg
import pytest

from gbmedia.config import Settings
from gbmedia.rooms.store import Rooms
from gbmedia.tenancy.secrets import SecretBox
from gbmedia.tenancy.service import Tenancy


@pytest.fixture
def tenancy(pool: asyncpg.Pool, settings: Settings) -> Tenancy:
    assert settings.secret_key
    return Tenancy.create(pool, settings, SecretBox(settings.secret_key), "operator-token-for-tests")


@pytest.fixture
def rooms(pool: asyncpg.Pool, tenancy: Tenancy) -> Rooms:
    return Rooms(pool, tenancy.customers, tenancy.instances, node_id="node-a")
