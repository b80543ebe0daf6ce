"""What happens around every RPC, in one place: credentials, quotas, metrics and the audit trail.

The gateway's handler wrapper (``NATSGateway._guarded``) asks a :class:`CallObserver` to
:meth:`~CallObserver.begin` each call and hands the handler the returned call's ``stream``: a thin
proxy of grpclib's stream that sees the first decoded request before the handler does (credential
check, quotas — which may refuse the call) and the first response before the client does (quota
follow-up). :meth:`ObservedCall.finish` then records metrics and, for state-changing or refused
calls, one audit event. Handlers are untouched.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Protocol

import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw.auth.expiry import CredentialWatch, end_call
from natsgw.auth.identity import (
    Authenticator,
    BearerAuthenticator,
    CallRecord,
    Principal,
    Scope,
    current_call,
    current_record,
)
from natsgw.errors import UndecodableRequest
from natsgw.ops.audit import AuditLog
from natsgw.ops.metrics import Metrics
from natsgw.pipeline.quotas import QuotaEnforcer, Ticket, scoped, tenant_label, words
from natsgw.tenancy import Namespace

log = structlog.get_logger("natsgw.pipeline.calls")

#: RPCs anyone may call whatever the auth mode (no tenant data).
PUBLIC_RPCS = frozenset({"HealthCheck"})

#: A call whose RPC name holds one of these words changes state, and is always audited.
_WRITE_WORDS = frozenset(
    {
        "Publish", "Create", "Delete", "Update", "Purge", "Put", "Ack", "Acks", "Nak",
        "Term", "Progress", "Request", "Unsubscribe", "Set", "Remove",
    }
)  # fmt: skip
#: Statuses that mean the gateway refused the call (always audited).
REFUSED = frozenset(
    {
        Status.UNAUTHENTICATED,
        Status.PERMISSION_DENIED,
        Status.RESOURCE_EXHAUSTED,
        Status.INVALID_ARGUMENT,
    }
)
#: Request fields that name what the tenant acts on, in the tenant's own terms.
_RESOURCE_FIELDS = (
    "stream_name", "consumer_name", "bucket", "key", "object_name", "subject", "queue_group",
)  # fmt: skip
_MAX_FIELD = 256


def is_state_changing(rpc: str) -> bool:
    return any(w in _WRITE_WORDS for w in words(rpc))


def resource_of(request: Any) -> dict[str, Any]:
    """The names a request acts on, as the tenant sent them (never NATS names)."""
    target = scoped(request)
    found: dict[str, Any] = {}
    for name in _RESOURCE_FIELDS:
        value = getattr(target, name, None)
        if isinstance(value, str) and value:
            found[name] = value[:_MAX_FIELD]
    config = getattr(target, "config", None)
    for name in ("name", "durable_name"):
        value = getattr(config, name, None)
        if isinstance(value, str) and value:
            found[f"config.{name}"] = value[:_MAX_FIELD]
    messages = getattr(request, "messages", None)
    if isinstance(messages, list):
        found["messages"] = len(messages)
    return found


def _metadata_text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ObservedCall(Protocol):
    stream: Any

    def finish(self, error: GRPCError | None, cancelled: bool = False) -> None: ...


class CallObserver(Protocol):
    def begin(self, path: str, stream: Any) -> ObservedCall: ...


class _PlainCall:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def finish(self, error: GRPCError | None, cancelled: bool = False) -> None:
        return None


class NoObserver:
    """Observes nothing (for handlers built without a server, e.g. in unit tests)."""

    def begin(self, path: str, stream: Any) -> ObservedCall:
        return _PlainCall(stream)


class _ObservedStream:
    """grpclib's server stream, with the first request and first response seen on the way."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call
        self._got_request = False
        self._sent_response = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def recv_message(self) -> Any:
        message = await self._stream.recv_message()
        if not self._got_request and message is not None:
            self._got_request = True
            await self._call.admit(message)
        return message

    async def send_message(self, message: Any) -> None:
        if not self._sent_response:
            self._sent_response = True
            await self._call.responding()
        await self._stream.send_message(message)

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        while (message := await self.recv_message()) is not None:
            yield message


