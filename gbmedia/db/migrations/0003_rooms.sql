-- Room lifecycle (gbmedia/signaling/rooms.py): typed room settings, and the
-- activity clock the idle sweeper reads. docs/schema.md describes the columns.

ALTER TABLE rooms
    ADD COLUMN max_participants integer CHECK (max_participants >= 1),
    ADD COLUMN empty_timeout    integer NOT NULL DEFAULT 300
                                CHECK (empty_timeout BETWEEN 1 AND 86400),
    ADD COLUMN metadata         jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN last_active_at   timestamptz NOT NULL DEFAULT now();

-- Rows written before this migration take their tier's participant quota.
UPDATE rooms r
   SET max_participants = greatest(p.max_participants_per_room, 1),
       last_active_at = coalesce(r.closed_at, r.created_at)
  FROM customers c JOIN plans p ON p.id = c.subscription_tier
 WHERE c.id = r.customer_id;
UPDATE rooms SET closed_at = coalesce(closed_at, created_at) WHERE status = 'closed';
UPDATE rooms SET closed_at = NULL WHERE status = 'open';

ALTER TABLE rooms
    ALTER COLUMN max_participants SET NOT NULL,
    ADD CONSTRAINT rooms_name_length CHECK (length(name) BETWEEN 1 AND 200),
    ADD CONSTRAINT rooms_closed_at CHECK ((status = 'closed') = (closed_at IS NOT NULL));

-- The sweeper: open rooms of one node, by last activity.
CREATE INDEX rooms_node_open ON rooms (node_id, last_active_at) WHERE status = 'open';
-- Listing an instance's rooms, newest first.
CREATE INDEX rooms_instance_created ON rooms (instance_id, created_at DESC);
