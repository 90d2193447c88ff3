"""Instances of a customer, their API keys, and access tokens signed with them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gbmedia.errors import bad_request, conflict, not_found
from gbmedia.tenancy import audit
from gbmedia.tenancy.customers import Customers, quota_exceeded
from gbmedia.tenancy.models import FEATURES, Actor, ApiKey, Credentials, Instance
from gbmedia.tenancy.revocation import Revoked, nobody_listens
from gbmedia.tenancy.secrets import SecretBox, new_api_key, new_api_secret
from gbmedia.tenancy.sharding import shard_id_for
from gbmedia.tenancy.tokens import Grants, mint_token

_INSTANCE_COLUMNS = "id, customer_id, name, status, shard_id, region, locale, features, config, created_at"
INSTANCE_STATUSES = ("active", "suspended", "deleted")


def _instance(row: asyncpg.Record) -> Instance:
    return Instance(**dict(row))


def validate_features(features: Any) -> dict[str, bool]:
    if not isinstance(features, dict):
        raise bad_request("invalid_features", "features must be an object of booleans")
    for name, value in features.items():
        if name not in FEATURES:
            raise bad_request("unknown_feature", f"unknown feature {name!r}", features=list(FEATURES))
        if not isinstance(value, bool):
            raise bad_request("invalid_features", f"feature {name!r} must be true or false")
    return dict(features)


@dataclass(frozen=True)
class SigningKey:
    """An instance's active key with its decrypted secret."""

    instance: Instance
    key: str
    secret: str