class _Call:
    def __init__(self, observer: Observer, path: str, stream: Any) -> None:
        self.observer = observer
        self.path = path
        self.rpc = path.rsplit("/", 1)[-1]
        self.started = time.perf_counter()
        info = current_call.get()
        self.peer = info.peer if info is not None else ""
        given = _metadata_text(info.metadata.get("x-request-id")) if info is not None else ""
        self.request_id = given if _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()
        self.record = CallRecord(self.request_id)
        self._record_token = current_record.set(self.record)
        self.request: Any = None
        self.ticket: Ticket | None = None
        self.raw_stream = stream
        cardinality = getattr(stream, "_cardinality", None)
        self.long_lived = cardinality is not None and (
            cardinality.server_streaming or cardinality.client_streaming
        )
        self.watch: CredentialWatch | None = None
        self.stream = _ObservedStream(stream, self)
        observer.metrics.started(self.rpc)

    async def admit(self, request: Any) -> None:
        """First request decoded: check credentials and quotas before the handler runs."""
        self.request = request
        observer = self.observer
        auth = observer.authenticator
        if isinstance(auth, BearerAuthenticator) and self.rpc not in PUBLIC_RPCS:
            await auth.identify()
            if self.long_lived:  # re-verified until it ends (natsgw.auth.expiry)
                raw = self.raw_stream
                self.watch = await auth.watch(
                    lambda reason: end_call(raw, reason), observer.credential_recheck
                )
        quotas = observer.quotas
        if quotas is None or not quotas.enabled:
            return
        target = scoped(request)
        if not hasattr(target, "user_id"):
            return
        principal = await auth.authenticate(
            target.user_id,
            getattr(target, "organization_id", ""),
            Scope.ORGANIZATION if int(getattr(target, "scope", 0) or 0) == 1 else Scope.USER,
        )
        ns = Namespace(principal.tenant, observer.root)
        self.ticket = await quotas.admit(self.rpc, request, ns)

    async def responding(self) -> None:
        if self.ticket is not None:
            await self.ticket.created()

    def finish(self, error: GRPCError | None, cancelled: bool = False) -> None:
        try:
            if self.watch is not None:
                self.watch.stop()
                if self.watch.ended is not None:  # cancelled by the watch: say why
                    error, cancelled = self.watch.ended, False
            if self.ticket is not None:
                self.ticket.release()
            status = Status.CANCELLED if cancelled else (error.status if error else Status.OK)
            elapsed = time.perf_counter() - self.started
            failed = status not in (Status.OK, Status.CANCELLED)
            self.observer.metrics.ended(self.rpc, status.name, elapsed, failed)
            # Undecodable bytes are logged (rate-limited) by the codec, not audited per call.
            audited = not isinstance(error, UndecodableRequest)
            if audited and (status in REFUSED or is_state_changing(self.rpc)):
                self._audit(status, error, elapsed)
        finally:
            current_record.reset(self._record_token)

    def _audit(self, status: Status, error: GRPCError | None, elapsed: float) -> None:
        principal: Principal | None = self.record.principal
        if status is Status.OK:
            outcome = "ok"
        elif status in REFUSED:
            outcome = "refused"
        else:
            outcome = "failed"
        event: dict[str, Any] = {
            "rpc": self.rpc,
            "outcome": outcome,
            "status": status.name,
            "latency_ms": round(elapsed * 1000, 3),
            "request_id": self.request_id,
            "peer": self.peer,
            "who": principal.authenticated_as if principal else "",
            "auth": principal.method if principal else "",
            "tenant": tenant_label(principal.tenant) if principal else "",
            "resource": resource_of(self.request) if self.request is not None else {},
        }
        if principal is not None and principal.acting_as:
            event["acting_as"] = True
            event["on_behalf_of"] = principal.user_id
        if error is not None and error.message:
            event["reason"] = error.message[: _MAX_FIELD * 2]
        self.observer.audit.record(**event)


class Observer:
    """The real :class:`CallObserver` of a running gateway."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        metrics: Metrics,
        audit: AuditLog,
        quotas: QuotaEnforcer | None,
        root: str,
        credential_recheck: float = 5.0,
    ) -> None:
        self.authenticator = authenticator
        #: Streaming calls re-verify their credential this often (NATSGW_AUTH_RECHECK_INTERVAL).
        self.credential_recheck = credential_recheck
        self.metrics = metrics
        self.audit = audit
        self.quotas = quotas
        self.root = root

    def begin(self, path: str, stream: Any) -> ObservedCall:
        return _Call(self, path, stream)
