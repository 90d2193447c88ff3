"""The aiohttp application: middlewares, health, metrics, and each domain's routes.

Every path under ``/api/`` is authenticated here, before any handler runs, so a
handler that forgets to check credentials cannot exist; handlers only decide what
the authenticated principal may reach.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from gbmedia.errors import ApiError
from gbmedia.http.keys import NODE, PRINCIPAL, REQUEST_ID
from gbmedia.http.responses import error_response, json_response
from gbmedia.metrics import CONTENT_TYPE
from gbmedia.node import Node

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _route_label(request: web.Request) -> str:
    """The route template, never the raw path: ids in labels would explode cardinality."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    supplied = request.headers.get("X-Request-Id", "")
    request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    headers: dict[str, str] = {}
    error: ApiError | None = None
    try:
        if request.path.startswith("/api/"):
            principal = await node.tenancy.auth.authenticate(request.headers.get("Authorization"), request_id)
            request[PRINCIPAL] = principal
            decision = await node.rate_limiter.take(principal.actor.name)
            if not decision.allowed:
                headers["Retry-After"] = str(max(1, round(decision.retry_after + 0.5)))
                raise ApiError(
                    429,
                    "rate_limited",
                    "too many requests; retry later",
                    {"retry_after": round(decision.retry_after, 3)},
                )
        response = await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect goes out as it is, with the request id, and is counted
            exc.headers["X-Request-Id"] = request_id
            node.metrics.http_requests.labels(request.method, _route_label(request), str(exc.status)).inc()
            raise
        error = ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
        if exc.status == 413:
            error.message = f"the request body exceeds {node.settings.max_body_bytes} bytes"
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        error = ApiError(
            500, "internal_error", f"the server failed; its logs have the details under request {request_id}"
        )
    if error is not None:
        if error.status == 429 and "Retry-After" not in headers and "retry_after" in error.details:
            headers["Retry-After"] = str(max(1, round(error.details["retry_after"] + 0.5)))
        response = error_response(error, headers)
        node.metrics.http_errors.labels(error.code).inc()
    response.headers["X-Request-Id"] = request_id
    route = _route_label(request)
    node.metrics.http_requests.labels(request.method, route, str(response.status)).inc()
    node.metrics.http_latency.labels(request.method, route).observe(time.perf_counter() - started)
    return response


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
    body = request.app[NODE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def openapi_handler() -> Handler:
    """``GET /openapi.json``: the API's OpenAPI document, read once from the package."""
    document = resources.files("gbmedia.http").joinpath("openapi.json").read_bytes()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    return openapi


def create_app(node: Node) -> web.Application:
    from gbmedia.http import web as web_files
    from gbmedia.messaging import api as messaging_api
    from gbmedia.recording import api as recording_api
    from gbmedia.rooms import api as rooms_api
    from gbmedia.signaling import whip as signaling_whip
    from gbmedia.signaling import ws as signaling_ws
    from gbmedia.tenancy import api as tenancy_api

    app = web.Application(client_max_size=node.settings.max_body_bytes, middlewares=[api_middleware])
    app[NODE] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_handler())
    tenancy_api.register(app)
    rooms_api.register(app)
    signaling_ws.register(app)
    messaging_api.register(app)
    recording_api.register(app)
    web_files.register(app)
    signaling_whip.register(app)  # /whip and /whep (RFC 9725 ingest, WHEP playback)
    from gbmedia.streaming import api as hls_api

    hls_api.register(app)
    return app