class Instances:
    def __init__(
        self, pool: asyncpg.Pool, customers: Customers, secrets: SecretBox, *, shard_count: int, default_region: str
    ) -> None:
        self.pool = pool
        self.customers = customers
        self.secrets = secrets
        self.shard_count = shard_count
        self.default_region = default_region
        self.announce_revoked = nobody_listens  # open sessions end on every node (tenancy/revocation.py)

    async def create(
        self,
        actor: Actor,
        customer_id: uuid.UUID,
        name: str,
        *,
        region: str | None = None,
        locale: str = "en",
        features: dict[str, bool] | None = None,
        config: dict[str, Any] | None = None,
    ) -> tuple[Instance, Credentials]:
        """Create an instance and its first API key, within the customer's quota.

        The customer row is locked while counting, so two concurrent creations
        cannot both take the last free slot.
        """
        features = validate_features(features or {})
        async with self.pool.acquire() as conn, conn.transaction():
            customer = await self.customers.get(customer_id, conn, for_update=True)
            used = await conn.fetchval(
                "SELECT count(*) FROM instances WHERE customer_id = $1 AND status <> 'deleted'",
                customer_id,
            )
            if used >= customer.max_instances:
                raise quota_exceeded("max_instances", customer.max_instances, used)
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO instances (customer_id, name, shard_id, region, locale,
                                               features, config)
                        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_INSTANCE_COLUMNS}""",
                    customer_id,
                    name,
                    shard_id_for(customer_id, self.shard_count),
                    region or self.default_region,
                    locale,
                    features,
                    config or {},
                )
            except asyncpg.UniqueViolationError:
                raise conflict("instance_name_taken", f"the customer already has an instance named {name!r}") from None
            instance = _instance(row)
            await audit.record(
                conn,
                actor,
                "instance.create",
                "instance",
                instance.id,
                customer_id=customer_id,
                instance_id=instance.id,
                details={"name": name, "region": instance.region},
            )
            credentials = await self._add_key(conn, actor, instance, "initial key")
        return instance, credentials

    async def list(self, customer_id: uuid.UUID) -> list[Instance]:
        rows = await self.pool.fetch(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE customer_id = $1 ORDER BY created_at, id",
            customer_id,
        )
        return [_instance(r) for r in rows]

    async def get(self, instance_id: uuid.UUID, conn: asyncpg.Connection | None = None) -> Instance:
        row = await (conn or self.pool).fetchrow(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE id = $1", instance_id
        )
        if row is None:
            raise not_found("instance", instance_id)
        return _instance(row)

    async def update(self, actor: Actor, instance_id: uuid.UUID, changes: dict[str, Any]) -> Instance:
        allowed = {"name", "status", "region", "locale", "features", "config"}
        unknown = set(changes) - allowed
        if unknown:
            raise bad_request("unknown_field", f"cannot change {sorted(unknown)}")
        if "status" in changes and changes["status"] not in INSTANCE_STATUSES:
            raise bad_request("invalid_status", f"status must be one of {INSTANCE_STATUSES}")
        if "features" in changes:
            changes = {**changes, "features": validate_features(changes["features"])}
        if "config" in changes and not isinstance(changes["config"], dict):
            raise bad_request("invalid_config", "config must be an object")
        current = await self.get(instance_id)
        if not changes:
            return current
        assignments = ", ".join(f"{col} = ${i + 2}" for i, col in enumerate(changes))
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    f"""UPDATE instances SET {assignments}, updated_at = now()
                         WHERE id = $1 RETURNING {_INSTANCE_COLUMNS}""",
                    instance_id,
                    *changes.values(),
                )
            except asyncpg.UniqueViolationError:
                raise conflict("instance_name_taken", "the customer already has an instance with that name") from None
            if changes.get("status") == "deleted":
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE instance_id = $1 AND revoked_at IS NULL",
                    instance_id,
                )
            action = "instance.delete" if changes.get("status") == "deleted" else "instance.update"
            await audit.record(
                conn,
                actor,
                action,
                "instance",
                instance_id,
                customer_id=current.customer_id,
                instance_id=instance_id,
                details={"changes": changes},
            )
        if changes.get("status", "active") != "active":  # suspended or deleted: its open sessions end
            await self.announce_revoked(Revoked("instance_suspended", instance_id=instance_id))
        return _instance(row)

    async def delete(self, actor: Actor, instance_id: uuid.UUID) -> Instance:
        """Soft delete: the row stays for billing history; its keys stop working."""
        return await self.update(actor, instance_id, {"status": "deleted"})

    # --- API keys -----------------------------------------------------------------

    async def _add_key(
        self, conn: asyncpg.Connection, actor: Actor, instance: Instance, description: str
    ) -> Credentials:
        key, secret = new_api_key(), new_api_secret()
        await conn.execute(
            """INSERT INTO api_keys (key, instance_id, secret_ciphertext, description)
               VALUES ($1, $2, $3, $4)""",
            key,
            instance.id,
            self.secrets.encrypt(secret),
            description,
        )
        await audit.record(
            conn,
            actor,
            "api_key.create",
            "api_key",
            key,
            customer_id=instance.customer_id,
            instance_id=instance.id,
            details={"description": description},
        )
        return Credentials(key=key, secret=secret)

    async def create_key(self, actor: Actor, instance_id: uuid.UUID, description: str = "") -> Credentials:
        async with self.pool.acquire() as conn, conn.transaction():
            instance = await self.get(instance_id, conn)
            if instance.status == "deleted":
                raise conflict("instance_deleted", "a deleted instance cannot get new keys")
            return await self._add_key(conn, actor, instance, description)

    async def keys(self, instance_id: uuid.UUID) -> list[ApiKey]:
        rows = await self.pool.fetch(
            """SELECT key, instance_id, description, created_at, revoked_at
                 FROM api_keys WHERE instance_id = $1 ORDER BY created_at, key""",
            instance_id,
        )
        return [ApiKey(**dict(r)) for r in rows]

    async def revoke_key(self, actor: Actor, instance_id: uuid.UUID, key: str) -> ApiKey:
        async with self.pool.acquire() as conn, conn.transaction():
            instance = await self.get(instance_id, conn)
            row = await conn.fetchrow(
                """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                    WHERE key = $1 AND instance_id = $2
                RETURNING key, instance_id, description, created_at, revoked_at""",
                key,
                instance_id,
            )
            if row is None:
                raise not_found("api_key", key)
            await audit.record(
                conn, actor, "api_key.revoke", "api_key", key, customer_id=instance.customer_id, instance_id=instance_id
            )
        await self.announce_revoked(Revoked("api_key_revoked", api_key=key))  # its open sessions end everywhere
        return ApiKey(**dict(row))

    async def signing_key(self, api_key: str) -> tuple[SigningKey, bool] | None:
        """The key, its instance and secret, and whether the key is revoked."""
        row = await self.pool.fetchrow(
            "SELECT instance_id, secret_ciphertext, revoked_at FROM api_keys WHERE key = $1", api_key
        )
        if row is None:
            return None
        instance = await self.get(row["instance_id"])
        secret = self.secrets.decrypt(row["secret_ciphertext"])
        return SigningKey(instance, api_key, secret), row["revoked_at"] is not None

    async def newest_signing_key(self, instance_id: uuid.UUID) -> SigningKey:
        row = await self.pool.fetchrow(
            """SELECT key, secret_ciphertext FROM api_keys
                WHERE instance_id = $1 AND revoked_at IS NULL
                ORDER BY created_at DESC LIMIT 1""",
            instance_id,
        )
        instance = await self.get(instance_id)
        if row is None:
            raise conflict("no_active_api_key", f"instance {instance_id} has no active API key")
        return SigningKey(instance, row["key"], self.secrets.decrypt(row["secret_ciphertext"]))

    async def mint(
        self, instance_id: uuid.UUID, identity: str, grants: Grants, *, name: str | None = None, ttl_seconds: int
    ) -> str:
        """A token signed with the instance's newest active key."""
        if (refusal := grants.mint_refusal()) is not None:
            raise bad_request("room_required", refusal)
        signing = await self.newest_signing_key(instance_id)
        if signing.instance.status != "active":
            raise conflict("instance_not_active", f"instance {instance_id} is {signing.instance.status}")
        return mint_token(signing.key, signing.secret, identity, grants, name=name, ttl_seconds=ttl_seconds)
