"""The chat migration 0006: a message's tenant is its conversation's, and deleting a
tenant deletes its messages. Database
tests use the ``pool`` fixture: a fresh database of their own with every migration
applied.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest


async def tenant(pool: asyncpg.Pool, name: str) -> tuple[uuid.UUID, uuid.UUID]:
    customer = await pool.fetchval(
        "INSERT INTO customers (name, subscription_tier, max_instances) VALUES ($1, 'free', 3) RETURNING id", name
    )
    instance = await pool.fetchval(
        "INSERT INTO instances (customer_id, name, shard_id, region) VALUES ($1, 'main', 0, 'local') RETURNING id",
        customer,
    )
    return customer, instance


async def conversation_with_message(pool: asyncpg.Pool, customer: uuid.UUID, instance: uuid.UUID) -> uuid.UUID:
    cid = await pool.fetchval(
        "INSERT INTO conversations (customer_id, instance_id, kind) VALUES ($1, $2, 'group') RETURNING id",
        customer,
        instance,
    )
    await pool.execute(
        "INSERT INTO messages (shard_key, customer_id, instance_id, conversation_id, seq, sender_id, "
        "content) VALUES (0, $1, $2, $3, 1, 'alice', 'hello')",
        customer,
        instance,
        cid,
    )
    return cid


async def count(pool: asyncpg.Pool, cid: uuid.UUID) -> int:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid)


async def test_a_message_cannot_name_another_tenant_than_its_conversation(pool: asyncpg.Pool):
    customer, instance = await tenant(pool, "acme")
    other_customer, other_instance = await tenant(pool, "globex")
    cid = await conversation_with_message(pool, customer, instance)
    for wrong_customer, wrong_instance in (
        (other_customer, other_instance),
        (customer, other_instance),
        (other_customer, instance),
    ):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await pool.execute(
                "INSERT INTO messages (shard_key, customer_id, instance_id, conversation_id, seq, sender_id, content) "
                "VALUES (0, $1, $2, $3, 2, 'mallory', 'planted')",
                wrong_customer,
                wrong_instance,
                cid,
            )
    assert await count(pool, cid) == 1


@pytest.mark.parametrize("deleted", ["customer", "instance", "conversation"])
async def test_deleting_the_owner_deletes_the_messages(pool: asyncpg.Pool, deleted: str):
    customer, instance = await tenant(pool, "acme")
    kept_customer, kept_instance = await tenant(pool, "globex")
    cid = await conversation_with_message(pool, customer, instance)
    kept = await conversation_with_message(pool, kept_customer, kept_instance)
    target = {
        "customer": ("customers", customer),
        "instance": ("instances", instance),
        "conversation": ("conversations", cid),
    }[deleted]
    await pool.execute(f"DELETE FROM {target[0]} WHERE id = $1", target[1])
    assert await count(pool, cid) == 0
    assert await count(pool, kept) == 1  # another tenant's messages stay
