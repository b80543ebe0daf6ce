"""Assembly: wires settings, the embedded server, the adapter and the services into one gateway.

Nothing else reaches across modules. Start-up and shutdown happen in a known order::

    start: [embedded nats-server] -> NATS connection -> gRPC listener
    stop:  refuse new calls -> end subscription streams -> wait for calls in flight (grace)
           -> close gRPC -> drain NATS -> stop embedded nats-server
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import cast

import betterproto2
import structlog
from grpclib.const import Status
from grpclib.events import RecvRequest, SendInitialMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from natsgw._generated import nats_service_pb2
from natsgw._generated.isa import nats as pb
from natsgw._generated.message_pool import default_message_pool
from natsgw.adapter import NatsAdapter
from natsgw.auth import build_authenticator
from natsgw.auth.identity import Authenticator, CallInfo, current_call, current_record
from natsgw.config import AuthMode, Settings, is_loopback
from natsgw.ops.audit import AuditLog, LokiShipper
from natsgw.ops.consul import ConsulRegistration
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.ops.http import HttpSide
from natsgw.ops.metrics import MeteredSubscriptionRegistry, Metrics
from natsgw.ops.monitoring import NatsMonitor
from natsgw.ops.tls import server_context
from natsgw.pipeline.calls import Observer
from natsgw.pipeline.quotas import QuotaEnforcer, QuotaPolicy
from natsgw.service.base import Dependencies
from natsgw.service.fanout import FanOut
from natsgw.service.gateway import InFlight, NATSGateway
from natsgw.wire import compression
from natsgw.wire.codec import GatewayCodec, UpbBridge

log = structlog.get_logger("natsgw.server")


def build_codec(max_message_size: int) -> GatewayCodec:
    """Every generated dataclass of isa.nats goes through the upb bridge (see wire.codec)."""
    bridge = UpbBridge(nats_service_pb2, default_message_pool)
    for name in pb.__all__:
        cls = getattr(pb, name)
        if isinstance(cls, type) and issubclass(cls, betterproto2.Message):
            bridge.register(cls)
    return GatewayCodec(bridge, max_message_size)


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
        self.metrics = Metrics()
        self.audit = AuditLog(_loki_shipper(self.settings))
        self.quota_policy = QuotaPolicy.from_settings(self.settings)
        self.quotas: QuotaEnforcer | None = None
        self.consul: ConsulRegistration | None = None
        self.http: HttpSide | None = None
        self.http_port = 0
        self.in_flight = InFlight()
        self._server: Server | None = None
        self._draining = False
        self.port = 0

    async def start(self) -> None:
        settings = self.settings
        tls = server_context(settings)  # bad files fail here, before anything starts
        _announce_auth(settings)
        compression.install()
        servers = list(settings.nats_urls)
        monitor_url = settings.nats_monitor_url
        if settings.embedded:
            self.embedded = EmbeddedNatsServer(
                settings.data_dir,
                port=settings.embedded_nats_port,
                max_payload=settings.max_message_size,
                jetstream=settings.jetstream_enabled,
            )
            await self.embedded.start()
            servers = [self.embedded.url]
            monitor_url = monitor_url or self.embedded.monitor_url
        self.adapter = NatsAdapter(
            servers,
            user=settings.nats_username,
            password=settings.nats_password,
            token=settings.nats_token,
            name=f"natsgw:{settings.service_hostname or settings.service_name}",
            publish_confirm_timeout=settings.publish_confirm_timeout,
            gateway_max_message=settings.max_message_size,
            jetstream_domain=settings.jetstream_domain,
        )
        # Wait briefly for the first connection; if NATS is down we still serve (UNAVAILABLE)
        # and keep retrying in the background.
        await self.adapter.start(wait=5.0)
        self.monitor = NatsMonitor(monitor_url)
        self.audit.start()
        if self.quota_policy.enabled:
            self.quotas = QuotaEnforcer(
                self.quota_policy,
                self.adapter,
                settings.namespace_root,
                on_refusal=lambda quota: self.metrics.quota_refusals.labels(quota).inc(),
            )
        observer = Observer(
            authenticator=self.authenticator,
            metrics=self.metrics,
            audit=self.audit,
            quotas=self.quotas,
            root=settings.namespace_root,
        )
        # Shared subscriptions queue little in nats-py (delivery into mailboxes never blocks);
        # its limits only bound a burst the event loop has not caught up with yet.
        self.fanout = FanOut(
            self.adapter,
            pending_msgs=max(65536, 16 * settings.subscription_buffer_msgs),
            pending_bytes=max(64 * 1024 * 1024, 4 * settings.stream_buffer_bytes),
        )
        deps = Dependencies(
            settings=settings,
            adapter=self.adapter,
            authenticator=self.authenticator,
            subscriptions=self.subscriptions,
            fanout=self.fanout,
            monitor=self.monitor,
            calls=observer,
        )
        gateway = NATSGateway(deps, self.in_flight)
        adapter = self.adapter

        async def nats_connected() -> bool:
            return adapter.connected

        health = Health({gateway: [ServiceCheck(nats_connected, check_ttl=2.0)]})
        services = ServerReflection.extend([gateway, health])
        self._server = Server(services, codec=build_codec(settings.max_message_size))
        listen(self._server, RecvRequest, self._on_request)
        listen(self._server, SendInitialMetadata, _echo_request_id)
        await self._server.start(settings.grpc_host, settings.grpc_port, ssl=tls)
        listener = cast(asyncio.Server | None, self._server._server)
        sockets = listener.sockets if listener is not None else ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else settings.grpc_port
        self.metrics.bind(self.adapter, self.subscriptions, self.audit, self.fanout)
        if settings.http_port is not None:
            self.http = HttpSide(self.metrics, self.adapter, jetstream=settings.jetstream_enabled)
            await self.http.start(settings.http_host or settings.grpc_host, settings.http_port)
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
            nats=servers,
            embedded=settings.embedded,
        )

    async def _on_request(self, event: RecvRequest) -> None:
        if self._draining:
            raise GRPCError(Status.UNAVAILABLE, "the gateway is shutting down; retry elsewhere")
        deadline = event.deadline.time_remaining() if event.deadline is not None else None
        current_call.set(
            CallInfo(
                method=event.method_name,
                metadata=dict(event.metadata),
                peer=_peer(event.peer.addr()),
                deadline=deadline,
            )
        )

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace
        if self.consul is not None:  # first: stop new traffic being sent here
            await self.consul.stop()
            self.consul = None
        self._draining = True
        ended = self.subscriptions.end_all()
        idle = await self.in_flight.wait_idle(grace)
        log.info(
            "natsgw_stopping", streams_ended=ended, calls_cut=0 if idle else self.in_flight.count
        )
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.fanout is not None:
            await self.fanout.close()
        if self.adapter is not None:
            await self.adapter.close()
        if self.monitor is not None:
            await self.monitor.close()
        if self.embedded is not None:
            await self.embedded.stop()
        await self.audit.close()
        close = getattr(self.authenticator, "close", None)
        if close is not None:
            await close()
        log.info("natsgw_stopped", audit_dropped=self.audit.dropped)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()


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
    """Say at start-up how callers are identified, loudly when that is on trust."""
    if settings.auth_mode is not AuthMode.TRUSTED:
        log.info("auth_mode", mode=settings.auth_mode.value)
    elif is_loopback(settings.grpc_host):
        log.warning(
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


def _peer(addr: object) -> str:
    """``host:port`` of the caller (grpclib gives a socket address tuple)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr or "")


async def _echo_request_id(event: SendInitialMetadata) -> None:
    """Response headers carry the call's ``x-request-id`` (the one in its audit event)."""
    record = current_record.get()
    if record is not None and record.request_id:
        event.metadata["x-request-id"] = record.request_id
