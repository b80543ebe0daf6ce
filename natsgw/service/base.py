"""What every handler module shares: its collaborators, the caller's namespace, time budgets."""

from __future__ import annotations

import datetime
import functools
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpclib.server

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.auth.identity import Authenticator, Principal, Scope
from natsgw.config import Settings
from natsgw.errors import InvalidArgument
from natsgw.ops.monitoring import NatsMonitor
from natsgw.pipeline.calls import CallObserver, NoObserver
from natsgw.service.fanout import FanOut
from natsgw.service.subscriptions import SubscriptionRegistry
from natsgw.tenancy import Namespace, Tenant

#: Longest timeout a client may ask for in one call.
MAX_TIMEOUT = 300.0

#: The grpclib stream of the current call (set by the gateway's handler wrapper).
current_stream: ContextVar[grpclib.server.Stream[Any, Any] | None] = ContextVar(
    "natsgw_current_stream", default=None
)


class ScopedRequest(Protocol):
    """Every request message that acts inside a namespace carries these three fields."""

    user_id: str
    organization_id: str
    scope: pb.NamespaceScope


@dataclass(frozen=True, slots=True)
class Dependencies:
    settings: Settings
    adapter: NatsAdapter
    authenticator: Authenticator
    subscriptions: SubscriptionRegistry
    #: Shared NATS subscriptions behind Subscribe / QueueSubscribe (natsgw.service.fanout).
    fanout: FanOut
    monitor: NatsMonitor
    #: Credentials, quotas, metrics and audit around every call (natsgw.pipeline.calls).
    calls: CallObserver = field(default_factory=NoObserver)


@functools.lru_cache(maxsize=4096)
def namespace_for(tenant: Tenant, root: str) -> Namespace:
    return Namespace(tenant, root)


class Handlers:
    """Base of the handler mixins; holds collaborators, knows nothing of NATS names."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.adapter = deps.adapter

    async def principal(self, request: ScopedRequest) -> Principal:
        scope = (
            Scope.ORGANIZATION
            if request.scope == pb.NamespaceScope.SCOPE_ORGANIZATION
            else Scope.USER
        )
        return await self.deps.authenticator.authenticate(
            request.user_id, request.organization_id, scope
        )

    async def namespace(self, request: ScopedRequest) -> Namespace:
        """Authenticate the caller and return the namespace this request is confined to."""
        principal = await self.principal(request)
        return namespace_for(principal.tenant, self.settings.namespace_root)

    def timeout(self, requested: datetime.timedelta | None, default: float, field: str) -> float:
        """The client's timeout (or our default), never beyond what the call's deadline allows."""
        seconds = default
        if requested is not None and requested != datetime.timedelta(0):
            seconds = requested.total_seconds()
            if seconds < 0:
                raise InvalidArgument(field, f"must not be negative (got {seconds:g}s)")
            if seconds > MAX_TIMEOUT:
                raise InvalidArgument(field, f"must be at most {MAX_TIMEOUT:g}s (got {seconds:g}s)")
        stream = current_stream.get()
        if stream is not None and stream.deadline is not None:
            seconds = min(seconds, max(stream.deadline.time_remaining(), 0.001))
        return seconds

    @staticmethod
    async def announce_ready() -> None:
        """Send response headers now: tells a streaming client its subscription is in place."""
        stream = current_stream.get()
        if stream is not None and not stream._send_initial_metadata_done:
            await stream.send_initial_metadata()
