"""Who is calling, and in whose namespace the call works.

Handlers ask one :class:`Authenticator` for a :class:`Principal`; how it decides (the request's
own ``user_id`` today, bearer tokens or JWTs later) is invisible to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from natsgw.errors import PermissionDenied, Unauthenticated
from natsgw.tenancy import Tenant

Metadata = Mapping[str, str | bytes]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Facts about the current gRPC call, captured by the server's RecvRequest hook."""

    method: str
    metadata: Metadata = field(default_factory=dict)
    peer: str = ""
    deadline: float | None = None  # seconds left when the request arrived


#: The call being served by the current task (set by natsgw.server's RecvRequest hook).
current_call: ContextVar[CallInfo | None] = ContextVar("natsgw_current_call", default=None)


class Scope(Enum):
    """Which namespace the caller asked for (the wire's NamespaceScope)."""

    USER = 0
    ORGANIZATION = 1


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and the namespace this call is confined to."""

    user_id: str
    tenant: Tenant
    organization_id: str = ""


class Authenticator(Protocol):
    async def authenticate(self, user_id: str, organization_id: str, scope: Scope) -> Principal:
        """Return the caller and its namespace, or raise Unauthenticated / PermissionDenied."""
        ...


class TrustedAuthenticator:
    """Trusts the ``user_id`` the request carries, as the original service's clients expect.

    The namespace is the user's own; ``organization_id`` is recorded but grants nothing, since
    nothing here can prove membership.
    """

    async def authenticate(self, user_id: str, organization_id: str, scope: Scope) -> Principal:
        if not user_id:
            raise Unauthenticated("user_id is required: set it to the calling user's id")
        if scope is Scope.ORGANIZATION:
            raise PermissionDenied(
                "organization namespaces need proven membership: run the gateway with "
                "NATSGW_AUTH_MODE=token or jwt"
            )
        return Principal(
            user_id=user_id, tenant=Tenant.user(user_id), organization_id=organization_id
        )
