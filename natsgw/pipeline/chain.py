"""The call pipeline: what every RPC goes through, in order, installed once for all of them.

:meth:`Pipeline.handler` turns a service object's method into grpclib's handler for one RPC path.
Every call then takes these steps, each a small method below (read top to bottom)::

    1. refuse while draining        UNAVAILABLE once shutdown began (before anything is counted)
    2. in-flight + metrics start    counted so shutdown can wait; natsgw_rpc_in_flight
    3. receive the request          token/JWT mode: the bearer credential is proven from the
       (authenticate first)         metadata BEFORE any of the body is read (an anonymous
                                    caller is answered UNAUTHENTICATED with nothing buffered);
                                    trusted mode: the first NATSGW_TRUSTED_PREAUTH_BYTES only,
                                    until its user_id is found there; public RPCs: at most that
                                    much in all. Then the first message (for a streamed put: its
                                    header message), which must arrive whole within
                                    NATSGW_REQUEST_READ_TIMEOUT (natsgw.wire.compression); a W3C
                                    traceparent is stamped on what it publishes (ops.tracing)
    4. identity                     ids no longer than NATSGW_MAX_ID_LENGTH, then the principal,
                                    decided ONCE from the credential (or trusted user_id) + the
                                    request's ids (skipped for public RPCs: HealthCheck); a
                                    streaming call's bearer credential is then watched while it
                                    runs (natsgw.auth.expiry) and the call ends UNAUTHENTICATED
                                    when it stops verifying
    5. namespace                    the principal's Namespace, handed to the handler in ``call.ns``
    6. quotas                       the RPC's Cost (natsgw.pipeline.policy) against the tenant's
                                    limits; may hand the handler an adjusted copy of the request
    7. handler                      the service object's method: ``(call, request)``; streams are
                                    async generators the pipeline OWNS and always ``aclose()``s
                                    (shielded), so a cancelled or reset stream still runs its
                                    cleanup; each holds one of its tenant's streaming-call slots
                                    (NATSGW_QUOTA_STREAMING_CALLS) while it runs, and what it
                                    yields as Frames is written several responses per socket
                                    write (natsgw.pipeline.streaming)
    8. deadline                     ``call.timeout()``/``call.time_left()`` bound every wait by the
                                    client's deadline
    9. error mapping                any exception -> one gRPC status (natsgw.errors), its text
                                    rewritten so it names things the tenant's way (no NATS names)
   10. finish                       credential watch stopped, quota ticket released, metrics
                                    recorded, audit event when the RPC's audit rule asks for one
                                    (never for undecodable bytes: those are logged rate-limited
                                    per peer), request bytes a refused or timed-out call had read
                                    dropped, in-flight count released

Nothing here allocates per call beyond one :class:`Call` (and the request id; a streaming call
with a bearer credential also its watch); no context variables, no proxies around grpclib's
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, cast

import grpclib.server
import structlog
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError
from hpack import NeverIndexedHeaderTuple

from natsgw._generated.isa import nats as pb
from natsgw.auth import expiry
from natsgw.auth.identity import (
    Authenticator,
    BearerAuthenticator,
    Identity,
    Scope,
    TrustedAuthenticator,
    check_id_lengths,
)
from natsgw.compat import grpclib as grpclib_compat
from natsgw.compat import grpclib_requests
from natsgw.errors import InvalidArgument, UndecodableRequest, to_grpc_error
from natsgw.ops import tracing
from natsgw.ops.audit import AuditLog
from natsgw.ops.metrics import Metrics
from natsgw.pipeline.call import Call
from natsgw.pipeline.policy import Audit, Policy
from natsgw.pipeline.quotas import QuotaEnforcer, tenant_label
from natsgw.pipeline.streaming import Frames, FrameWriter
from natsgw.tenancy import Namespace, Tenant, public_text
from natsgw.wire import compression

log = structlog.get_logger("natsgw.pipeline")

Stream = grpclib.server.Stream[Any, Any]
Unary = Callable[[Call, Any], Awaitable[Any]]
ServerStreaming = Callable[[Call, Any], AsyncGenerator[Any, None]]
ClientStreaming = Callable[[Call, Any, AsyncIterator[Any]], Awaitable[Any]]
Endpoint = Unary | ServerStreaming | ClientStreaming
GrpcHandler = Callable[[Stream], Coroutine[Any, Any, None]]

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
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NO_LEASE = contextlib.nullcontext()
#: Enum members read on every call, looked up once (a class attribute of an Enum is a
#: descriptor lookup on each access in Python 3.11).
_OK, _CANCELLED = Status.OK, Status.CANCELLED
_REFUSALS = Audit.REFUSALS
_ORGANIZATION_SCOPE = pb.NamespaceScope.SCOPE_ORGANIZATION
_USER, _ORGANIZATION = Scope.USER, Scope.ORGANIZATION


class InFlight:
    """Counts calls being served, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@functools.lru_cache(maxsize=4096)
