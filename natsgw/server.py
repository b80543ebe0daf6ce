"""Assembly: wires settings, the embedded server, the adapter and the services into one gateway.

Nothing else reaches across modules. Start-up and shutdown happen in a known order::

    start: [data-dir lock -> embedded nats-server] -> NATS connection -> gRPC listener
           (a step that fails undoes the ones before it: no child process or lock is left)
    stop:  refuse new calls -> end subscription streams -> wait for calls in flight (grace)
           -> end the rest with UNAVAILABLE -> close gRPC -> drain NATS -> stop embedded
           nats-server -> release the data-dir lock
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Iterator
from typing import Any

import betterproto2
import grpclib.server
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.server import Server

from natsgw._generated import nats_service_pb2
from natsgw._generated.isa import nats as pb
from natsgw._generated.message_pool import default_message_pool
from natsgw.adapter import NatsAdapter
from natsgw.auth import build_authenticator
from natsgw.auth.identity import Authenticator
from natsgw.compat.grpclib import cancel_calls_in_flight, guard_connections, wrap_transports
from natsgw.config import AuthMode, Settings, is_loopback
from natsgw.edge.fds import AcceptErrorLog, raise_fd_limit
from natsgw.edge.guard import Edge, EdgePolicy
from natsgw.ops.audit import AuditLog, LokiShipper
from natsgw.ops.consul import ConsulRegistration
from natsgw.ops.datadir import DataDirLock
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.ops.http import HttpSide
from natsgw.ops.memory import HeapTrimmer, return_large_buffers
from natsgw.ops.metrics import MeteredSubscriptionRegistry, Metrics
from natsgw.ops.monitoring import NatsMonitor
from natsgw.ops.secrets import mask_url
from natsgw.ops.sockets import bind_tcp, bound_port
from natsgw.ops.status import StatusPage
from natsgw.ops.tls import server_context
from natsgw.pipeline.chain import InFlight, Pipeline
from natsgw.pipeline.quotas import QuotaEnforcer, QuotaPolicy
from natsgw.pipeline.rejects import RejectLog
from natsgw.service.dead_letters import DeadLetterRelay
from natsgw.service.fanout import FanOut
from natsgw.service.gateway import NATSGateway, Services
from natsgw.wire import compression, frames
from natsgw.wire.budget import RequestBudget
from natsgw.wire.coalescing import coalesced
from natsgw.wire.codec import GatewayCodec, RepeatedLimits, UpbBridge
from natsgw.wire.items import UPB_ITEMS
from natsgw.wire.reflection import DocumentedReflection

log = structlog.get_logger("natsgw.server")


#: After the grace period, how long cut-off calls get to send their status before the server closes.
_TRAILERS_WAIT = 2.0


class StartupError(RuntimeError):
    """The gateway could not start (a port in use, ...); the message says what and where."""


class GatewayFailed(RuntimeError):
    """The gateway stopped because it could no longer serve (its nats-server kept failing)."""


def build_codec(
    max_message_size: int, limits: RepeatedLimits | None = None, settings: Settings | None = None
) -> GatewayCodec:
    """Every generated dataclass of isa.nats goes through the upb bridge (see wire.codec), each
    repeated/map field bounded by ``limits`` before it is expanded (None: unbounded); with
    ``settings``, requests are read within their read timeout and preauth bound."""
    bridge = UpbBridge(nats_service_pb2, default_message_pool, limits, UPB_ITEMS)
    for name in pb.__all__:
        cls = getattr(pb, name)
        if isinstance(cls, type) and issubclass(cls, betterproto2.Message):
            bridge.register(cls)
    if settings is None:
        return GatewayCodec(bridge, max_message_size)
    codec = GatewayCodec(
        bridge,
        max_message_size,
        read_timeout=settings.request_read_timeout,
        unadmitted_limit=settings.trusted_preauth_bytes,
    )
    # Large request bodies being assembled (natsgw.wire.budget): one message always fits.
    largest = codec.max_message_size
    per_connection = settings.request_buffer_bytes_per_connection or 4 * largest
    codec.request_budget = RequestBudget(
        max(settings.request_buffer_bytes, 2 * largest), max(per_connection, largest)
    )
    return codec


def request_limits(settings: Settings) -> RepeatedLimits:
    return RepeatedLimits(
        batch_messages=settings.max_batch_messages,
        ack_tokens=settings.max_ack_tokens,
        headers=settings.max_headers,
        list_items=settings.max_list_items,
    )


class Gateway:
    """One running natsgw: owns every task, connection and child process it starts."""

    def __init__(self, settings: Settings, *, authenticator: Authenticator | None = None) -> None:
        self.settings = settings.validated()
        self.authenticator = authenticator or build_authenticator(self.settings)
        self.embedded: EmbeddedNatsServer | None = None
        self.adapter: NatsAdapter | None = None
        self.monitor: NatsMonitor | None = None
        self.subscriptions = MeteredSubscriptionRegistry(self.settings.quota_streaming_calls)
        self.fanout: FanOut | None = None
        self.metrics = Metrics(self.settings)
        self.audit = AuditLog(_loki_shipper(self.settings))
        self.quota_policy = QuotaPolicy.from_settings(self.settings)
        self.quotas: QuotaEnforcer | None = None
        self.consul: ConsulRegistration | None = None
        self.http: HttpSide | None = None
        self.http_port = 0
        self.in_flight = InFlight()
        self.pipeline: Pipeline | None = None
        self._server: Server | None = None
        self.port = 0
        self.lock: DataDirLock | None = None
        #: Why the gateway cannot serve any more (empty while healthy); set by supervision.
        self.failure = ""
        self._failed = asyncio.Event()
        self.trimmer: HeapTrimmer | None = None
        self._trimming: asyncio.Task[None] | None = None
        self.dead_letters: DeadLetterRelay | None = None
        self.edge: Edge | None = None
        self._accept_log: AcceptErrorLog | None = None

    async def start(self) -> None:
        """Start everything; if a step fails, stop what the earlier steps started, then raise."""
        try:
            await self._start()
        except BaseException:
            await self._release()
            raise

    @contextlib.contextmanager
    def _stream_lease(self, tenant_key: str) -> Iterator[None]:
        """One of the tenant's stream slots; when the stream ends, memory may be given back."""
        try:
            with self.subscriptions.lease(tenant_key):
                yield
        finally:
            if self.trimmer is not None:
                self.trimmer.ended()

    def _admitted(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        if self.edge is not None:
            self.edge.admitted(stream)

    def _give_up(self, reason: str) -> None:
        self.failure = reason
        self._failed.set()

    async def _start(self) -> None:
        settings = self.settings
        tls = server_context(settings)  # bad files fail here, before anything starts
        _announce_auth(settings)
        compression.install()
        frames.install()
        return_large_buffers()
        trimmer = self.trimmer = HeapTrimmer.create()
        if trimmer is not None:  # what ended streams held goes back to the OS
            self._trimming = asyncio.create_task(trimmer.run(), name="natsgw-heap-trim")
        servers = list(settings.nats_urls)
        monitor_url = settings.nats_monitor_url
        user, password, token = settings.nats_username, settings.nats_password, settings.nats_token
        if settings.embedded:
            self.lock = DataDirLock(settings.data_dir)
            self.lock.acquire()  # before the store is touched: one owner per data directory
            self.embedded = EmbeddedNatsServer.owning(settings, self.lock, self._give_up)
            await self.embedded.start()
            servers = [self.embedded.address]  # its credentials go as options, not in the URL
            user, password, token = "", "", self.embedded.credentials.token
            monitor_url = monitor_url or self.embedded.monitor_url
        self.adapter = NatsAdapter(
            servers,
            user=user,
            password=password,
            token=token,
            name=f"natsgw:{settings.service_hostname or settings.service_name}",
            publish_confirm_timeout=settings.publish_confirm_timeout,
            gateway_max_message=settings.max_message_size,
            jetstream_domain=settings.jetstream_domain,
            read_window_bytes=settings.nats_read_window_bytes,
            object_read_window_bytes=settings.object_read_window_bytes,
        )
        # Wait briefly for the first connection; if NATS is down we still serve (UNAVAILABLE)
        # and keep retrying in the background.
        await self.adapter.start(wait=5.0)
        if not self.adapter.connected:
            log.warning(
                "nats_unreachable_at_start",
                servers=servers,
                detail="serving anyway: calls answer UNAVAILABLE and /readyz 503 until the "
                "connection succeeds; natsgw keeps retrying with backoff",
            )
        self.monitor = NatsMonitor(monitor_url)
        self.audit.start()
        if self.quota_policy.enabled:
            self.quotas = QuotaEnforcer(
                self.quota_policy,
                self.adapter,
                settings.namespace_root,
                on_refusal=lambda quota: self.metrics.quota_refusals.labels(quota).inc(),
            )
        self.pipeline = Pipeline(
            authenticator=self.authenticator,
            metrics=self.metrics,
            audit=self.audit,
            quotas=self.quotas,
            root=settings.namespace_root,
            audit_data_plane=settings.audit_data_plane,
            in_flight=self.in_flight,
            credential_recheck=settings.auth_recheck_interval,
            on_undecodable=RejectLog(),
            stream_leases=lambda call: self._stream_lease(call.ns.key),
            preauth_bytes=settings.trusted_preauth_bytes,
            max_id_length=settings.max_id_length,
            on_request_dropped=trimmer.ended if trimmer is not None else None,
            on_admitted=self._admitted,
        )
        # Shared subscriptions queue little in nats-py (delivery into mailboxes never blocks);
        # its limits only bound a burst the event loop has not caught up with yet.
        self.fanout = FanOut(
            self.adapter,
            pending_msgs=max(65536, 16 * settings.subscription_buffer_msgs),
            pending_bytes=max(64 * 1024 * 1024, 4 * settings.stream_buffer_bytes),
        )
        services = Services.build(
            settings,
            self.adapter,
            self.subscriptions,
            self.fanout,
            self.monitor,
            self.authenticator,
            tenants=self.metrics.tenants,
        )
        gateway = NATSGateway(services, self.pipeline)
        if settings.jetstream_enabled and settings.dead_letter_relay:
            self.dead_letters = DeadLetterRelay(
                settings, services.jetstream.js, self.metrics.registry
            )
            await self.dead_letters.start()
        adapter = self.adapter

        async def nats_connected() -> bool:
            return adapter.connected

        health = Health({gateway: [ServiceCheck(nats_connected, check_ttl=2.0)]})
        self._server = Server(
            DocumentedReflection.extend([gateway, health]),
            codec=build_codec(settings.max_message_size, request_limits(settings), settings),
        )
        # What a connection's calls write in one event-loop pass leaves in one socket write.
        wrap_transports(self._server, coalesced)
        # The HTTP/2 edge: connection caps, frame budgets, timeouts (natsgw.edge).
        fd_limit, _ = raise_fd_limit()
        self.edge = Edge(
            EdgePolicy.from_settings(settings, fd_limit),
            on_closed=trimmer.trim_soon if trimmer is not None else None,
        )
        guard_connections(self._server, self.edge.protocol)
        self._accept_log = AcceptErrorLog(asyncio.get_running_loop())
        self._accept_log.install()
        try:
            sock = bind_tcp(settings.grpc_host, settings.grpc_port, reuse_port=settings.workers > 1)
        except OSError as exc:
            self._server = None  # never started: nothing to close
            raise StartupError(
                f"cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port} "
                f"(GRPC_HOST/GRPC_PORT): {exc.strerror or exc}"
            ) from None
        self.port = bound_port(sock)
        try:
            await self._server.start(sock=sock, ssl=tls)
        except BaseException:
            sock.close()
            raise
        self.edge.start()
        self.metrics.bind(self.adapter, self.subscriptions, self.audit, self.fanout)
        if settings.http_port is not None:
            status = StatusPage(
                self.metrics,
                self.adapter,
                self.subscriptions,
                self.fanout,
                jetstream=settings.jetstream_enabled,
                about={
                    "service": settings.service_name,
                    "grpc_port": self.port,
                    "auth_mode": settings.auth_mode.value,
                    "embedded_nats": settings.embedded,
                },
            )
            self.http = HttpSide(
                self.metrics,
                self.adapter,
                jetstream=settings.jetstream_enabled,
                failure=lambda: self.failure,
                status=status,
                nats_down_after=settings.nats_down_unhealthy_after,
            )
            http_host = settings.http_host or settings.grpc_host
            try:
                await self.http.start(http_host, settings.http_port)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen for HTTP on {http_host}:{settings.http_port} "
                    f"(NATSGW_HTTP_HOST/NATSGW_HTTP_PORT): {exc.strerror or exc}"
                ) from None
            self.http_port = self.http.port
        if settings.consul_enabled:
            self.consul = ConsulRegistration(settings, self.port, tls=tls is not None)
            self.consul.start()
        log.info(
            "natsgw_started",
            grpc=f"{settings.grpc_host}:{self.port}",
            tls="mutual" if settings.tls_client_ca_file else ("on" if tls else "off"),
            http=self.http_port or None,
            auth=settings.auth_mode.value,
            nats=[mask_url(url) for url in servers],
            embedded=settings.embedded,
        )

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace
        if self.consul is not None:  # first: stop new traffic being sent here
            await self.consul.stop()
            self.consul = None
        if self.pipeline is not None:
            self.pipeline.draining = True
        ended = self.subscriptions.end_all()
        idle = await self.in_flight.wait_idle(grace)
        cut = 0
        if not idle:
            cut = self._end_calls_in_flight()
            await self.in_flight.wait_idle(_TRAILERS_WAIT)
        log.info("natsgw_stopping", streams_ended=ended, calls_cut=cut)
        await self._release()
        log.info("natsgw_stopped", audit_dropped=self.audit.dropped)

    def _end_calls_in_flight(self) -> int:
        """After the grace period, end each call still running with UNAVAILABLE.

        Closing the server would cancel them and drop their connections: a client would see
        "connection lost" and not know what happened. grpclib's per-call wrapper instead raises
        a GRPCError inside the handler, which unwinds it (an object upload removes its chunks)
        and sends the status (through natsgw.compat.grpclib).
        """
        if self._server is None:
            return 0
        return cancel_calls_in_flight(
            self._server,
            GRPCError(
                Status.UNAVAILABLE,
                "the gateway is shutting down and this call did not finish within the grace "
                "period; retry elsewhere",
            ),
        )

    async def _release(self) -> None:
        """Close, stop and release whatever was started, in reverse order; safe to repeat."""
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            trimming.cancel()
            await asyncio.gather(trimming, return_exceptions=True)
        if self.consul is not None:
            await self.consul.stop()
            self.consul = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.edge is not None:
            await self.edge.close()
        if self._accept_log is not None:
            self._accept_log.uninstall()
            self._accept_log = None
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.dead_letters is not None:  # before the NATS connection it pulls through
            await self.dead_letters.stop()
            self.dead_letters = None
        if self.fanout is not None:
            await self.fanout.close()
            self.fanout = None
        if self.adapter is not None:
            await self.adapter.close()
        if self.monitor is not None:
            await self.monitor.close()
        if self.embedded is not None:
            await self.embedded.stop()
        if self.lock is not None:  # after the store's server is gone
            self.lock.release()
            self.lock = None
        await self.audit.close()
        close = getattr(self.authenticator, "close", None)
        if close is not None:
            await close()

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully.

        Raises :class:`GatewayFailed` (after shutting down) when supervision gave up.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            settle_heap()
            waiters = {
                asyncio.create_task(stop.wait()),
                asyncio.create_task(self._failed.wait()),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self.failure:
            raise GatewayFailed(self.failure)


def settle_heap() -> None:
    """After a serving process started, keep full garbage collections off the request path.

    What start-up built lives as long as the process: ``gc.freeze`` takes it out of every later
    collection. A full collection walked all of it (20-50 ms) in the middle of calls; under the
    64-caller unary Publish load, full-collection time fell from 285 to 43 ms per ~20 000 calls
    and the longest pause from 52 to 22 ms. (A higher youngest-generation threshold saved another
    ~8 us per call but let cycles holding 8 MiB object payloads live longer: +0.3x object in the
    unary object RSS row, so Python's default stays.)
    Process-wide, so for serving processes only (``natsgw serve`` and each worker), not for a
    Gateway embedded in another program or a test.
    """
    gc.collect()
    gc.freeze()


def _loki_shipper(settings: Settings) -> LokiShipper | None:
    if not settings.loki_url:
        return None
    return LokiShipper(
        settings.loki_url,
        {
            "service_name": settings.service_name,
            "job": "natsgw-audit",
            "instance": settings.service_hostname or socket.gethostname(),
        },
        queue_size=settings.audit_queue_size,
        batch_size=settings.loki_batch_size,
        flush_interval=settings.loki_flush_interval,
        tenant=settings.loki_tenant,
    )


def _announce_auth(settings: Settings) -> None:
    """Say at start-up how callers are identified; a warning only when trust reaches further
    than this machine (trusted on loopback is the default start: info, not a warning each time)."""
    if settings.auth_mode is not AuthMode.TRUSTED:
        log.info("auth_mode", mode=settings.auth_mode.value)
    elif is_loopback(settings.grpc_host):
        log.info(
            "auth_mode_trusted",
            detail="callers are identified by the user_id they send, unverified; listening on "
            "loopback only. Use NATSGW_AUTH_MODE=token or jwt for anything else",
        )
    else:
        log.warning(
            "auth_mode_trusted_remote",
            grpc_host=settings.grpc_host,
            detail="NATSGW_TRUSTED_ALLOW_REMOTE=true: any client that reaches this port can act "
            "as any user",
        )
