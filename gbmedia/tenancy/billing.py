"""Billing: tier prices, invoices per customer and period, and the subscription's standing.

Prices (``plan_prices``, seeded by migration 0011): per tier and usage kind, how many
units the monthly fee includes and what each unit beyond costs, in exact decimal
cents. Money is integer cents everywhere else: a line's amount is its billable units
times the unit price, rounded half up to a cent once, and the invoice's total is the
sum of its lines. No float ever touches money.

Invoices: one per customer and billing period (a calendar month, UTC), whichever node
makes it: ``UNIQUE (customer_id, period_start)`` and the row lock taken before its
lines are written. While the period runs, generating (on demand) rewrites a
``draft``; once the period has ended the next generation (on demand, or the
:class:`InvoiceCloser` every node runs) issues it (``open``) and it never changes again,
except to ``paid`` or ``void`` (the payment provider's events).

Standing: the customer's current subscription (its newest row) is ``pending``,
``active``, ``past_due`` or ``cancelled``. A customer with no subscription row is
billed by hand by the operator and is in good standing. Anything but ``active``
refuses new service (:func:`standing_refusal`): participant tokens and room creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg

from gbmedia.errors import ApiError, conflict, forbidden, not_found
from gbmedia.tenancy import usage
from gbmedia.tenancy.revocation import Revoked, nobody_listens

log = logging.getLogger(__name__)

SUBSCRIPTION_STATUSES = ("pending", "active", "past_due", "cancelled")
# Which moves the payment provider may make: a cancelled subscription stays cancelled
# (a new one has a new reference).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"pending", "active", "cancelled"}),
    "active": frozenset({"active", "past_due", "cancelled"}),
    "past_due": frozenset({"past_due", "active", "cancelled"}),
    "cancelled": frozenset({"cancelled"}),
}
_UNITS = Decimal("0.000001")
_CENT = Decimal(1)
_DESCRIPTIONS = {
    "publish_minutes": "Publishing minutes",
    "subscribe_minutes": "Participant minutes (receiving)",
    "viewer_minutes": "Live viewer minutes",
    "recording_minutes": "Recording minutes",
    "messages": "Chat messages",
    "bytes_out": "Media sent",
    "storage_bytes": "Recording storage (peak held)",
}


def plain(value: Decimal) -> str:
    """An exact decimal without exponent or trailing zeros: ``10000``, ``0.4``."""
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class Price:
    kind: str
    unit: str
    unit_size: Decimal
    included_units: Decimal
    unit_price_cents: Decimal


@dataclass(frozen=True)
class InvoiceLine:
    position: int
    kind: str
    description: str
    unit: str
    quantity: Decimal
    included: Decimal
    billable: Decimal
    unit_price_cents: Decimal
    amount_cents: int

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kind": self.kind,
            "description": self.description,
            "unit": self.unit,
            "quantity": plain(self.quantity),
            "included": plain(self.included),
            "billable": plain(self.billable),
            "unit_price_cents": plain(self.unit_price_cents),
            "amount_cents": self.amount_cents,
        }


@dataclass(frozen=True)
class Invoice:
    id: uuid.UUID
    customer_id: uuid.UUID
    number: str
    plan_id: str
    period_start: dt.datetime
    period_end: dt.datetime
    status: str
    currency: str
    subtotal_cents: int
    total_cents: int
    generated_at: dt.datetime
    issued_at: dt.datetime | None
    paid_at: dt.datetime | None
    lines: tuple[InvoiceLine, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "number": self.number,
            "plan_id": self.plan_id,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "status": self.status,
            "currency": self.currency,
            "subtotal_cents": self.subtotal_cents,
            "total_cents": self.total_cents,
            "generated_at": self.generated_at,
            "issued_at": self.issued_at,
            "paid_at": self.paid_at,
            "lines": [line.to_json() for line in self.lines],
        }


def price_lines(
    plan_name: str, fee_cents: int, prices: Sequence[Price], totals: dict[str, Decimal]
) -> list[InvoiceLine]:
    """The invoice's lines: the tier's fee, then one per priced usage kind (pure: no I/O)."""
    lines = [
        InvoiceLine(
            0,
            "subscription",
            f"{plan_name} tier",
            "month",
            Decimal(1),
            Decimal(0),
            Decimal(1),
            Decimal(fee_cents),
            fee_cents,
        )
    ]
    for position, price in enumerate(sorted(prices, key=lambda p: usage.KINDS.index(p.kind)), start=1):
        used = (totals.get(price.kind, Decimal(0)) / price.unit_size).quantize(_UNITS, ROUND_HALF_UP)
        billable = max(Decimal(0), used - price.included_units)
        amount = int((billable * price.unit_price_cents).quantize(_CENT, ROUND_HALF_UP))
        lines.append(
            InvoiceLine(
                position,
                price.kind,
                _DESCRIPTIONS[price.kind],
                price.unit,
                used,
                price.included_units,
                billable,
                price.unit_price_cents,
                amount,
            )
        )
    return lines


def money(cents: int, currency: str) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100:,}.{abs(cents) % 100:02d} {currency}"


def invoice_html(invoice: Invoice, customer_name: str) -> str:
    """A printable page of the invoice (self-contained: no scripts, no external resources)."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{e(line.description)}</td><td class=n>{line.quantity.normalize():f} {e(line.unit)}</td>"
        f"<td class=n>{line.included.normalize():f}</td><td class=n>{line.billable.normalize():f}</td>"
        f"<td class=n>{line.unit_price_cents.normalize():f}¢</td>"
        f"<td class=n>{e(money(line.amount_cents, invoice.currency))}</td></tr>"
        for line in invoice.lines
    )
    period = f"{invoice.period_start:%Y-%m-%d} – {(invoice.period_end - dt.timedelta(seconds=1)):%Y-%m-%d}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {e(invoice.number)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #111 }}
