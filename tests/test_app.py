"""The HTTP application: error shape, body limits, request ids, metrics, readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gbmedia.app import create_app
from gbmedia.config import Settings
from gbmedia.node import Node
from tests.conftest import make_settings
from tests.helpers import OPERATOR, create_tenant


async def error_code(resp) -> str:  # type: ignore[no-untyped-def]
    body = await resp.json()
    return body["error"]["code"]


async def test_healthz_answers_without_auth(client: TestClient):
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["node_id"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "body_not_object"),
        (b"", "body_required"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_malformed_bodies_get_400_with_a_code(client: TestClient, raw: bytes, code: str):
    resp = await client.post("/api/v1/customers", data=raw, headers={**OPERATOR, "Content-Type": "application/json"})
    assert resp.status == 400
    assert await error_code(resp) == code
    # The server is still fine afterwards.
    assert (await client.get("/api/v1/plans", headers=OPERATOR)).status == 200


async def test_oversized_body_gets_413_and_nothing_is_stored(client: TestClient, node: Node):
    big = b'{"name": "' + b"x" * (node.settings.max_body_bytes + 10) + b'"}'
    resp = await client.post("/api/v1/customers", data=big, headers={**OPERATOR, "Content-Type": "application/json"})
    assert resp.status == 413
    body = await resp.json()
    assert body["error"]["code"] == "payload_too_large"
    assert str(node.settings.max_body_bytes) in body["error"]["message"]
    assert await node.db.pool.fetchval("SELECT count(*) FROM customers") == 0


async def test_unknown_routes_and_methods_answer_json(client: TestClient):
    resp = await client.get("/nowhere")
    assert (resp.status, await error_code(resp)) == (404, "not_found")
    resp = await client.get("/api/v1/nowhere")
    assert (resp.status, await error_code(resp)) == (401, "auth_required")  # no probing without auth
    resp = await client.get("/api/v1/nowhere", headers=OPERATOR)
    assert (resp.status, await error_code(resp)) == (404, "not_found")
    resp = await client.put("/api/v1/plans", headers=OPERATOR)
    assert (resp.status, await error_code(resp)) == (405, "method_not_allowed")


async def test_request_id_is_echoed_or_made(client: TestClient):
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces\t"})
    made = resp.headers["X-Request-Id"]
    assert made != "bad id with spaces\t" and len(made) == 32


async def test_unhandled_errors_become_500_json_and_the_server_keeps_serving(node: Node):
    app = create_app(node)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/boom")
        assert resp.status == 500
        body = await resp.json()
        assert body["error"]["code"] == "internal_error"
        assert "kaboom" not in body["error"]["message"]  # internals stay in the log
        assert resp.headers["X-Request-Id"] in body["error"]["message"]
        assert (await client.get("/healthz")).status == 200


async def test_metrics_count_requests_by_route_template_and_errors_by_code(client: TestClient):
    tenant = await create_tenant(client)
    await client.get(f"/api/v1/instances/{tenant.instance_id}", headers=OPERATOR)
    await client.get("/api/v1/whoami")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert 'gbmedia_http_requests_total{method="GET",route="/api/v1/instances/{instance_id}",status="200"} 1.0' in text
    assert tenant.instance_id not in text  # ids never become labels
    assert 'gbmedia_http_errors_total{code="auth_required"} 1.0' in text
    assert 'gbmedia_http_request_duration_seconds_count{method="POST",route="/api/v1/customers"} 1.0' in text
    assert "gbmedia_build_info{" in text


async def test_readyz_follows_the_database(client: TestClient, node: Node, pg_admin_url: str, database_url: str):
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"]["database"]["ok"] is True

    name = database_url.split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["database"]["ok"] is False and body["checks"]["database"]["error"]
        assert (await client.get("/healthz")).status == 200  # alive, just not ready
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    for _ in range(20):  # the pool reconnects by itself
        resp = await client.get("/readyz")
        if resp.status == 200:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200


async def test_embedded_node_is_not_ready_once_its_database_dies(tmp_path: Path):
    settings = make_settings(tmp_path, None)
    node = await Node.start(settings)
    try:
        assert node.db.embedded is not None
        async with TestClient(TestServer(create_app(node))) as client:
            assert (await client.get("/readyz")).status == 200
            await node.db.embedded.stop()  # the database process goes away under the node
            resp = await client.get("/readyz")
            assert resp.status == 503
            assert (await client.get("/healthz")).status == 200
    finally:
        await node.stop()


async def rate_limited_client(settings: Settings) -> tuple[Node, TestClient]:
    node = await Node.start(settings)
    client = TestClient(TestServer(create_app(node)))
    await client.start_server()
    return node, client


async def test_api_rate_limit_answers_429_with_retry_after(tmp_path: Path, database_url: str):
    node, client = await rate_limited_client(
        make_settings(tmp_path, database_url, api_rate_limit=0.5, api_rate_burst=3)
    )
    try:
        statuses = [(await client.get("/api/v1/plans", headers=OPERATOR)).status for _ in range(3)]
        assert statuses == [200, 200, 200]
        resp = await client.get("/api/v1/plans", headers=OPERATOR)
        assert resp.status == 429
        assert await error_code(resp) == "rate_limited"
        assert int(resp.headers["Retry-After"]) >= 1
        # Another caller has its own bucket.
        tenant_resp = await client.get("/healthz")
        assert tenant_resp.status == 200
    finally:
        await client.close()
        await node.stop()


@pytest.mark.redis
async def test_rate_limit_is_shared_by_nodes_through_redis(tmp_path: Path, database_url: str, redis_url: str):
    import uuid

    token = f"operator-{uuid.uuid4().hex}"
    # The bucket is the caller's ("operator"), not the token's: start it full, whatever ran before.
    import redis.asyncio as aioredis

    cleaner = aioredis.from_url(redis_url)
    await cleaner.delete("gbmedia:rl:operator")
    await cleaner.aclose()
    settings = make_settings(
        tmp_path, database_url, redis_url=redis_url, operator_token=token, api_rate_limit=0.1, api_rate_burst=4
    )
    node_a, client_a = await rate_limited_client(settings)
    node_b, client_b = await rate_limited_client(settings)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        statuses = []
        for n in range(6):
            client = client_a if n % 2 == 0 else client_b
            statuses.append((await client.get("/api/v1/plans", headers=headers)).status)
        assert statuses == [200, 200, 200, 200, 429, 429]
        ready = await (await client_a.get("/readyz")).json()
        assert ready["checks"]["redis"]["ok"] is True
    finally:
        for client in (client_a, client_b):
            await client.close()
        for node in (node_a, node_b):
            await node.stop()


async def test_metrics_can_be_kept_for_the_bearer_of_the_metrics_token(tmp_path, database_url):
    from aiohttp.test_utils import TestClient, TestServer

    from gbmedia.app import create_app
    from gbmedia.node import Node
    from tests.conftest import make_settings

    token = "metrics-token-0123456789"
    node = await Node.start(make_settings(tmp_path, database_url, metrics_token=token))
    try:
        async with TestClient(TestServer(create_app(node))) as client:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
                resp = await client.get("/metrics", headers=headers)
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "metrics_token_required"
            resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200 and "gbmedia_build_info" in await resp.text()
            assert (await client.get("/healthz")).status == 200  # the health routes stay open
    finally:
        await node.stop()
