"""Errors that carry a stable machine-readable code and an HTTP status.

Domain modules raise these; the HTTP layer renders them as
``{"error": {"code", "message"}}`` and the signaling layer as protocol errors, so
one error means the same thing to every client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