table {{ border-collapse: collapse; width: 100% }} th, td {{ border-bottom: 1px solid #ccc; padding: .4em }}
th {{ text-align: left }} .n {{ text-align: right; font-variant-numeric: tabular-nums }}
@media print {{ body {{ margin: 0 }} }}
</style></head><body>
<h1>Invoice {e(invoice.number)}</h1>
<p>Customer: <strong>{e(customer_name)}</strong> ({e(str(invoice.customer_id))})<br>
Tier: {e(invoice.plan_id)}<br>Period: {e(period)}<br>Status: {e(invoice.status)}</p>
<table><thead><tr><th>Item</th><th class=n>Used</th><th class=n>Included</th><th class=n>Billable</th>
<th class=n>Unit price</th><th class=n>Amount</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><th colspan=5>Total</th>
<th class=n id=total>{e(money(invoice.total_cents, invoice.currency))}</th></tr></tfoot>
</table></body></html>
"""


def standing_refusal(status: str | None) -> ApiError | None:
    """The 403 that refuses new service for a subscription in ``status``; None in good standing."""
    if status == "pending":
        return forbidden("subscription_pending", "the subscription is not active yet (no payment received)")
    if status == "past_due":
        return forbidden("subscription_past_due", "the subscription is past due: a payment failed")
    if status == "cancelled":
        return forbidden("subscription_cancelled", "the subscription is cancelled")
    return None


async def subscription_status(db: asyncpg.Pool | asyncpg.Connection, customer_id: uuid.UUID) -> str | None:
    """The customer's current subscription's status (its newest row); None when it has none."""
    return await db.fetchval(
        "SELECT status FROM subscriptions WHERE customer_id = $1 ORDER BY created_at DESC, id LIMIT 1", customer_id
    )


async def require_standing(db: asyncpg.Pool | asyncpg.Connection, customer_id: uuid.UUID) -> None:
    refusal = standing_refusal(await subscription_status(db, customer_id))
    if refusal is not None:
        raise refusal


_INVOICE_COLUMNS = """id, customer_id, number, plan_id, period_start, period_end, status, currency,
                      subtotal_cents, total_cents, generated_at, issued_at, paid_at"""


def _invoice(row: asyncpg.Record, lines: Sequence[asyncpg.Record]) -> Invoice:
    return Invoice(
        **{k: row[k] for k in row.keys()},
        lines=tuple(
            InvoiceLine(
                **{k: line[k] for k in line.keys() if k != "invoice_id"},
            )
            for line in lines
        ),
    )


class Billing:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.announce_revoked = nobody_listens  # a cancelled subscription's open sessions end (revocation.py)

    async def prices(self, plan_id: str, conn: asyncpg.Connection | None = None) -> list[Price]:
        rows = await (conn or self.pool).fetch(
            "SELECT kind, unit, unit_size, included_units, unit_price_cents FROM plan_prices WHERE plan_id = $1",
            plan_id,
        )
        return [Price(**dict(row)) for row in rows]

    async def generate(self, customer_id: uuid.UUID, at: dt.datetime, now: dt.datetime | None = None) -> Invoice:
        """The invoice of the period containing ``at``: (re)written while a draft, issued once the period ended."""
        now = now or dt.datetime.now(dt.UTC)
        start, end = usage.period_bounds(at)
        if start > now:
            raise ApiError(400, "period_in_future", "the billing period has not started yet", {"period": _label(start)})
        async with self.pool.acquire() as conn, conn.transaction():
            customer = await conn.fetchrow(
                """SELECT c.name, c.subscription_tier, p.name AS plan_name, p.price_cents_per_month
                     FROM customers c JOIN plans p ON p.id = c.subscription_tier WHERE c.id = $1""",
                customer_id,
            )
            if customer is None:
                raise not_found("customer", customer_id)
            await conn.execute(
                """INSERT INTO invoices (customer_id, number, plan_id, period_start, period_end,
                                         subtotal_cents, total_cents)
                   VALUES ($1, $2, $3, $4, $5, 0, 0) ON CONFLICT (customer_id, period_start) DO NOTHING""",
                customer_id,
                f"INV-{start:%Y%m}-{customer_id.hex[:10].upper()}",
                customer["subscription_tier"],
                start,
                end,
            )
            row = await conn.fetchrow(
                f"SELECT {_INVOICE_COLUMNS} FROM invoices WHERE customer_id = $1 AND period_start = $2 FOR UPDATE",
                customer_id,
                start,
            )
            if row["status"] == "draft":
                plan_id = customer["subscription_tier"]
                lines = price_lines(
                    customer["plan_name"],
                    int(customer["price_cents_per_month"]),
                    await self.prices(plan_id, conn),
                    await usage.period_totals(conn, customer_id, start, end),
                )
                total = sum(line.amount_cents for line in lines)
                await conn.execute("DELETE FROM invoice_lines WHERE invoice_id = $1", row["id"])
                await conn.executemany(
                    """INSERT INTO invoice_lines (invoice_id, position, kind, description, unit, quantity, included,
                                                 billable, unit_price_cents, amount_cents)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                    [
                        (
                            row["id"],
                            line.position,
                            line.kind,
                            line.description,
                            line.unit,
                            line.quantity,
                            line.included,
                            line.billable,
                            line.unit_price_cents,
                            line.amount_cents,
                        )
                        for line in lines
                    ],
                )
                issued = now >= end
                row = await conn.fetchrow(
                    f"""UPDATE invoices SET plan_id = $2, subtotal_cents = $3, total_cents = $3,
                                            generated_at = $4::timestamptz,
                                            status = CASE WHEN $5::boolean THEN 'open' ELSE 'draft' END,
                                            issued_at = CASE WHEN $5::boolean THEN $4::timestamptz END
                         WHERE id = $1 RETURNING {_INVOICE_COLUMNS}""",
                    row["id"],
                    plan_id,
                    total,
                    now,
                    issued,
                )
            return await self._with_lines(conn, row)

    async def _with_lines(self, conn: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> Invoice:
        lines = await conn.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", row["id"])
        return _invoice(row, lines)

    async def get(self, invoice_id: uuid.UUID) -> Invoice:
        row = await self.pool.fetchrow(f"SELECT {_INVOICE_COLUMNS} FROM invoices WHERE id = $1", invoice_id)
        if row is None:
            raise not_found("invoice", invoice_id)
        return await self._with_lines(self.pool, row)

    async def list(self, customer_id: uuid.UUID, limit: int) -> list[Invoice]:
        rows = await self.pool.fetch(
            f"SELECT {_INVOICE_COLUMNS} FROM invoices WHERE customer_id = $1 ORDER BY period_start DESC LIMIT $2",
            customer_id,
            limit,
        )
        return [await self._with_lines(self.pool, row) for row in rows]

    async def close_periods(self, now: dt.datetime) -> int:
        """Issue the last period's invoice of every customer that has none issued yet; how many were issued.

        Every node may run it at once: each invoice is made under its unique key and row lock.
        """
        last_start, _ = usage.period_bounds(usage.period_bounds(now)[0] - dt.timedelta(seconds=1))
        due = await self.pool.fetch(
            """SELECT c.id FROM customers c
                WHERE c.status <> 'closed' AND c.created_at < $2
                  AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = c.id
                                    AND i.period_start = $1 AND i.status <> 'draft')""",
            last_start,
            usage.period_bounds(now)[0],
        )
        for row in due:
            await self.generate(row["id"], last_start, now)
        return len(due)

    # --- the payment provider ---------------------------------------------------------

    async def apply_payment_event(self, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a verified provider event once: a subscription's status, or an invoice paid.

        A cancellation of the customer's current subscription ends its open sessions on every
        node (past due and pending only refuse new ones)."""
        result = await self._apply(event_id, body)
        if result.get("status") == "cancelled" and "subscription" in result:
            customer_id = uuid.UUID(str(body["customer_id"]))
            if await subscription_status(self.pool, customer_id) == "cancelled":
                await self.announce_revoked(Revoked("subscription_cancelled", customer_id=customer_id))
        return result

    async def _apply(self, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        customer_id = uuid.UUID(str(body["customer_id"]))
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM customers WHERE id = $1", customer_id) is None:
                raise not_found("customer", customer_id)
            fresh = await conn.fetchval(
                """INSERT INTO payment_events (id, customer_id, type, body) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (id) DO NOTHING RETURNING true""",
                event_id,
                customer_id,
                body["type"],
                body,
            )
            if not fresh:
                return {"applied": False, "duplicate": True}
            if body["type"] == "invoice.paid":
                paid = await conn.fetchval(
                    """UPDATE invoices SET status = 'paid', paid_at = now()
                        WHERE id = $1 AND customer_id = $2 AND status = 'open' RETURNING id""",
                    uuid.UUID(str(body["invoice_id"])),
                    customer_id,
                )
                if paid is None:
                    raise conflict("invoice_not_payable", "no open invoice of this customer has that id")
                return {"applied": True, "duplicate": False, "invoice_id": paid, "status": "paid"}
            status, reference = body["status"], body["subscription"]
            current = await conn.fetchrow(
                """SELECT id, status FROM subscriptions WHERE customer_id = $1 AND payment_reference = $2
                   FOR UPDATE""",
                customer_id,
                reference,
            )
            if current is None:
                plan = await conn.fetchrow(
                    """SELECT p.id, p.price_cents_per_month FROM customers c JOIN plans p ON p.id = c.subscription_tier
                        WHERE c.id = $1""",
                    customer_id,
                )
                await conn.execute(
                    """INSERT INTO subscriptions (customer_id, plan_id, status, payment_reference, amount_cents,
                                                  activated_at, cancelled_at)
                       VALUES ($1, $2, $3::text, $4, $5, CASE WHEN $3::text = 'active' THEN now() END,
                               CASE WHEN $3::text = 'cancelled' THEN now() END)""",
                    customer_id,
                    plan["id"],
                    status,
                    reference,
                    plan["price_cents_per_month"],
                )
            else:
                if status not in TRANSITIONS[current["status"]]:
                    raise ApiError(
                        409,
                        "subscription_transition_invalid",
                        f"a {current['status']} subscription cannot become {status}",
                        {"current": current["status"], "requested": status},
                    )
                await conn.execute(
                    """UPDATE subscriptions SET status = $2::text, updated_at = now(),
                              activated_at = CASE WHEN $2::text = 'active' THEN coalesce(activated_at, now())
                                                  ELSE activated_at END,
                              cancelled_at = CASE WHEN $2::text = 'cancelled' THEN now() ELSE cancelled_at END
                        WHERE id = $1""",
                    current["id"],
                    status,
                )
            return {"applied": True, "duplicate": False, "subscription": reference, "status": status}

    async def subscription(self, customer_id: uuid.UUID) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            """SELECT id, plan_id, status, payment_reference, amount_cents, currency, activated_at, cancelled_at,
                      created_at, updated_at
                 FROM subscriptions WHERE customer_id = $1 ORDER BY created_at DESC, id LIMIT 1""",
            customer_id,
        )
        return {
            "subscription": dict(row) if row is not None else None,
            "in_good_standing": row is None or row["status"] == "active",
        }


def _label(start: dt.datetime) -> str:
    return f"{start:%Y-%m}"


class InvoiceCloser:
    """Every node's periodic task: the last period's invoices issued, and the hour's storage snapshot taken."""

    def __init__(self, billing: Billing, interval: float) -> None:
        self.billing = billing
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: dt.datetime | None = None) -> int:
        now = now or dt.datetime.now(dt.UTC)
        await usage.snapshot_storage(self.billing.pool, now)
        return await self.billing.close_periods(now)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="invoice-closer")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("invoice close failed; retried at the next interval", extra={"error": str(exc)})
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
