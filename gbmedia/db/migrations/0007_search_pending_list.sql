-- The full-text index of messages (messages_search, GIN) queues new entries in a
-- pending list and merges it into the index once it holds gin_pending_list_limit of
-- them (4 MB by default). The insert that finds the list full does the merge itself,
-- inside its statement: with group commit that statement holds every send of its
-- batch, and the chat benchmark saw 0.3-0.6 s stalls at 2,000 messages/s. A 64 kB
-- list is merged in small steps (the same work, spread out): p99 delivery 115-135 ms
-- instead of 280-550 ms there. The setting lives on each partition's index (a
-- partitioned index takes no storage parameters); a partition added later needs it too.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = 'messages_search'::regclass LOOP
        EXECUTE format('ALTER INDEX %s SET (gin_pending_list_limit = 64)', part);
    END LOOP;
END $$;
