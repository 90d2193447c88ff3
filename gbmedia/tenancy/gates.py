"""Feature gates: whether an instance may use ``live``, ``recording`` or ``bots`` now.

Two switches count, and both must allow a feature: the customer's subscription tier
(the plan's ``features``) says what the customer pays for, and the instance's own
``features`` lets an instance administrator or the operator turn a paid feature off
for one instance. An instance can only narrow its plan, never widen it: a free-tier
instance with ``{"live": true}`` still has no live rooms. The two refusals have
different codes so a caller knows whom to ask: ``feature_not_in_plan`` (change the
tier) and ``feature_disabled`` (PATCH the instance's features). Both are 403 with
``details.feature``. A feature the instance does not mention follows the plan.

The gate reads the plan and the instance each time it is asked (one indexed row
each), so a tier change or an instance PATCH takes effect on the next request, on
every node, with no cache to invalidate.
"""

from __future__ import annotations

import uuid

import asyncpg

from gbmedia.errors import ApiError, forbidden
from gbmedia.tenancy.models import FEATURES


def feature_refusal(
    feature: str, plan_features: dict[str, bool], plan_id: str, plan_name: str, instance_features: dict[str, bool]
) -> ApiError | None:
    """The 403 that refuses ``feature``, or None when the plan and the instance both allow it."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}")
    if not plan_features.get(feature, False):
        return forbidden(
            "feature_not_in_plan",
            f"the {plan_name} tier does not include {feature}",
            feature=feature,
            tier=plan_id,
        )
    if instance_features.get(feature) is False:
        return forbidden("feature_disabled", f"{feature} is turned off for this instance", feature=feature)
    return None


async def require_feature(db: asyncpg.Pool | asyncpg.Connection, instance_id: uuid.UUID, feature: str) -> None:
    """Raise the 403 when the instance may not use ``feature`` (module docstring: precedence).

    It takes the instance's id, not a caller's copy of it: a copy held since a socket
    authenticated must not outlive a PATCH of the features. Pass the transaction's
    connection when inside one (a second pool connection can deadlock a small pool).
    """
    row = await db.fetchrow(
        """SELECT i.features AS instance_features, p.id, p.name, p.features AS plan_features
             FROM instances i JOIN customers c ON c.id = i.customer_id
             JOIN plans p ON p.id = c.subscription_tier
            WHERE i.id = $1""",
        instance_id,
    )
    if row is None:
        raise ApiError(404, "instance_not_found", "no such instance")
    refusal = feature_refusal(
        feature, dict(row["plan_features"]), row["id"], row["name"], dict(row["instance_features"])
    )
    if refusal is not None:
        raise refusal
