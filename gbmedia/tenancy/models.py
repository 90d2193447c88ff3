"""Plain data of the tenancy domain, as handlers and the CLI see it."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from gbmedia.errors import ApiError
from gbmedia.tenancy.run_tokens import RunScope
from gbmedia.tenancy.tokens import Grants

FEATURES = ("recording", "live", "bots")
QUOTAS = (
    "max_instances",
    "max_concurrent_rooms",
    "max_participants_per_room",
    "recording_minutes_per_month",
    "storage_bytes",
)


@dataclass(frozen=True)
class Quotas:
    max_instances: int
    max_concurrent_rooms: int
    max_participants_per_room: int
    recording_minutes_per_month: int
    storage_bytes: int


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    quotas: Quotas
    features: dict[str, bool]
    price_cents_per_month: int


@dataclass(frozen=True)
class Customer:
    id: uuid.UUID
    name: str
    subscription_tier: str
    status: str
    max_instances: int
    metadata: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class Instance:
    id: uuid.UUID
    customer_id: uuid.UUID
    name: str
    status: str
    shard_id: int
    region: str
    locale: str
    features: dict[str, bool]
    config: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class ApiKey:
    key: str
    instance_id: uuid.UUID
    description: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class Credentials:
    """A new key and its secret: the only time the secret is shown."""

    key: str
    secret: str


ActorKind = Literal["operator", "api_key", "cli", "system"]


@dataclass(frozen=True)
class Actor:
    """Who performs a change, for the audit log."""

    name: str
    kind: ActorKind
    request_id: str | None = None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller of the REST API.

    The operator administers every tenant. An instance caller presents a token
    signed with one of its instance's API keys and reaches only that instance.
    """

    kind: Literal["operator", "instance"]
    actor: Actor
    customer_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    identity: str | None = None
    grants: Grants = field(default_factory=Grants)
    run: RunScope | None = None  # a dialog run's token: the run's conversation and user (gbmedia/tenancy/run_tokens.py)

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def is_instance_admin(self) -> bool:
        """The operator, or a token of the instance's administration (never a join link's)."""
        return self.is_operator or self.grants.instance_admin

    def moderates(self, room: str) -> bool:
        """Whether the caller may moderate the room named ``room``: an administrator, or its room_admin."""
        return self.is_operator or self.grants.moderates(room)

    def require_any(self, *grants: str) -> None:
        """403 ``grant_missing`` unless the caller is the operator or its token has one of ``grants``."""
        if self.is_operator or any(self.grants.has(g) for g in grants):
            return
        raise ApiError(403, "grant_missing", f"the token lacks the {' or '.join(grants)} grant", {"grant": grants[0]})

    def require_moderator(self, room: str) -> None:
        """403 ``grant_missing`` unless the caller moderates ``room``."""
        if not self.moderates(room):
            raise ApiError(
                403,
                "grant_missing",
                f"moderating room {room!r} takes room_admin for it or instance_admin",
                {"grant": "room_admin"},
            )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    actor: str
    actor_kind: str
    action: str
    target_type: str
    target_id: str
    customer_id: uuid.UUID | None
    instance_id: uuid.UUID | None
    details: dict[str, Any]
    request_id: str | None
