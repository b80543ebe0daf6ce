"""Who is calling, and in whose namespace the call works.

The call pipeline asks one :class:`Authenticator` for a :class:`Principal`, once per call; how it
decides is invisible to it:

- :class:`TrustedAuthenticator` believes the request's ``user_id`` (the original service's
  behaviour; natsgw only listens on loopback in that mode unless told otherwise);
- :class:`BearerAuthenticator` proves an :class:`Identity` from the call's
  ``authorization: Bearer ...`` metadata through a :class:`TokenVerifier` (static API tokens in
  :mod:`natsgw.auth.tokens`, JWTs in :mod:`natsgw.auth.jwts`), then applies one policy: the
  request's ``user_id`` must be empty or the caller's own unless the caller holds the act-as role,
  and an organization's namespace is open to its members only.

The call pipeline (:mod:`natsgw.pipeline.chain`) calls the authenticator once per call with the
call's metadata and keeps the principal for the handler's namespace and the audit trail.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from natsgw.errors import InvalidArgument, PermissionDenied, Unauthenticated
from natsgw.tenancy import Tenant

Metadata = Mapping[str, str | bytes]


class Scope(Enum):
    """Which namespace the caller asked for (the wire's NamespaceScope)."""

    USER = 0
    ORGANIZATION = 1


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential proves the caller is (before any request field is considered)."""

    user_id: str
    organizations: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    #: How it was proven: "trusted", "token" or "jwt".
    method: str = "trusted"
    #: When the credential stops being valid (seconds since the epoch; a JWT's exp plus leeway);
    #: None: until revoked. Long-lived calls are ended then (natsgw.auth.expiry).
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and the namespace this call is confined to."""

    #: The user the call acts for (the caller itself, or whom it acts for with the act-as role).
    user_id: str
    tenant: Tenant
    organization_id: str = ""
    #: Who proved their identity; differs from ``user_id`` only when acting for someone else.
    authenticated_as: str = ""
    roles: frozenset[str] = frozenset()
    #: True when an act-as role let the caller work in another user's or organization's namespace.
    acting_as: bool = False
    method: str = "trusted"
    #: When the credential that proved it stops being valid (``Identity.expires_at``).
    expires_at: float | None = None


class Authenticator(Protocol):
    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        """Return the caller and its namespace, or raise Unauthenticated / PermissionDenied.

        ``metadata`` is the call's request metadata (credentials); the call pipeline calls this
        once per call.
        """
        ...


class TrustedAuthenticator:
    """Trusts the ``user_id`` the request carries, as the original service's clients expect.

    The namespace is the user's own; ``organization_id`` is recorded but grants nothing, since
    nothing here can prove membership.
    """

    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        if not user_id:
            raise Unauthenticated("user_id is required: set it to the calling user's id")
        if scope is Scope.ORGANIZATION:
            raise PermissionDenied(
                "organization namespaces need proven membership: run the gateway with "
                "NATSGW_AUTH_MODE=token or jwt"
            )
        return _trusted_principal(user_id, organization_id)


@functools.lru_cache(maxsize=4096)
def _trusted_principal(user_id: str, organization_id: str) -> Principal:
    """Principals are immutable: a caller's next call reuses its one (no objects per call)."""
    return Principal(
        user_id=user_id,
        tenant=Tenant.user(user_id),
        organization_id=organization_id,
        authenticated_as=user_id,
    )


class TokenVerifier(Protocol):
    """Turns a bearer credential into an :class:`Identity`, or raises Unauthenticated."""

    async def verify(self, token: str) -> Identity: ...


def bearer_token(metadata: Metadata) -> str:
    """The credential in ``authorization: Bearer <token>``; Unauthenticated if absent/malformed."""
    raw = metadata.get("authorization")
    if raw is None:
        raise Unauthenticated(
            "missing credentials: send the metadata 'authorization: Bearer <token>'"
        )
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
    return token.strip()


class BearerAuthenticator:
    """Identity from a bearer credential; the request's ids may only narrow it, never widen it."""

    def __init__(self, verifier: TokenVerifier, *, act_as_role: str) -> None:
        self.verifier = verifier
        self.act_as_role = act_as_role

    async def identify(self, metadata: Metadata) -> Identity:
        """The identity the call's credential proves."""
        return await self.verifier.verify(bearer_token(metadata))

    async def close(self) -> None:
        close = getattr(self.verifier, "close", None)
        if close is not None:
            await close()

    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        identity = await self.identify(metadata)
        may_act_as = self.act_as_role in identity.roles
        acting = False
        effective = identity.user_id
        if user_id and user_id != identity.user_id:
            if not may_act_as:
                raise PermissionDenied(
                    f"user_id {user_id!r} is not the authenticated user {identity.user_id!r}: "
                    "leave user_id empty or set it to your own id (acting for another user "
                    f"needs the role {self.act_as_role!r})"
                )
            effective, acting = user_id, True
        if scope is Scope.ORGANIZATION:
            if not organization_id:
                raise InvalidArgument(
                    "organization_id", "is required when scope is SCOPE_ORGANIZATION"
                )
            if organization_id not in identity.organizations:
                if not may_act_as:
                    raise PermissionDenied(
                        f"{identity.user_id!r} is not a member of organization "
                        f"{organization_id!r}; only its members may use its namespace"
                    )
                acting = True
            tenant = Tenant.organization(organization_id)
        else:
            tenant = Tenant.user(effective)
        return Principal(
            user_id=effective,
            tenant=tenant,
            organization_id=organization_id,
            authenticated_as=identity.user_id,
            roles=identity.roles,
            acting_as=acting,
            method=identity.method,
            expires_at=identity.expires_at,
        )
