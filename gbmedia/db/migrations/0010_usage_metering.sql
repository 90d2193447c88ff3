-- Usage metering (gbmedia/tenancy/usage.py, gbmedia/rooms/metering.py): every usage
-- event carries a deterministic idempotency key, so a retried or replayed write never
-- counts twice, and an hourly rollup per customer, instance and kind, updated in the
-- transaction that inserts the event (only when the insert happened), answers usage
-- queries and invoices without scanning events. docs/schema.md describes the columns.

ALTER TABLE usage_events DROP CONSTRAINT usage_events_kind_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_kind_check CHECK (kind IN (
    'participant_minutes',            -- before 0010; no longer written
    'publish_minutes', 'subscribe_minutes', 'viewer_minutes',
    'recording_minutes', 'messages', 'bytes_out', 'storage_bytes'));
ALTER TABLE usage_events
    -- Who or what it measures: a participant's identity, a WHEP player's, a recording's id.
    ADD COLUMN subject         text,
    -- viewer_minutes: how the viewer watched (webrtc, whep, hls).
    ADD COLUMN channel         text CHECK (channel IN ('webrtc', 'whep', 'hls')),
    ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX usage_events_idempotency ON usage_events (idempotency_key);

-- Participant minutes (receiving and viewing) a tier allows per month; NULL: no quota, billed per use.
ALTER TABLE plans ADD COLUMN participant_minutes_per_month integer
    CHECK (participant_minutes_per_month >= 0);
UPDATE plans SET participant_minutes_per_month = 10000 WHERE id = 'free';

-- Sum of the hour's events (storage_bytes: the largest snapshot of the hour).
CREATE TABLE usage_hourly (
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id uuid NOT NULL,  -- the nil UUID for usage of the customer as a whole (storage)
    kind        text NOT NULL,
    hour        timestamptz NOT NULL CHECK (date_trunc('hour', hour AT TIME ZONE 'UTC') = hour AT TIME ZONE 'UTC'),
    quantity    numeric NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (customer_id, hour, kind, instance_id)
);
