-- A message belongs to its conversation's instance and customer: one composite
-- foreign key says so, instead of three separate ones (conversation, instance,
-- customer). Deleting a customer or an instance still deletes its messages (through
-- its conversations), and a message can no longer name another tenant than its
-- conversation's. Why: every foreign key is a check per inserted row, and the checks
-- against `customers` and `instances` share-lock one row that every chat writer of
-- the tenant touches at once (PostgreSQL then records the lockers in a multixact);
-- the conversation's row is the one the send already holds locked.
ALTER TABLE conversations
    ADD CONSTRAINT conversations_tenant_key UNIQUE (id, instance_id, customer_id);

ALTER TABLE messages
    DROP CONSTRAINT messages_conversation_id_fkey,
    DROP CONSTRAINT messages_instance_id_fkey,
    DROP CONSTRAINT messages_customer_id_fkey,
    ADD CONSTRAINT messages_conversation_tenant_fkey
        FOREIGN KEY (conversation_id, instance_id, customer_id)
        REFERENCES conversations (id, instance_id, customer_id) ON DELETE CASCADE;
