-- Recordings (gbmedia/recording): one row per recording of a room, one per file it
-- produced. docs/schema.md describes the columns.

CREATE TABLE recordings (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    instance_id      uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    room_id          uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    kinds            text[] NOT NULL CHECK (kinds <@ ARRAY['tracks', 'composite']::text[]
                                            AND cardinality(kinds) > 0),
    status           text NOT NULL DEFAULT 'waiting'
                     CHECK (status IN ('waiting', 'recording', 'stopping', 'completed', 'failed')),
    error            text,
    storage          text NOT NULL CHECK (storage IN ('local', 's3')),
    node_id          text NOT NULL,
    started_by       text NOT NULL,
    stop_reason      text,
    duration_seconds double precision NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    size_bytes       bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    stopped_at       timestamptz,
    CHECK ((status = 'failed') = (error IS NOT NULL))
);
CREATE INDEX recordings_room ON recordings (room_id, created_at DESC);
CREATE INDEX recordings_instance ON recordings (instance_id, created_at DESC);
-- At most one running recording per room; a node finds its own at start-up.
CREATE UNIQUE INDEX recordings_one_active ON recordings (room_id)
    WHERE status IN ('waiting', 'recording', 'stopping');
CREATE INDEX recordings_node_active ON recordings (node_id)
    WHERE status IN ('waiting', 'recording', 'stopping');
-- Recording minutes used this month, per customer (the quota check).
CREATE INDEX usage_events_recording ON usage_events (customer_id, occurred_at)
    WHERE kind = 'recording_minutes';

CREATE TABLE recording_files (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recording_id         uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    name                 text NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,200}$'),
    kind                 text NOT NULL CHECK (kind IN ('audio', 'video', 'composite')),
    track_id             text,
    participant_id       text,
    participant_identity text,
    source               text,
    codec                text NOT NULL,
    content_type         text NOT NULL,
    storage_key          text NOT NULL,
    status               text NOT NULL DEFAULT 'recording'
                         CHECK (status IN ('recording', 'completed', 'failed')),
    error                text,
    size_bytes           bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    duration_seconds     double precision NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
    start_offset_seconds double precision,
    aligned_by           text CHECK (aligned_by IN ('sender_report', 'arrival')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz,
    UNIQUE (recording_id, name)
);
