"""Who is calling: the operator, or an instance holding one of its API keys.

Failures are told apart by code (``token_expired``, ``token_signature_invalid``,
``unknown_api_key``...) so an integrator can see what is wrong with a token without
reading server logs; none of them reveals another tenant's data.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from gbmedia.errors import ApiError, forbidden, unauthorized
from gbmedia.http.keys import REQUEST_ID
from gbmedia.http.middleware import Authenticate
from gbmedia.tenancy.customers import Customers
from gbmedia.tenancy.instances import Instances
from gbmedia.tenancy.models import Actor, Instance, Principal
from gbmedia.tenancy.revocation import Credential, Revoked
from gbmedia.tenancy.run_tokens import RunTokens, is_run_token
from gbmedia.tenancy.tokens import AccessToken, unverified_api_key, verify_token

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")


def principal_of(request: web.Request) -> Principal:
    """Who called an ``/api/`` route (the API middleware authenticated it before any handler)."""
    return request[PRINCIPAL]


@dataclass(frozen=True)
class VerifiedToken:
    token: AccessToken
    instance: Instance


class Authenticator:
    def __init__(self, instances: Instances, customers: Customers, operator_token: str) -> None:
        self.instances = instances
        self.customers = customers
        self._operator_token = operator_token.encode()
        self.run_tokens = RunTokens(instances.secrets)

    def is_operator_token(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._operator_token)

    async def verify_access_token(self, token: str) -> VerifiedToken:
        """Check signature, expiry, key and tenant status of a participant token."""
        api_key = unverified_api_key(token)
        found = await self.instances.signing_key(api_key)
        if found is None:
            raise unauthorized("unknown_api_key", "the token names an API key that does not exist")
        signing, revoked = found
        if revoked:
            raise unauthorized("api_key_revoked", "the token's API key has been revoked")
        access = verify_token(token, signing.secret)
        instance = signing.instance
        if instance.status != "active":
            raise forbidden("instance_suspended", f"the instance is {instance.status}")
        customer = await self.customers.get(instance.customer_id)
        if customer.status != "active":
            raise forbidden("customer_suspended", f"the customer account is {customer.status}")
        return VerifiedToken(access, instance)

    async def revoked(self, credential: Credential) -> Revoked | None:
        """Whether an open session's credential still holds (None), or what revoked it
        (:class:`~gbmedia.tenancy.revocation.Revocations` asks this of every held credential)."""
        found = await self.instances.signing_key(credential.api_key)
        if found is None or found[1]:
            return Revoked("api_key_revoked", api_key=credential.api_key)
        instance = found[0].instance
        if instance.status != "active":
            return Revoked("instance_suspended", instance_id=instance.id)
        customer = await self.customers.get(instance.customer_id)
        if customer.status != "active":
            return Revoked("customer_suspended", customer_id=customer.id)
        return None

    async def authenticate(self, authorization: str | None, request_id: str | None = None) -> Principal:
        credential = bearer_credential(authorization)
        if self.is_operator_token(credential):
            return Principal(kind="operator", actor=Actor("operator", "operator", request_id))
        if is_run_token(credential):
            return await self.run_principal(credential, request_id)
        verified = await self.verify_access_token(credential)
        return Principal(
            kind="instance",
            actor=Actor(verified.token.api_key, "api_key", request_id),
            customer_id=verified.instance.customer_id,
            instance_id=verified.instance.id,
            identity=verified.token.identity,
            grants=verified.token.grants,
        )

    async def run_principal(self, credential: str, request_id: str | None) -> Principal:
        """A dialog run's token: its instance (which must be active), its conversation and user; no grants."""
        scope = self.run_tokens.verify(credential)
        try:
            instance = await self.instances.get(scope.instance_id)
        except ApiError:
            raise unauthorized("run_token_invalid", "the dialog run's instance no longer exists") from None
        if instance.status != "active":
            raise forbidden("instance_suspended", f"the instance is {instance.status}")
        customer = await self.customers.get(instance.customer_id)
        if customer.status != "active":
            raise forbidden("customer_suspended", f"the customer account is {customer.status}")
        return Principal(
            kind="instance",
            actor=Actor(f"run:{scope.dialog}", "system", request_id),
            customer_id=instance.customer_id,
            instance_id=instance.id,
            identity=scope.user,
            run=scope,
        )


def bearer_credential(authorization: str | None, what: str = "token") -> str:
    """The credential of an ``Authorization: Bearer`` header, or 401 saying what is wrong with the header."""
    if not authorization:
        raise unauthorized("auth_required", f"send Authorization: Bearer <{what}>")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise unauthorized("auth_scheme_unsupported", f"use Authorization: Bearer <{what}>")
    return credential


def rate_key(principal: Principal) -> str:
    """Whose REST budget a request spends: the operator's, or one identity's under one API key.

    Per identity, not per key: a guest's token, or a crowd of players sharing a viewer
    token, spends its own budget and never the one the tenant's backend works with."""
    if principal.identity is None:
        return principal.actor.name
    return f"{principal.actor.name}:{principal.identity}"


def request_authenticator(auth: Authenticator) -> Authenticate:
    """The API middleware's ``Authenticate``: the request's principal, kept on it; rate-limited per identity."""

    async def authenticate(request: web.Request) -> str:
        principal = await auth.authenticate(request.headers.get("Authorization"), request[REQUEST_ID])
        request[PRINCIPAL] = principal
        return rate_key(principal)

    return authenticate
