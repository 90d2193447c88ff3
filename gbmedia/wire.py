"""What every message of the participant WebSocket (``/rtc``) shares: the strict base model, the size
limit, the protocol version and the parse step.

The socket speaks for several packages (signaling's room messages, chat's messages from
:mod:`gbmedia.messaging.protocol`); each defines its own messages on :class:`Message`
and :mod:`gbmedia.signaling.protocol` composes them into the one union a frame is
parsed with. Kept here, in the core, so neither package copies the rules and every
message is judged the same way: unknown fields are refused, types are not coerced,
and a bad frame becomes a :class:`ProtocolError` with a stable code.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter, ValidationError

from gbmedia.errors import ProtocolError, validation_problems
from gbmedia.jsondepth import JsonTooDeep, loads

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024  # an SDP with dozens of m-lines stays far below this

T = TypeVar("T")


class Message(BaseModel):
    """A client message: strict, no unknown fields, an optional ``id`` echoed on its reply or error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(max_length=64)] | int | None = None


def _request_id(data: Any) -> str | int | None:
    """The frame's ``id``, when it has one of the right type, for the reply or error."""
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str | int) else None


def parse(raw: str | bytes, types: tuple[str, ...], adapter: TypeAdapter[T]) -> T:
    """One frame as the message of ``adapter`` (a union discriminated by ``type``), or :class:`ProtocolError`.

    ``types`` are the accepted ``type`` values in the order an ``unknown_type`` error
    lists them.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        data = loads(raw)
    except JsonTooDeep as exc:
        raise ProtocolError(
            "json_too_deep",
            f"the message nests deeper than {exc.limit} levels",
            _request_id(exc.parsed),
            {"max_depth": exc.limit},
        ) from None
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    request_id = _request_id(data)
    kind = data.get("type")
    if kind not in types:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}", request_id, {"types": list(types)})
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        # Each failed field's path below the message's tag (the union's discriminator).
        problems, text = validation_problems(exc, skip=1, whole="(message)")
        raise ProtocolError(
            "invalid_message", f"invalid {kind} message: {text}", request_id, {"problems": problems}
        ) from None
