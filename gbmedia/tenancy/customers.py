"""Customers, their subscription tier (plan) and the quotas the tier grants."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gbmedia.errors import ApiError, bad_request, not_found
from gbmedia.tenancy import audit
from gbmedia.tenancy.models import QUOTAS, Actor, Customer, Plan, Quotas
from gbmedia.tenancy.revocation import Revoked, nobody_listens

_CUSTOMER_COLUMNS = "id, name, subscription_tier, status, max_instances, metadata, created_at"
CUSTOMER_STATUSES = ("active", "suspended", "closed")


def quota_exceeded(quota: str, limit: int, used: int | None = None, *, requested: int | None = None) -> ApiError:
    """403 whose code names the quota, e.g. ``quota_max_instances_exceeded``.

    A counted quota (instances, open rooms) says how many are ``used``; a bound on
    one value (participants per room) says what was ``requested`` instead.
    """
    if requested is not None:
        return ApiError(
            403,
            f"quota_{quota}_exceeded",
            f"the subscription allows at most {limit} for {quota}; {requested} was requested",
            {"quota": quota, "limit": limit, "requested": requested},
        )
    return ApiError(
        403,
        f"quota_{quota}_exceeded",
        f"the subscription allows {limit} for {quota}; {used} already in use",
        {"quota": quota, "limit": limit, "used": used},
    )


def _plan(row: asyncpg.Record) -> Plan:
    return Plan(
        id=row["id"],
        name=row["name"],
        quotas=Quotas(**{q: row[q] for q in QUOTAS}),
        features=dict(row["features"]),
        price_cents_per_month=row["price_cents_per_month"],
    )


def _customer(row: asyncpg.Record) -> Customer:
    return Customer(**dict(row))


class Customers:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.announce_revoked = nobody_listens  # open sessions end on every node (tenancy/revocation.py)

    async def plans(self) -> list[Plan]:
        rows = await self.pool.fetch("SELECT * FROM plans ORDER BY price_cents_per_month, id")
        return [_plan(r) for r in rows]

    async def plan(self, plan_id: str, conn: asyncpg.Connection | None = None) -> Plan:
        row = await (conn or self.pool).fetchrow("SELECT * FROM plans WHERE id = $1", plan_id)
        if row is None:
            raise bad_request(
                "unknown_tier", f"no subscription tier {plan_id!r}", tiers=[p.id for p in await self.plans()]
            )
        return _plan(row)

    async def create(
        self,
        actor: Actor,
        name: str,
        tier: str = "free",
        *,
        metadata: dict[str, Any] | None = None,
        max_instances: int | None = None,
    ) -> Customer:
        async with self.pool.acquire() as conn, conn.transaction():
            plan = await self.plan(tier, conn)
            row = await conn.fetchrow(
                f"""INSERT INTO customers (name, subscription_tier, max_instances, metadata)
                    VALUES ($1, $2, $3, $4) RETURNING {_CUSTOMER_COLUMNS}""",
                name,
                plan.id,
                plan.quotas.max_instances if max_instances is None else max_instances,
                metadata or {},
            )
            customer = _customer(row)
            await conn.execute(
                """INSERT INTO subscriptions (customer_id, plan_id, status, activated_at,
                                              amount_cents)
                   VALUES ($1, $2, 'active', now(), $3)""",
                customer.id,
                plan.id,
                plan.price_cents_per_month,
            )
            await audit.record(
                conn,
                actor,
                "customer.create",
                "customer",
                customer.id,
                customer_id=customer.id,
                details={"name": name, "tier": plan.id},
            )
        return customer

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[Customer]:
        rows = await self.pool.fetch(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers ORDER BY created_at, id LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        return [_customer(r) for r in rows]

    async def get(
        self, customer_id: uuid.UUID, conn: asyncpg.Connection | None = None, *, for_update: bool = False
    ) -> Customer:
        lock = " FOR UPDATE" if for_update else ""
        row = await (conn or self.pool).fetchrow(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = $1{lock}", customer_id
        )
        if row is None:
            raise not_found("customer", customer_id)
        return _customer(row)

    async def update(self, actor: Actor, customer_id: uuid.UUID, changes: dict[str, Any]) -> Customer:
        """Change name, status, tier, max_instances or metadata.

        Changing the tier also moves ``max_instances`` to the new tier's quota unless
        the same call sets it explicitly (an operator's negotiated exception).
        """
        allowed = {"name", "status", "subscription_tier", "max_instances", "metadata"}
        unknown = set(changes) - allowed
        if unknown:
            raise bad_request("unknown_field", f"cannot change {sorted(unknown)}")
        if "status" in changes and changes["status"] not in CUSTOMER_STATUSES:
            raise bad_request("invalid_status", f"status must be one of {CUSTOMER_STATUSES}")
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self.get(customer_id, conn, for_update=True)
            values = dict(changes)
            tier = values.get("subscription_tier")
            if tier is not None and tier != current.subscription_tier:
                plan = await self.plan(tier, conn)
                values.setdefault("max_instances", plan.quotas.max_instances)
                await conn.execute(
                    """UPDATE subscriptions SET status = 'cancelled', cancelled_at = now()
                        WHERE customer_id = $1 AND status = 'active'""",
                    customer_id,
                )
                await conn.execute(
                    """INSERT INTO subscriptions (customer_id, plan_id, status, activated_at,
                                                  amount_cents)
                       VALUES ($1, $2, 'active', now(), $3)""",
                    customer_id,
                    plan.id,
                    plan.price_cents_per_month,
                )
            if not values:
                return current
            assignments = ", ".join(f"{col} = ${i + 2}" for i, col in enumerate(values))
            row = await conn.fetchrow(
                f"""UPDATE customers SET {assignments}, updated_at = now()
                     WHERE id = $1 RETURNING {_CUSTOMER_COLUMNS}""",
                customer_id,
                *values.values(),
            )
            await audit.record(
                conn,
                actor,
                "customer.update",
                "customer",
                customer_id,
                customer_id=customer_id,
                details={"changes": values},
            )
        if values.get("status", "active") != "active":  # suspended or closed: its open sessions end
            await self.announce_revoked(Revoked("customer_suspended", customer_id=customer_id))
        return _customer(row)

    async def quotas(self, customer: Customer, conn: asyncpg.Connection | None = None) -> Quotas:
        """The tier's quotas, with the customer's own instance limit.

        Pass ``conn`` inside a transaction: taking a second pool connection while
        holding a lock can deadlock a small pool.
        """
        plan = await self.plan(customer.subscription_tier, conn)
        values = {q: getattr(plan.quotas, q) for q in QUOTAS}
        values["max_instances"] = customer.max_instances
        return Quotas(**values)

    async def usage(self, customer_id: uuid.UUID) -> dict[str, int]:
        instances = await self.pool.fetchval(
            "SELECT count(*) FROM instances WHERE customer_id = $1 AND status <> 'deleted'",
            customer_id,
        )
        rooms = await self.pool.fetchval(
            "SELECT count(*) FROM rooms WHERE customer_id = $1 AND status = 'open'", customer_id
        )
        return {"instances": instances, "open_rooms": rooms}
