"""The API middleware: request ids, authentication of ``/api/``, rate limits, errors, metrics.

Every path under ``/api/`` is authenticated here, before any handler runs, so a
handler that forgets to check credentials cannot exist; handlers only decide what
the authenticated principal may reach. Who the caller is, is the application's
business: it hands in an :data:`Authenticate` (tenancy's), and this module knows
nothing of tenants.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gbmedia.errors import ApiError, outage_error
from gbmedia.http.abuse import AbuseLimits, rate_limited
from gbmedia.http.keys import REQUEST_ID
from gbmedia.http.responses import error_response
from gbmedia.metrics import Metrics
from gbmedia.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
# Authenticates an /api/ request (raising ApiError 401/403), keeps what it learnt on the
# request, and returns whom the rate limit counts the request against.
Authenticate = Callable[[web.Request], Awaitable[str]]

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


def route_label(request: web.Request) -> str:
    """The route template, never the raw path: ids in labels would explode cardinality."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# Paths whose callers are authenticated and rate limited here: the REST API, and the older
# platform's names kept as aliases of it (``/debuggerService/<name>``, gbmedia/bots/debug/api.py).
AUTHENTICATED_PREFIXES = ("/api/", "/debuggerService/")


def api_middleware(
    *,
    authenticate: Authenticate,
    rate_limiter: RateLimiter,
    metrics: Metrics,
    max_body_bytes: int,
    abuse: AbuseLimits | None = None,
    already_counted: Callable[[web.Request], bool] = lambda _request: False,
) -> Middleware:
    """``already_counted``: a request another node forwarded after taking its rate-limit token
    (signaling/relay.py) is not counted twice against the caller's budget. ``abuse``: failed
    authentications are counted per source address, and an address past its budget is refused
    before its credentials are looked at (no database work)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request[REQUEST_ID] = request_id
        started = time.perf_counter()
        headers: dict[str, str] = {}
        error: ApiError | None = None
        try:
            if request.path.startswith(AUTHENTICATED_PREFIXES):
                counted = already_counted(request)
                if abuse is not None and not counted:
                    caller = await abuse.authenticate(abuse.source(request), lambda: authenticate(request))
                else:
                    caller = await authenticate(request)
                decision = await rate_limiter.take(caller) if not counted else None
                if decision is not None and not decision.allowed:
                    raise rate_limited(decision, "api")
            response = await handler(request)
        except ApiError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect goes out as it is, with the request id, and is counted
                exc.headers["X-Request-Id"] = request_id
                metrics.http_requests.labels(request.method, route_label(request), str(exc.status)).inc()
                raise
            error = ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
            if exc.status == 413:
                error.message = f"the request body exceeds {max_body_bytes} bytes"
        except Exception as exc:
            error = outage_error(exc)
            if error is not None:  # PostgreSQL or Redis down or hung: 503, the node stays up
                log.warning(
                    "dependency unavailable",
                    extra={"request_id": request_id, "path": request.path, "code": error.code, "error": repr(exc)},
                )
            else:
                log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
                error = ApiError(
                    500, "internal_error", f"the server failed; its logs have the details under request {request_id}"
                )
        if error is not None:
            if error.status == 429 and "Retry-After" not in headers and "retry_after" in error.details:
                headers["Retry-After"] = str(max(1, round(error.details["retry_after"] + 0.5)))
            response = error_response(error, headers)
            metrics.http_errors.labels(error.code).inc()
        response.headers["X-Request-Id"] = request_id
        route = route_label(request)
        metrics.http_requests.labels(request.method, route, str(response.status)).inc()
        metrics.http_latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    return middleware
