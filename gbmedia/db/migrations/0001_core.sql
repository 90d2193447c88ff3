-- Core tenancy, rooms, conversations, messages, usage and audit.
-- docs/schema.md says where every table lives and why.

CREATE TABLE plans (
    id                          text PRIMARY KEY,
    name                        text NOT NULL,
    max_instances               integer NOT NULL CHECK (max_instances >= 0),
    max_concurrent_rooms        integer NOT NULL CHECK (max_concurrent_rooms >= 0),
    max_participants_per_room   integer NOT NULL CHECK (max_participants_per_room >= 0),
    recording_minutes_per_month integer NOT NULL CHECK (recording_minutes_per_month >= 0),
    storage_bytes               bigint  NOT NULL CHECK (storage_bytes >= 0),
    features                    jsonb   NOT NULL DEFAULT '{}',
    price_cents_per_month       integer NOT NULL DEFAULT 0,
    created_at                  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO plans (id, name, max_instances, max_concurrent_rooms, max_participants_per_room,
                   recording_minutes_per_month, storage_bytes, features, price_cents_per_month)
VALUES
    ('free',       'Free',        1,    2,   10,     0,   1073741824,
        '{"recording": false, "live": false, "bots": true}', 0),
    ('starter',    'Starter',     3,   10,   50,   600,  10737418240,
        '{"recording": true, "live": true, "bots": true}', 2900),
    ('pro',        'Pro',        10,  100,  300,  6000, 107374182400,
        '{"recording": true, "live": true, "bots": true}', 19900),
    ('enterprise', 'Enterprise', 100, 1000, 1000, 60000, 1099511627776,
        '{"recording": true, "live": true, "bots": true}', 99900);

CREATE TABLE customers (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    subscription_tier text NOT NULL REFERENCES plans (id),
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'suspended', 'closed')),
    max_instances     integer NOT NULL CHECK (max_instances >= 0),
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The SaaS subscription of a customer (the old BOnlineSubscription).
CREATE TABLE subscriptions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id       uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    plan_id           text NOT NULL REFERENCES plans (id),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'active', 'cancelled')),
    contact_name      text,
    contact_email     text,
    contact_phone     text,
    payment_reference text,
    amount_cents      integer NOT NULL DEFAULT 0,
    currency          text NOT NULL DEFAULT 'USD',
    activated_at      timestamptz,
    cancelled_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id, created_at DESC);

-- A bot/conference instance (the old GuaribasInstance): typed columns for what
-- gbmedia uses, everything else in config.
CREATE TABLE instances (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'suspended', 'deleted')),
    shard_id    integer NOT NULL CHECK (shard_id >= 0),
    region      text NOT NULL,
    locale      text NOT NULL DEFAULT 'en',
    features    jsonb NOT NULL DEFAULT '{}',
    config      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, name)
);
CREATE INDEX instances_customer ON instances (customer_id);

-- Credentials of an instance. The secret signs access tokens (HMAC), so it must be
-- recoverable: stored encrypted with the node's secret key, never in clear.
CREATE TABLE api_keys (
    key               text PRIMARY KEY,
    instance_id       uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    secret_ciphertext bytea NOT NULL,
    description       text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);
CREATE INDEX api_keys_instance ON api_keys (instance_id);

CREATE TABLE rooms (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL DEFAULT 'meeting' CHECK (kind IN ('meeting', 'live')),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    config      jsonb NOT NULL DEFAULT '{}',
    node_id     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    closed_at   timestamptz
);
-- One open room per name and instance; closed rooms keep their history.
CREATE UNIQUE INDEX rooms_open_name ON rooms (instance_id, name) WHERE status = 'open';
CREATE INDEX rooms_customer_status ON rooms (customer_id, status);

-- Conversations: room chat, direct, group and bot dialogs (the old
-- GuaribasConversation: started_by, channel, rating, feedback).
CREATE TABLE conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('room', 'direct', 'group', 'bot')),
    title       text,
    room_id     uuid REFERENCES rooms (id) ON DELETE SET NULL,
    started_by  text,
    channel     text,
    rating      smallint,
    feedback    text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_instance ON conversations (instance_id, created_at DESC);

-- Messages, hash-partitioned by shard_key (derived from customer_id), so one
-- customer's messages stay in one partition and partitions can move to other
-- servers later. The old GuaribasConversationMessage rows are messages too.
CREATE TABLE messages (
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    shard_key       integer NOT NULL CHECK (shard_key >= 0),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id     uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       text NOT NULL,
    kind            text NOT NULL DEFAULT 'text',
    content         text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_key, id)
) PARTITION BY HASH (shard_key);
CREATE TABLE messages_p0 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 0);
CREATE TABLE messages_p1 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 1);
CREATE TABLE messages_p2 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 2);
CREATE TABLE messages_p3 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 3);
CREATE TABLE messages_p4 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 4);
CREATE TABLE messages_p5 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 5);
CREATE TABLE messages_p6 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 6);
CREATE TABLE messages_p7 PARTITION OF messages FOR VALUES WITH (MODULUS 8, REMAINDER 7);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);

CREATE TABLE usage_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id uuid REFERENCES instances (id) ON DELETE SET NULL,
    kind        text NOT NULL CHECK (kind IN ('participant_minutes', 'recording_minutes',
                                              'messages', 'bytes_out', 'storage_bytes')),
    quantity    numeric NOT NULL CHECK (quantity >= 0),
    room_id     uuid,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_customer_kind ON usage_events (customer_id, kind, occurred_at);

-- Who changed what, when. Rows are only ever inserted.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('operator', 'api_key', 'cli', 'system')),
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    customer_id uuid,
    instance_id uuid,
    details     jsonb NOT NULL DEFAULT '{}',
    request_id  text
);
CREATE INDEX audit_log_customer ON audit_log (customer_id, at DESC);
CREATE INDEX audit_log_instance ON audit_log (instance_id, at DESC);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id);
