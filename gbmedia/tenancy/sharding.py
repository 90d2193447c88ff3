"""Deterministic placement of a customer's data.

A customer's instances get ``shard_id`` and its messages ``shard_key`` from a hash of
the customer id, so every node computes the same answer without a lookup table, and
all of one customer's rows land together (one partition, one future database shard).
"""

from __future__ import annotations

import hashlib
import uuid


def _hash31(customer_id: uuid.UUID) -> int:
    return int.from_bytes(hashlib.sha256(customer_id.bytes).digest()[:4], "big") & 0x7FFF_FFFF


def shard_id_for(customer_id: uuid.UUID, shard_count: int) -> int:
    return _hash31(customer_id) % shard_count


def shard_key_for(customer_id: uuid.UUID) -> int:
    """Partition key of the customer's messages (a stable non-negative int)."""
    return _hash31(customer_id)
