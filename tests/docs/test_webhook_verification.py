"""The webhook verification snippet of docs/api.md ("Verifying a delivery"), run as written.

The snippet is read from the document and executed; it must accept real deliveries of
a node (signed with the endpoint's secret) and refuse forged, tampered and old ones.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gbmedia.config import Settings
from gbmedia.tenancy.webhook_events import REPLAY_WINDOW_SECONDS, signature
from tests.conftest import make_settings
from tests.helpers import Tenant
from tests.tenancy.webhook_receiver import Receiver, create_endpoint

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def snippet() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    section = text.split("### Verifying a delivery", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "docs/api.md has no python block under 'Verifying a delivery'"
    return match.group(1)


def documented_verify() -> Callable[..., bool]:
    namespace: dict[str, Any] = {}
    exec(compile(snippet(), str(API_DOC), "exec"), namespace)  # the document's own code, as written
    assert namespace["REPLAY_WINDOW_SECONDS"] == REPLAY_WINDOW_SECONDS
    return namespace["verify_webhook"]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, webhook_allow_networks="127.0.0.0/8")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


async def test_the_documented_snippet_accepts_real_deliveries_and_refuses_forged_or_old_ones(
    client: TestClient, tenant: Tenant, receiver: Receiver
):
    verify = documented_verify()
    hook_id, secret = await create_endpoint(client, tenant, receiver.url(), ["room_started"])
    resp = await client.post("/api/v1/rooms", json={"name": "signed"}, headers=tenant.admin)
    assert resp.status == 201
    resp = await client.post(f"/api/v1/instances/{tenant.instance_id}/webhooks/{hook_id}/test", headers=tenant.admin)
    assert resp.status == 202
    await receiver.wait_for(lambda: len(receiver.requests) == 2)
    for request in receiver.requests:
        headers = dict(request.headers)
        assert verify(secret, headers, request.body)
        # tampered body, another endpoint's secret, a forged or foreign signature: refused
        assert not verify(secret, headers, request.body.replace(b'"type"', b'"tipe"'))
        assert not verify(secret + "x", headers, request.body)
        forged = {**headers, "X-Gbmedia-Webhook-Signature": "v1=" + "0" * 64}
        assert not verify(secret, forged, request.body)
        assert not verify(
            secret,
            {**headers, "X-Gbmedia-Webhook-Signature": "v2=" + headers["X-Gbmedia-Webhook-Signature"][3:]},
            request.body,
        )
        assert not verify(secret, {k: v for k, v in headers.items() if "Timestamp" not in k}, request.body)
        # a captured request replayed after the window: refused, though its signature is right
        sent_at = int(headers["X-Gbmedia-Webhook-Timestamp"])
        assert abs(time.time() - sent_at) < 60
        assert not verify(secret, headers, request.body, now=sent_at + REPLAY_WINDOW_SECONDS + 1)
        assert verify(secret, headers, request.body, now=sent_at + REPLAY_WINDOW_SECONDS - 1)
        # an old timestamp re-signed with the right secret is still too old
        old = sent_at - REPLAY_WINDOW_SECONDS - 1
        resigned = {
            **headers,
            "X-Gbmedia-Webhook-Timestamp": str(old),
            "X-Gbmedia-Webhook-Signature": signature(secret, old, request.body),
        }
        assert not verify(secret, resigned, request.body, now=sent_at)
        assert verify(secret, resigned, request.body, now=old + 1)
