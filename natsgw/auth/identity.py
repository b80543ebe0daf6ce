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
call's metadata and keeps the principal for the handler's namespace and the audit trail. With a
:class:`BearerAuthenticator` it proves the credential (:meth:`~BearerAuthenticator.identify`)
before it reads any of the request, and applies the policy to the request's ids afterwards
(:meth:`~BearerAuthenticator.admit`); other authenticators need the request, which in trusted
mode is read only so far as :meth:`TrustedAuthenticator.precheck` finds its user_id.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from natsgw.errors import InvalidArgument, PermissionDenied, Unauthenticated, excerpt
from natsgw.tenancy import Tenant

Metadata = Mapping[str, str | bytes]
#: What the first bytes of a request showed of its ids (natsgw.wire.codec ``IdsSeen``):
#: field name -> (length in bytes, value, or None when it runs past those bytes).
IdsSeen = Mapping[str, tuple[int, bytes | None]]


def check_id_lengths(user_id: str, organization_id: str, limit: int) -> None:
    """Refuse ids longer than ``limit`` UTF-8 bytes (NATSGW_MAX_ID_LENGTH) before anything
    (authentication, naming, audit, a log line) handles them."""
    for field, value in (("user_id", user_id), ("organization_id", organization_id)):
        if len(value) > limit or (len(value) * 4 > limit and len(value.encode()) > limit):
            raise InvalidArgument(field, _too_long(len(value.encode()), limit))


def _too_long(size: int, limit: int) -> str:
    return f"is {size} bytes long; the limit is {limit} bytes (NATSGW_MAX_ID_LENGTH)"


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

    @staticmethod
    def precheck(seen: IdsSeen, head: int, limit: int) -> None:
        """Refuse a request from its first ``head`` bytes (NATSGW_TRUSTED_PREAUTH_BYTES), before
        the rest is read: its user_id must lie within them, and no id may be over ``limit``.

        Every protobuf encoder writes fields in number order, and user_id is field 1 (of a
        streamed put's header, field 1): only a hand-made encoding puts it later.
        """
        for field in ("user_id", "organization_id"):
            size = seen.get(field, (0, b""))[0]
            if size > limit:
                raise InvalidArgument(field, _too_long(size, limit))
        if seen.get("user_id", (0, None))[1] is None:
            raise Unauthenticated(
                f"user_id is required and must come first: the gateway reads at most {head} "
                "bytes of a request before it knows who sends it (NATSGW_TRUSTED_PREAUTH_BYTES)"
            )

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
        """The identity the call's credential proves (the pipeline asks before it reads any of
        the request: an unauthenticated caller gets no byte of its body buffered)."""
        return await self.verifier.verify(bearer_token(metadata))

    async def close(self) -> None:
        close = getattr(self.verifier, "close", None)
        if close is not None:
            await close()

    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        return self.admit(await self.identify(metadata), user_id, organization_id, scope)

    def admit(
        self, identity: Identity, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        """The principal a proven ``identity`` gets for a request's ids (the policy above)."""
        may_act_as = self.act_as_role in identity.roles
        acting = False
        effective = identity.user_id
        if user_id and user_id != identity.user_id:
            if not may_act_as:
                raise PermissionDenied(
                    f"user_id {excerpt(user_id)} is not the authenticated user "
                    f"{excerpt(identity.user_id)}: leave user_id empty or set it to your own id "
                    f"(acting for another user needs the role {self.act_as_role!r})"
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
                        f"{excerpt(identity.user_id)} is not a member of organization "
                        f"{excerpt(organization_id)}; only its members may use its namespace"
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
