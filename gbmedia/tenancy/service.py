"""The tenancy domain as one object the node wires up and the HTTP layer uses."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gbmedia.config import Settings
from gbmedia.http.guard import DestinationGuard
from gbmedia.tenancy.auth import Authenticator
from gbmedia.tenancy.billing import Billing
from gbmedia.tenancy.customers import Customers
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.revocation import Revocations
from gbmedia.tenancy.secrets import SecretBox
from gbmedia.tenancy.webhooks import Webhooks, parse_allow_networks


@dataclass
class Tenancy:
    customers: Customers
    instances: Instances
    auth: Authenticator
    revocations: Revocations  # open sessions whose credential is revoked or suspended end
    webhooks: Webhooks  # the instances' webhook endpoints and their deliveries
    billing: Billing  # prices, invoices, subscription standing

    @classmethod
    def create(cls, pool: asyncpg.Pool, settings: Settings, secrets: SecretBox, operator_token: str) -> Tenancy:
        customers = Customers(pool)
        instances = Instances(
            pool, customers, secrets, shard_count=settings.shard_count, default_region=settings.region
        )
        revocations = Revocations()
        customers.announce_revoked = instances.announce_revoked = revocations.announce
        billing = Billing(pool)
        billing.announce_revoked = revocations.announce
        webhooks = Webhooks(pool, secrets, webhook_guard(settings))
        auth = Authenticator(instances, customers, operator_token)
        return cls(customers, instances, auth, revocations, webhooks, billing)


def webhook_guard(settings: Settings) -> DestinationGuard:
    """Where webhooks may go: public addresses, plus GBMEDIA_WEBHOOK_ALLOW_NETWORKS."""
    return DestinationGuard(
        parse_allow_networks(settings.webhook_allow_networks), hint="GBMEDIA_WEBHOOK_ALLOW_NETWORKS"
    )
