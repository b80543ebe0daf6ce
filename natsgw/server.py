"""Assembly: wires settings, the embedded server, the adapter and the services into one gateway.

Nothing else reaches across modules. Start-up and shutdown happen in a known order::

    start: [embedded nats-server] -> NATS connection -> gRPC listener
    stop:  refuse new calls -> end subscription streams -> wait for calls in flight (grace)
           -> close gRPC -> drain NATS -> stop embedded nats-server
"""

from __future__ import annotations

import asyncio
import signal
from typing import cast

import betterproto2
import structlog
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from natsgw._generated import nats_service_pb2
from natsgw._generated.isa import nats as pb
from natsgw._generated.message_pool import default_message_pool
from natsgw.adapter import NatsAdapter
from natsgw.config import Settings
from natsgw.embedded import EmbeddedNatsServer
from natsgw.identity import Authenticator, CallInfo, TrustedAuthenticator, current_call
from natsgw.monitoring import NatsMonitor
from natsgw.service.base import Dependencies
from natsgw.service.gateway import InFlight, NATSGateway
from natsgw.subscriptions import SubscriptionRegistry
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
        self.settings = settings
        self.authenticator = authenticator or TrustedAuthenticator()
        self.embedded: EmbeddedNatsServer | None = None
        self.adapter: NatsAdapter | None = None
        self.monitor: NatsMonitor | None = None
        self.subscriptions = SubscriptionRegistry()
        self.in_flight = InFlight()
        self._server: Server | None = None
        self._draining = False
        self.port = 0

    async def start(self) -> None:
        settings = self.settings
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
        deps = Dependencies(
            settings=settings,
            adapter=self.adapter,
            authenticator=self.authenticator,
            subscriptions=self.subscriptions,
            monitor=self.monitor,
        )
        gateway = NATSGateway(deps, self.in_flight)
        adapter = self.adapter

        async def nats_connected() -> bool:
            return adapter.connected

        health = Health({gateway: [ServiceCheck(nats_connected, check_ttl=2.0)]})
        services = ServerReflection.extend([gateway, health])
        self._server = Server(services, codec=build_codec(settings.max_message_size))
        listen(self._server, RecvRequest, self._on_request)
        await self._server.start(settings.grpc_host, settings.grpc_port)
        listener = cast(asyncio.Server | None, self._server._server)
        sockets = listener.sockets if listener is not None else ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else settings.grpc_port
        log.info(
            "natsgw_started",
            grpc=f"{settings.grpc_host}:{self.port}",
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
                peer=str(event.peer.addr() or ""),
                deadline=deadline,
            )
        )

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace
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
        if self.adapter is not None:
            await self.adapter.close()
        if self.monitor is not None:
            await self.monitor.close()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("natsgw_stopped")

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
