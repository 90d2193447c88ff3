"""The aiohttp application: the composition root of the HTTP side.

This is the one place that knows every module: it builds the API middleware
(:mod:`gbmedia.http.middleware`, with tenancy's authentication), the health and
metrics routes, and hands each module's ``register`` the service it serves, never
the whole node.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from gbmedia.bots import api as bots_api
from gbmedia.bots import keywords_api, providers_api
from gbmedia.bots.media import api as media_bots_api
from gbmedia.errors import ApiError
from gbmedia.http import web as web_files
from gbmedia.http.abuse import rate_limited
from gbmedia.http.middleware import Handler, api_middleware
from gbmedia.http.responses import json_response
from gbmedia.messaging import api as messaging_api
from gbmedia.metrics import CONTENT_TYPE
from gbmedia.node import Node
from gbmedia.recording import api as recording_api
from gbmedia.rooms import api as rooms_api
from gbmedia.rooms import nodes_api
from gbmedia.signaling import cascade as signaling_cascade
from gbmedia.signaling import whip as signaling_whip
from gbmedia.signaling import ws as signaling_ws
from gbmedia.signaling.relay import cluster_middleware
from gbmedia.streaming import api as streaming_api
from gbmedia.tenancy import api as tenancy_api
from gbmedia.tenancy import webhooks_api
from gbmedia.tenancy.auth import request_authenticator

# The node, for the health routes here and for tests that look inside a running app; modules never use it.
NODE: web.AppKey[Node] = web.AppKey("node", Node)


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return json_response(
        {"status": "ok", "node_id": node.settings.node_id, "uptime_seconds": round(time.monotonic() - node.started, 3)}
    )


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[NODE].readiness()
    ready = all(c["ok"] for c in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """The node's metrics; with ``GBMEDIA_METRICS_TOKEN`` set, only for a bearer of that token
    (what Prometheus is given), since the series name rooms and participants."""
    node = request.app[NODE]
    expected = node.settings.metrics_token
    if expected is not None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
            raise ApiError(
                401, "metrics_token_required", "send Authorization: Bearer <GBMEDIA_METRICS_TOKEN> to read /metrics"
            )
    body = node.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def openapi_handler() -> Handler:
    """``GET /openapi.json``: the API's OpenAPI document, read once from the package."""
    document = resources.files("gbmedia.http").joinpath("openapi.json").read_bytes()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    return openapi


def old_keyword_paths_authenticator(node: Node) -> Callable[[web.Request], Awaitable[str]]:
    """What the API middleware does for /api/, for the old platform's keyword paths (/systemKeywords/...)."""
    authenticate = request_authenticator(node.tenancy.auth)

    async def check(request: web.Request) -> str:
        caller = await authenticate(request)
        decision = await node.rate_limiter.take(caller)
        if not decision.allowed:
            raise rate_limited(decision, "api")
        return caller

    return check


def create_app(node: Node) -> web.Application:
    settings = node.settings
    middleware = api_middleware(
        authenticate=request_authenticator(node.tenancy.auth),
        rate_limiter=node.rate_limiter,
        metrics=node.metrics,
        max_body_bytes=settings.max_body_bytes,
        abuse=node.abuse,
        already_counted=node.relay.auth.signed,
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[middleware, cluster_middleware(node.relay.auth)]
    )
    app[NODE] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_handler())
    tenancy_api.register(
        app,
        tenancy_api.TenancyApi(
            node.tenancy, node.db.pool, token_ttl_seconds=settings.token_ttl_seconds, link_base=settings.base_url
        ),
    )
    webhooks_api.register(app, webhooks_api.WebhooksApi(node.tenancy.webhooks, node.webhooks.wake))
    rooms_api.register(
        app,
        rooms_api.RoomsApi(node.rooms, node.live_rooms, node.tenancy.instances, node.quality, node.db.pool, node.relay),
    )
    signaling_ws.register(
        app,
        signaling_ws.RtcService(
            node.tenancy.auth,
            node.live_rooms,
            node.chat,
            node.chat_hub,
            node.presence,
            node.relay,
            node.abuse,
            node.tenancy.revocations,
            socket_limit=settings.socket_max_buffered_bytes,
            turn=node.turn,
            metrics=node.metrics,
        ),
    )
    nodes_api.register(app, nodes_api.NodesApi(node.registry, node.db.pool, settings.clustered))
    messaging_api.register(app, node.chat)
    bots_api.register(app, node.bots)
    keywords_api.register(app, keywords_api.KeywordsApi(node.bots, old_keyword_paths_authenticator(node)))
    providers_api.register(app, providers_api.ProvidersApi(node.db.pool, node.tenancy.instances.secrets))
    recording_api.register(app, recording_api.RecordingsApi(node.recordings, node.rooms, node.relay))
    media_bots_api.register(app, media_bots_api.MediaBotsApi(node.media_bots, node.rooms, node.db.pool, node.relay))
    web_files.register(app)
    signaling_whip.register(  # /whip and /whep (RFC 9725 ingest, WHEP playback)
        app,
        signaling_whip.WhipService(
            node.tenancy.auth,
            node.live_rooms,
            node.rate_limiter,
            node.metrics,
            node.relay,
            node.abuse,
            node.tenancy.revocations,
            turn=node.turn,
        ),
    )
    streaming_api.register(app, node.hls, streaming_api.HlsOrigin(node.rooms, node.relay))
    signaling_cascade.register(app, node.cascade)  # live rooms' feeds to edge nodes (cluster listener, signed)
    return app
