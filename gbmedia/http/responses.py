"""Reading JSON requests and writing JSON responses with one error shape."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gbmedia import jsondepth
from gbmedia.errors import ApiError, bad_request, validation_problems
from gbmedia.jsondepth import JsonTooDeep

Model = TypeVar("Model", bound=BaseModel)


def to_json(value: Any) -> Any:
    """Dataclasses, UUIDs and datetimes as JSON-ready values."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_json(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        to_json(data), status=status, headers=headers, dumps=lambda v: json.dumps(v, separators=(",", ":"))
    )


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; aiohttp raises 413 past ``client_max_size``."""
    return parse_json_body(await request.read())


def parse_json_body(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 that says what is wrong with it."""
    if not body:
        raise bad_request("body_required", "this request needs a JSON object body")
    try:
        data = jsondepth.loads(body)
    except JsonTooDeep as exc:
        raise bad_request(
            "json_too_deep", f"the body nests deeper than {exc.limit} levels", max_depth=exc.limit
        ) from None
    except ValueError as exc:  # UnicodeDecodeError is one
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("body_not_object", "the body must be a JSON object")
    return data


def validate_body(data: dict[str, Any], model: type[Model]) -> Model:
    """A parsed body as ``model``, or 400 ``validation_failed`` listing each field's problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems, text = validation_problems(exc, whole="(body)")
        raise bad_request("validation_failed", f"the request body is invalid: {text}", problems=problems) from None


async def read_model(request: web.Request, model: type[Model]) -> Model:
    return validate_body(await read_json(request), model)


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    raw = request.match_info[name]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_request("invalid_id", f"{name} must be a UUID, got {raw!r}") from None


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request("invalid_query", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise bad_request("invalid_query", f"{name} must be between {low} and {high}")
    return value


def query_uuid(request: web.Request, name: str) -> uuid.UUID | None:
    """An optional UUID query parameter; 400 ``invalid_query`` when it is not one."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_request("invalid_query", f"{name} must be a UUID") from None
