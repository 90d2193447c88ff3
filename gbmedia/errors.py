"""Errors that carry a stable machine-readable code and an HTTP status.

Domain modules raise these; the HTTP layer renders them as
``{"error": {"code", "message"}}`` and the signaling layer as protocol errors, so
one error means the same thing to every client. :class:`ProtocolError` is the
socket's own error (no HTTP status): any layer that serves a socket may raise it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import asyncpg
import redis.exceptions
from pydantic import ValidationError


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, details)


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


def forbidden(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(403, code, message, details)


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no {what} {ident}")


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def insufficient_storage(message: str, **details: Any) -> ApiError:
    return ApiError(507, "insufficient_storage", message, details)


def database_unavailable(message: str = "the database does not answer; retry later") -> ApiError:
    return ApiError(503, "database_unavailable", message)


def redis_unavailable(message: str = "Redis does not answer; retry later") -> ApiError:
    return ApiError(503, "redis_unavailable", message)


# PostgreSQL is gone or going (class 08 connection errors, class 57 shutdown / cannot connect
# now / statement cancelled), out of resources (class 53: too many connections, its disk
# full, out of memory), or asyncpg lost the connection under a query.
_DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
# A socket error or a timeout means the database only when the driver raised it (a refused
# connect, the command timeout): the same types elsewhere are other failures.
_DRIVER_ONLY = (OSError, TimeoutError)


def _raised_in(traceback: TracebackType | None, package: str) -> bool:
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith(package):
            return True
        traceback = traceback.tb_next
    return False


def outage_error(exc: BaseException) -> ApiError | None:
    """The 503 a failure of PostgreSQL or Redis means to a client, or None for any other failure.

    A dependency that is down or hung is not the server's bug: the caller is told which one
    and to retry (``database_unavailable``, ``redis_unavailable``) rather than getting
    ``internal_error``, and the node logs a warning rather than a traceback. The exception's
    causes count too (a failure re-raised as another).
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return redis_unavailable()
        if isinstance(seen, _DATABASE_DOWN):
            return database_unavailable()
        if isinstance(seen, _DRIVER_ONLY):
            if _raised_in(seen.__traceback__, "asyncpg"):
                return database_unavailable()
            if _raised_in(seen.__traceback__, "redis"):
                return redis_unavailable()
        seen = seen.__cause__ or seen.__context__
    return None


RequestId = str | int | None  # a socket message's ``id``, echoed on its reply or error


class ProtocolError(Exception):
    def __init__(
        self, code: str, message: str, request_id: RequestId = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details or {}

    def to_message(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.request_id is not None:
            body["id"] = self.request_id
        if self.details:
            body["details"] = self.details
        return body


def validation_problems(exc: ValidationError, *, skip: int = 0, whole: str) -> tuple[list[dict[str, Any]], str]:
    """pydantic's failures as ``problems`` (each field's path, less its first ``skip`` parts, and its message;
    ``whole`` names a failure of the input as a whole), and as one line for a human."""
    problems = [
        {"field": ".".join(str(p) for p in e["loc"][skip:]) or whole, "message": e["msg"]} for e in exc.errors()
    ]
    return problems, "; ".join(f"{p['field']}: {p['message']}" for p in problems)
