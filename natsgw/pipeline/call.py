"""One call as a handler sees it: whose namespace, how much time is left, and "send headers now".

The pipeline (:mod:`natsgw.pipeline.chain`) builds it, authenticates the caller once and fills in
the namespace before the handler runs; handlers never authenticate and never touch grpclib.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from natsgw.auth.identity import Principal
from natsgw.errors import Internal, InvalidArgument
from natsgw.tenancy import Namespace

if TYPE_CHECKING:
    import grpclib.server

    from natsgw.auth.expiry import CredentialWatch
    from natsgw.ops.tracing import CallTrace
    from natsgw.pipeline.policy import Policy
    from natsgw.pipeline.quotas import Ticket

#: Longest timeout a client may ask for in one call.
MAX_TIMEOUT = 300.0


class Call:
    """Per-call state; one small object, no context variables."""

    __slots__ = (
        "byte_cap",
        "headers_sent",
        "namespace",
        "policy",
        "principal",
        "request",
        "request_id",
        "stream",
        "ticket",
        "trace",
        "watch",
    )

    def __init__(self, policy: Policy, stream: grpclib.server.Stream[Any, Any] | None) -> None:
        self.policy = policy
        self.stream = stream
        self.request: Any = None
        self.request_id = ""
        self.principal: Principal | None = None
        self.ticket: Ticket | None = None
        self.headers_sent = False
        #: The caller's trace context (W3C traceparent / OpenTelemetry span), when it sent one.
        self.trace: CallTrace | None = None
        #: Set by the pipeline's namespace step; None for public RPCs.
        self.namespace: Namespace | None = None
        #: A streaming call's credential watch (natsgw.auth.expiry), stopped when it finishes.
        self.watch: CredentialWatch | None = None
        #: The tenant's byte quota a bucket this call makes implicitly must be made with (set by
        #: the pipeline's quotas step; 0: none). See :meth:`capped_bytes`.
        self.byte_cap = 0

    @property
    def ns(self) -> Namespace:
        """The namespace this call is confined to (set by the pipeline's namespace step)."""
        if self.namespace is None:
            raise Internal(f"{self.policy.rpc} is public: it has no namespace")
        return self.namespace

    def capped_bytes(self, configured: int) -> int:
        """``configured`` (0 or less: unlimited) lowered to this call's byte quota, if any.

        A bucket a first KV/Object put creates is created with it, so that a first upload can
        neither exceed the quota nor, by failing, leave an uncapped bucket behind.
        """
        cap = self.byte_cap
        if cap <= 0:
            return configured
        return cap if configured <= 0 else min(configured, cap)

    def time_left(self) -> float | None:
        """Seconds until the client's deadline (None without one)."""
        stream = self.stream
        if stream is None or stream.deadline is None:
            return None
        return float(stream.deadline.time_remaining())

    def timeout(self, requested: datetime.timedelta | None, default: float, field: str) -> float:
        """The client's timeout (or our default), never beyond what the call's deadline allows."""
        seconds = default
        if requested is not None and requested != datetime.timedelta(0):
            seconds = requested.total_seconds()
            if seconds < 0:
                raise InvalidArgument(field, f"must not be negative (got {seconds:g}s)")
            if seconds > MAX_TIMEOUT:
                raise InvalidArgument(field, f"must be at most {MAX_TIMEOUT:g}s (got {seconds:g}s)")
        left = self.time_left()
        if left is not None:
            seconds = min(seconds, max(left, 0.001))
        return seconds

    async def ready(self) -> None:
        """Send response headers now: tells a streaming client its subscription is in place."""
        if self.headers_sent or self.stream is None:
            return
        self.headers_sent = True
        await self.stream.send_initial_metadata(metadata={"x-request-id": self.request_id})


def bare_call(policy: Policy, ns: Namespace | None = None) -> Call:
    """A call outside any server (scripts and unit tests drive a service object directly)."""
    call = Call(policy, None)
    call.namespace = ns
    return call
