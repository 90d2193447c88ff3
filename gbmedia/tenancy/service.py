"""The tenancy domain as one object the node wires up and the HTTP layer uses."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gbmedia.config import Settings
from gbmedia.tenancy.auth import Authenticator
from gbmedia.tenancy.customers import Customers
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.revocation import Revocations
from gbmedia.tenancy.secrets import SecretBox


@dataclass
class Tenancy:
    customers: Customers
    instances: Instances
    auth: Authenticator
    revocations: Revocations  # open sessions whose credential is revoked or suspended end

    @classmethod
    def create(cls, pool: asyncpg.Pool, settings: Settings, secrets: SecretBox, operator_token: str) -> Tenancy:
        customers = Customers(pool)
        instances = Instances(
            pool, customers, secrets, shard_count=settings.shard_count, default_region=settings.region
        )
        revocations = Revocations()
        customers.announce_revoked = instances.announce_revoked = revocations.announce
        return cls(customers, instances, Authenticator(instances, customers, operator_token), revocations)