def _namespace(tenant: Tenant, root: str) -> Namespace:
    return Namespace(tenant, root)


class Pipeline:
    """The steps around every handler; one per gateway, configured once."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        metrics: Metrics,
        audit: AuditLog,
        quotas: QuotaEnforcer | None,
        root: str,
        audit_data_plane: bool = False,
        in_flight: InFlight | None = None,
        credential_recheck: float = 5.0,
        on_undecodable: Callable[[str, str], None] | None = None,
        stream_leases: Callable[[Call], AbstractContextManager[None]] | None = None,
        preauth_bytes: int = 64 * 1024,
        max_id_length: int = 256,
        on_request_dropped: Callable[[], None] | None = None,
        on_admitted: Callable[[Stream], None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.metrics = metrics
        self.audit = audit
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        self.root = root
        self.audit_data_plane = audit_data_plane
        self.in_flight = in_flight or InFlight()
        self.draining = False
        #: Streaming calls re-verify their credential this often (NATSGW_AUTH_RECHECK_INTERVAL).
        self.credential_recheck = credential_recheck
        #: Told ``(message type, peer)`` of each undecodable request (natsgw.pipeline.rejects).
        self.on_undecodable = on_undecodable
        #: A streaming call's slot among its tenant's open streams (NATSGW_QUOTA_STREAMING_CALLS,
        #: natsgw.service.subscriptions), held from admission until the stream ends.
        self.stream_leases = stream_leases
        #: Told of each call that got past identity (the HTTP/2 edge stops treating its
        #: connection as anonymous).
        self.on_admitted = on_admitted
        self._public = functools.partial(public_text, root=root)
        #: Token/JWT: the credential is proven from metadata before the body is read.
        self._bearer = authenticator if isinstance(authenticator, BearerAuthenticator) else None
        #: Longest user_id / organization_id (NATSGW_MAX_ID_LENGTH).
        self.max_id_length = max_id_length
        # How requests are read (natsgw.wire.compression), chosen once: an admitted call's with
        # the full size limit; a public RPC's, at most NATSGW_TRUSTED_PREAUTH_BYTES; a trusted
        # call's first message, NATSGW_TRUSTED_PREAUTH_BYTES until its user_id is found there.
        self._read_admitted: grpclib_requests.Reader = compression.recv_message
        self._read_public: grpclib_requests.Reader = functools.partial(
            compression.recv_message, limit=preauth_bytes
        )
        self._read_unknown: grpclib_requests.Reader = self._read_admitted
        if isinstance(authenticator, TrustedAuthenticator):
            self._read_unknown = functools.partial(
                compression.recv_message, head=preauth_bytes, inspect=self._precheck
            )
        self._preauth_bytes = preauth_bytes
        #: Told when a call ended holding request bytes it had read (ops.memory's HeapTrimmer:
        #: a burst of stalled uploads then goes back to the OS, not just to the heap).
        self.on_request_dropped = on_request_dropped

    def handler(self, policy: Policy, cardinality: Cardinality, endpoint: Endpoint) -> GrpcHandler:
        """grpclib's handler for one RPC: the steps above around ``endpoint``."""
        audit_ok = policy.audit is Audit.ALWAYS or (
            policy.audit is Audit.DATA_PLANE and self.audit_data_plane
        )
        if cardinality is Cardinality.UNARY_UNARY:
            body = self._unary(cast(Unary, endpoint))
        elif cardinality is Cardinality.UNARY_STREAM:
            body = self._server_streaming(cast(ServerStreaming, endpoint))
        elif cardinality is Cardinality.STREAM_UNARY:
            body = self._client_streaming(cast(ClientStreaming, endpoint))
        else:
            raise ValueError(f"{policy.rpc}: bidirectional streams are not served")

        async def serve(stream: Stream) -> None:
            if self.draining:  # 1
                raise GRPCError(Status.UNAVAILABLE, "the gateway is shutting down; retry elsewhere")
            call = Call(policy, stream)  # 2
            self.in_flight.enter()
            self.metrics.started(policy.rpc)
            started = time.perf_counter()
            error: GRPCError | None = None
            status = _OK
            undecodable = False
            try:
                call.request_id = _request_id(stream)
                await body(call, stream)  # 3-8
            except (asyncio.CancelledError, GeneratorExit):
                status = _CANCELLED
                raise
            except (StreamClosedError, StreamTerminatedError):
                # The client hung up while we were sending: a cancellation, not a failure.
                status = _CANCELLED
                raise asyncio.CancelledError from None
            except Exception as exc:
                undecodable = isinstance(exc, UndecodableRequest)
                if undecodable:
                    self._undecodable(call, cast(UndecodableRequest, exc))
                error = self._map_error(policy, exc)  # 9
                status = error.status
                if error is exc:  # a GRPCError already fit to be read (e.g. undecodable bytes)
                    raise
                raise error from exc
            finally:
                if status is not _OK:  # what a half-read request held goes now, not later
                    self._drop_request(stream)
                # Undecodable bytes are logged (rate-limited, per peer), not audited per call.
                self._finish(call, status, error, started, audit_ok, not undecodable)  # 10

        return serve

    # -- 3-7: receive, identity, namespace, quotas, handler -------------------------------------

    def _unary(self, endpoint: Unary) -> Callable[[Call, Stream], Awaitable[None]]:
        async def body(call: Call, stream: Stream) -> None:
            request = await self._receive(call, stream)
            reply = await endpoint(call, request)
            if call.ticket is not None:
                await call.ticket.created()
            await self._answer(call, stream, reply)

        return body

    def _server_streaming(
        self, endpoint: ServerStreaming
    ) -> Callable[[Call, Stream], Awaitable[None]]:
        async def body(call: Call, stream: Stream) -> None:
            request = await self._receive(call, stream, long_lived=True)
            lease = self.stream_leases(call) if self.stream_leases is not None else _NO_LEASE
            with lease:  # one of the tenant's streaming-call slots while the stream runs
                replies = endpoint(call, request)
                writer: FrameWriter | None = None
                try:
                    async for reply in replies:
                        if not isinstance(reply, Frames):
                            await self._send(call, stream, reply)
                            continue
                        if not call.headers_sent:
                            await call.ready()
                        writer = writer or FrameWriter(stream)
                        await writer.write(reply)
                        self.metrics.delivered(call.namespace, reply.bodies)  # per tenant
                finally:
                    # The sends are awaited here, outside the handler's generator, so a cancelled
                    # or reset call would leave the generator suspended with its subscription
                    # open: close it, shielded, because grpclib cancels a second time when it
                    # closes the connection and that must not cut the cleanup short.
                    await asyncio.shield(replies.aclose())

        return body

    def _client_streaming(
        self, endpoint: ClientStreaming
    ) -> Callable[[Call, Stream], Awaitable[None]]:
        async def body(call: Call, stream: Stream) -> None:
            first = await self._receive(call, stream, long_lived=True)
            reply = await endpoint(call, first, self._rest(stream))
            if call.ticket is not None:
                await call.ticket.created()
            await self._answer(call, stream, reply)

        return body

    async def _receive(self, call: Call, stream: Stream, long_lived: bool = False) -> Any:
        """Step 3, and 4-6 through :meth:`_admit`: nothing of the body is read for a caller whose
        credential does not verify, and only a little before a trusted caller's id is seen."""
        identity: Identity | None = None
        read: grpclib_requests.Reader
        if call.policy.public:
            read = self._read_public
        elif self._bearer is not None:
            identity = await self._bearer.identify(stream.metadata or {})  # 4: before the body
            read = self._read_admitted
        else:
            read = self._read_unknown
        request = await grpclib_requests.recv_message_with(stream, read)
        return await self._admit(call, request, identity, long_lived)

    def _precheck(self, prefix: bytes, codec: Any, message_type: Any) -> None:
        """Trusted mode: refuse from its first bytes a request whose user_id is not among them."""
        ids_seen = getattr(codec, "ids_seen", None)
        if ids_seen is not None:
            seen = ids_seen(prefix, message_type)
            TrustedAuthenticator.precheck(seen, self._preauth_bytes, self.max_id_length)

    async def _rest(self, stream: Stream) -> AsyncIterator[Any]:
        """The messages of a client stream after the first one (each within the read timeout)."""
        read = self._read_admitted
        while (message := await grpclib_requests.recv_message_with(stream, read)) is not None:
            yield message

    async def _admit(
        self, call: Call, request: Any, identity: Identity | None, long_lived: bool = False
    ) -> Any:
        """Steps 4-6: who calls, in which namespace, and whether quotas let it through.

        ``identity``: what the call's bearer credential proved (None in other modes). A
        ``long_lived`` (streaming) call may outlive its credential: it is watched from here
        until :meth:`_finish` (the one place a watch starts and stops).
        """
        policy = call.policy
        ids = request
        if request is not None and policy.scope is not None:
            ids = policy.scope(request)  # a streamed put: the ids are in its header
        if ids is None:
            if policy.scope is not None:
                raise InvalidArgument(
                    "header", f"the first {policy.rpc} message must carry the header"
                )
            raise InvalidArgument("request", f"{policy.rpc} needs a request message")
        call.request = request
        assert call.stream is not None
        metadata: Any = call.stream.metadata or {}
        call.trace = tracing.on_request(policy.rpc, request, metadata)
        if policy.public:
            return request
        check_id_lengths(ids.user_id, ids.organization_id, self.max_id_length)
        scope = _ORGANIZATION if ids.scope == _ORGANIZATION_SCOPE else _USER
        if identity is not None and self._bearer is not None:  # 4: proven in _receive
            principal = self._bearer.admit(identity, ids.user_id, ids.organization_id, scope)
        else:  # 4: the only authentication
            principal = await self.authenticator.authenticate(
                metadata, ids.user_id, ids.organization_id, scope
            )
        call.principal = principal
        if self.on_admitted is not None:
            self.on_admitted(call.stream)
        if long_lived and isinstance(self.authenticator, BearerAuthenticator):
            stream = call.stream
            call.watch = expiry.watch(
                self.authenticator,
                metadata,
                principal,
                lambda reason: self._end(stream, reason),
                self.credential_recheck,
            )
        ns = call.namespace = _namespace(principal.tenant, self.root)  # 5
        if self.quotas is not None and policy.cost is not None:  # 6
            admission = await self.quotas.admit(policy.cost, request, ns)
            call.ticket = admission.ticket
            call.byte_cap = admission.byte_cap
            return admission.request
        return request

    @classmethod
    async def _answer(cls, call: Call, stream: Stream, reply: Any) -> None:
        """A single answer: headers, message and OK trailers leave in one socket write."""
        if not call.headers_sent:
            call.headers_sent = True
            await grpclib_compat.send_unary_answer(stream, reply, _request_id_header(call))
            return
        await cls._send(call, stream, reply)  # headers went earlier; one write still
        await stream.send_trailing_metadata()  # (natsgw.wire.coalescing)

    @staticmethod
    def _end(stream: Stream, reason: str) -> None:
        """End a call whose credential stopped verifying (from the watch's task)."""
        if not grpclib_compat.end_call(stream, expiry.end_error(reason)):
            log.warning("stream_not_ended", reason=reason)

    @staticmethod
    async def _send(call: Call, stream: Stream, reply: Any) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            await stream.send_initial_metadata(metadata={"x-request-id": call.request_id})
        await stream.send_message(reply)

    def _drop_request(self, stream: Stream) -> None:
        if grpclib_requests.discard_received(stream) and self.on_request_dropped is not None:
            self.on_request_dropped()

    # -- 9: error mapping -----------------------------------------------------------------------

    def _undecodable(self, call: Call, exc: UndecodableRequest) -> None:
        if self.on_undecodable is not None:
            stream = call.stream
            self.on_undecodable(exc.message_type, _peer(stream.peer.addr()) if stream else "")

    def _map_error(self, policy: Policy, exc: Exception) -> GRPCError:
        error = to_grpc_error(exc, self._public)
        if error.status in (Status.INTERNAL, Status.UNKNOWN):
            log.error("handler_failed", rpc=policy.rpc, exc_info=exc)
        return error

    # -- 10: finish: quota ticket, metrics, audit, in-flight ------------------------------------

    def _finish(
        self,
        call: Call,
        status: Status,
        error: GRPCError | None,
        started: float,
        audit_ok: bool,
        audited: bool = True,
    ) -> None:
        try:
            watch = call.watch
            if watch is not None:
                watch.stop()
                if watch.ended is not None:  # cancelled by the watch: say why
                    error, status = watch.ended, watch.ended.status
            if call.ticket is not None:
                call.ticket.release()
            if call.trace is not None:
                call.trace.end(status)
            elapsed = time.perf_counter() - started
            rpc = call.policy.rpc
            failed = status is not _OK and status is not _CANCELLED
            self.metrics.ended(rpc, status.name, elapsed, failed)
            if call.namespace is not None:  # per tenant: one lookup (natsgw.ops.metrics)
                self.metrics.tenant_ended(call.namespace, rpc, call.request, status is _OK, failed)
            if audited and (
                status in REFUSED
                or (audit_ok if status is _OK else call.policy.audit is not _REFUSALS)
            ):
                self._audit(call, status, error, elapsed)
        finally:
            self.in_flight.leave()

    def _audit(self, call: Call, status: Status, error: GRPCError | None, elapsed: float) -> None:
        principal = call.principal
        if status is Status.OK:
            outcome = "ok"
        elif status in REFUSED:
            outcome = "refused"
        else:
            outcome = "failed"
        policy = call.policy
        request = call.request
        if request is not None and policy.scope is not None:
            request = policy.scope(request)
        event: dict[str, Any] = {
            "rpc": policy.rpc,
            "outcome": outcome,
            "status": status.name,
            "latency_ms": round(elapsed * 1000, 3),
            "request_id": call.request_id,
            "peer": _peer(call.stream.peer.addr()) if call.stream is not None else "",
            "who": principal.authenticated_as if principal else "",
            "auth": principal.method if principal else "",
            "tenant": tenant_label(principal.tenant) if principal else "",
            "resource": resource_of(request, call.request) if request is not None else {},
        }
        if principal is not None and principal.acting_as:
            event["acting_as"] = True
            event["on_behalf_of"] = principal.user_id
        if error is not None and error.message:
            event["reason"] = error.message[: _MAX_FIELD * 2]
        self.audit.record(**event)


def resource_of(target: Any, request: Any = None) -> dict[str, Any]:
    """The names a request acts on, as the tenant sent them (never NATS names).

    ``target`` is the part carrying the names (a streamed put's header), ``request`` the whole
    message (for its batch size).
    """
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
    messages = getattr(request if request is not None else target, "messages", None)
    if isinstance(messages, list):
        found["messages"] = len(messages)
    return found


#: New request ids: 16 random hex digits per process, then a counter (unique, no syscall per call).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _request_id(stream: Stream) -> str:
    """The client's ``x-request-id`` when it is sane, else a new one (echoed in the headers)."""
    given = stream.metadata.get("x-request-id") if stream.metadata else None
    if isinstance(given, bytes):
        given = given.decode("latin-1")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _request_id_header(call: Call) -> tuple[tuple[str, str], ...]:
    """The response header echoing the call's request id; never indexed by HPACK (each value is
    new: indexing it would only evict reusable entries from both sides' tables)."""
    return (cast(tuple[str, str], NeverIndexedHeaderTuple("x-request-id", call.request_id)),)


def _peer(addr: object) -> str:
    """``host:port`` of the caller (grpclib gives a socket address tuple)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr or "")
