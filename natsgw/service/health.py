"""HealthCheck: the real NATS connection state, JetStream availability and server facts."""

from __future__ import annotations

import datetime

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.config import Settings
from natsgw.errors import GatewayError
from natsgw.ops.monitoring import NatsMonitor
from natsgw.pipeline.call import Call

_DEEP_TIMEOUT = 2.0


class HealthService:
    """Public: needs no identity and touches no tenant's data."""

    def __init__(self, settings: Settings, adapter: NatsAdapter, monitor: NatsMonitor) -> None:
        self.settings = settings
        self.adapter = adapter
        self.monitor = monitor

    async def health_check(
        self, call: Call, message: pb.NatsHealthCheckRequest
    ) -> pb.NatsHealthCheckResponse:
        state = self.adapter.state()
        now = datetime.datetime.now(datetime.UTC)
        if not self.adapter.connected:
            return pb.NatsHealthCheckResponse(
                healthy=False,
                nats_status=state.status,
                checked_at=now,
                message=f"not connected to NATS ({state.status.lower()}); still retrying",
            )
        facts = self.adapter.facts()
        jetstream = facts.jetstream and self.settings.jetstream_enabled
        notes = [
            f"connected to {state.connected_url}",
            f"nats-server {facts.version} ({facts.server_name or facts.server_id})",
            f"max_payload {facts.max_payload}",
        ]
        healthy = True
        if message.deep_check:
            try:
                rtt = await self.adapter.rtt(_DEEP_TIMEOUT)
                notes.append(f"rtt {rtt * 1000:.2f} ms")
                if jetstream:
                    account = await self.adapter.jetstream_account(_DEEP_TIMEOUT)
                    notes.append(f"JetStream ok ({account.streams} streams)")
            except GatewayError as exc:
                healthy = False
                notes.append(f"deep check failed: {exc.message}")
        connections = 0
        if self.monitor.configured:
            try:
                connections = int((await self.monitor.varz()).get("connections", 0))
            except GatewayError as exc:
                notes.append(exc.message)
        return pb.NatsHealthCheckResponse(
            healthy=healthy,
            nats_status=state.status,
            jetstream_enabled=jetstream,
            connections=connections,
            checked_at=now,
            message="; ".join(notes),
        )
