-- Webhooks (gbmedia/tenancy/webhooks.py): an instance's endpoints, the events written for
-- them in the transaction of the change they describe, one delivery per event and
-- endpoint, and every attempt of each delivery. docs/schema.md describes the columns.
-- (Numbered 0009: 0008 is the bot engine's, on another branch.)

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id      uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    url              text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    description      text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    enabled          boolean NOT NULL DEFAULT true,
    secret_encrypted bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- What an event's writer probes in its transaction: the instance's enabled endpoints.
CREATE INDEX webhook_endpoints_instance ON webhook_endpoints (instance_id) WHERE enabled;

-- The body sent to every endpoint that selected the event (the same bytes on every attempt).
CREATE TABLE webhook_events (
    event_id    uuid PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    type        text NOT NULL CHECK (type ~ '^[a-z_]+$'),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);  -- the dispatcher's trim

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL REFERENCES webhook_events (event_id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Attempts made (numbering webhook_attempts); the dead letter comes after
    -- GBMEDIA_WEBHOOK_MAX_ATTEMPTS counted from retry_base (a redelivery by hand moves it).
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    retry_base      integer NOT NULL DEFAULT 0 CHECK (retry_base >= 0),
    -- When a pending delivery is due; while an attempt runs, when its claim lapses (a node
    -- killed mid-attempt leaves the row to be claimed again then).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    node_id     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status_code integer,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);
