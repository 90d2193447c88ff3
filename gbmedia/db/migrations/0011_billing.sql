-- Billing (gbmedia/tenancy/billing.py): what each tier includes and charges per unit,
-- invoices per customer and billing period with their lines, the subscription's
-- past_due status, and the payment provider's events already applied (replays are
-- no-ops). Money is integer cents; unit prices are exact decimals of a cent.
-- docs/schema.md describes the columns.

ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_status_check
    CHECK (status IN ('pending', 'active', 'past_due', 'cancelled'));
ALTER TABLE subscriptions ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX subscriptions_reference ON subscriptions (customer_id, payment_reference);

CREATE TABLE plan_prices (
    plan_id          text NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('publish_minutes', 'subscribe_minutes', 'viewer_minutes',
                                                   'recording_minutes', 'messages', 'bytes_out', 'storage_bytes')),
    unit             text NOT NULL,                       -- what a unit is, for the invoice: minute, message, GB
    unit_size        numeric NOT NULL DEFAULT 1 CHECK (unit_size > 0),  -- a unit in the kind's own measure
    included_units   numeric NOT NULL DEFAULT 0 CHECK (included_units >= 0),
    unit_price_cents numeric(12, 4) NOT NULL DEFAULT 0 CHECK (unit_price_cents >= 0),
    PRIMARY KEY (plan_id, kind)
);

-- Included amounts follow the tiers' size; overage prices fall as tiers grow.
INSERT INTO plan_prices (plan_id, kind, unit, unit_size, included_units, unit_price_cents)
SELECT p.id, k.kind, k.unit, k.unit_size, k.included * p.scale, k.price / p.discount
  FROM (VALUES ('free', 1, 1), ('starter', 10, 1), ('pro', 100, 1.25), ('enterprise', 1000, 2))
       AS p (id, scale, discount)
 CROSS JOIN (VALUES
       ('publish_minutes',   'minute',  1,          1000,  0.40),
       ('subscribe_minutes', 'minute',  1,          3000,  0.20),
       ('viewer_minutes',    'minute',  1,          5000,  0.10),
       ('recording_minutes', 'minute',  1,          60,    1.00),
       ('messages',          'message', 1,          10000, 0.01),
       ('bytes_out',         'GB',      1000000000, 10,    5.00),
       ('storage_bytes',     'GB',      1000000000, 1,     2.00)) AS k (kind, unit, unit_size, included, price);
-- The free tier is never charged beyond its quotas.
UPDATE plan_prices SET unit_price_cents = 0 WHERE plan_id = 'free';

CREATE TABLE invoices (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    number           text NOT NULL UNIQUE,
    plan_id          text NOT NULL REFERENCES plans (id),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL CHECK (period_end > period_start),
    -- draft: the period is still running (regenerated on demand); open: issued at the
    -- period's close, awaiting payment; paid: the provider said so; void: cancelled.
    status           text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'open', 'paid', 'void')),
    currency         text NOT NULL DEFAULT 'USD',
    subtotal_cents   bigint NOT NULL CHECK (subtotal_cents >= 0),
    total_cents      bigint NOT NULL CHECK (total_cents >= 0),
    generated_at     timestamptz NOT NULL DEFAULT now(),
    issued_at        timestamptz,
    paid_at          timestamptz,
    -- One invoice per customer and period, whichever node makes it.
    UNIQUE (customer_id, period_start)
);
CREATE INDEX invoices_open ON invoices (period_end) WHERE status = 'draft';

CREATE TABLE invoice_lines (
    invoice_id       uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position         integer NOT NULL CHECK (position >= 0),
    kind             text NOT NULL,  -- 'subscription' for the tier's fee, else a usage kind
    description      text NOT NULL,
    unit             text NOT NULL,
    quantity         numeric NOT NULL CHECK (quantity >= 0),   -- used, in units
    included         numeric NOT NULL CHECK (included >= 0),   -- included in the tier, in units
    billable         numeric NOT NULL CHECK (billable >= 0),   -- quantity beyond included
    unit_price_cents numeric(12, 4) NOT NULL CHECK (unit_price_cents >= 0),
    amount_cents     bigint NOT NULL CHECK (amount_cents >= 0),
    PRIMARY KEY (invoice_id, position)
);

-- Payment-provider events applied (POST /api/v1/billing/payment-events): an event id seen
-- again is acknowledged and not applied twice.
CREATE TABLE payment_events (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    customer_id uuid REFERENCES customers (id) ON DELETE CASCADE,
    type        text NOT NULL,
    body        jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
