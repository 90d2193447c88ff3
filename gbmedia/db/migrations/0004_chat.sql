-- Chat (gbmedia/messaging): members, ordered and idempotent messages, read and
-- delivery cursors, full-text search, and the transactional outbox that feeds the
-- event stream. docs/schema.md describes every column.

-- A conversation numbers its messages 1, 2, 3...: last_seq is taken under the
-- row lock of the send's transaction, so the order is the commit order.
ALTER TABLE conversations
    ADD COLUMN shard_key  integer NOT NULL DEFAULT 0 CHECK (shard_key >= 0),
    ADD COLUMN last_seq   bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    ADD COLUMN created_by text;
-- A room has one room conversation.
CREATE UNIQUE INDEX conversations_room ON conversations (room_id) WHERE kind = 'room' AND room_id IS NOT NULL;

-- Members are identities of the conversation's instance (a token's `sub`). Receipts
-- are cursors: everything up to delivered_seq reached the member's client, up to
-- read_seq was read. Cursors only move forward.
CREATE TABLE conversation_members (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    identity        text NOT NULL CHECK (length(identity) BETWEEN 1 AND 256),
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member', 'bot')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    delivered_seq   bigint NOT NULL DEFAULT 0 CHECK (delivered_seq >= 0),
    delivered_at    timestamptz,
    read_seq        bigint NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    read_at         timestamptz,
    PRIMARY KEY (conversation_id, identity)
);
CREATE INDEX conversation_members_identity ON conversation_members (identity, conversation_id);

-- Messages: their place in the conversation, the sender's idempotency key (a
-- retried send finds the stored message instead of storing another), edits and
-- tombstones, and the search vector in the instance's text search configuration.
ALTER TABLE messages
    ADD COLUMN seq             bigint NOT NULL DEFAULT 0,
    ADD COLUMN idempotency_key text,
    ADD COLUMN edited_at       timestamptz,
    ADD COLUMN deleted_at      timestamptz,
    ADD COLUMN ts_config       regconfig NOT NULL DEFAULT 'simple',
    ADD COLUMN search          tsvector GENERATED ALWAYS AS (to_tsvector(ts_config, content)) STORED;
CREATE UNIQUE INDEX messages_conversation_seq ON messages (shard_key, conversation_id, seq);
CREATE UNIQUE INDEX messages_idempotency ON messages (shard_key, conversation_id, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_search ON messages USING gin (search);
DROP INDEX messages_conversation;
CREATE INDEX messages_conversation ON messages (conversation_id, seq);

-- The transactional outbox: written in the same transaction as the change it
-- describes; a relay publishes rows in id order to Kafka (topic, key) and marks
-- them sent. event_id is what consumers deduplicate on.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    topic      text NOT NULL CHECK (topic ~ '^[a-z0-9._-]+$'),
    key        text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
