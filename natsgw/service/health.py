"""HealthCheck: the real NATS connection state, JetStream availability and server facts.

Open to every caller (probes carry no credential), so the answer is split: anyone learns whether
the gateway serves (``healthy``, ``nats_status``, ``jetstream_enabled``); the details — the NATS
URL, the server's id and version, max_payload, RTT, the server's connection count — go only to
callers :func:`may_see_details` can place. No answer counts other tenants' streams.
"""

from __future__ import annotations

import datetime

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.auth.identity import Authenticator, BearerAuthenticator, Metadata
from natsgw.config import Settings, is_loopback
from natsgw.errors import GatewayError
from natsgw.ops.monitoring import NatsMonitor
from natsgw.ops.secrets import mask_url
from natsgw.pipeline.call import Call

_DEEP_TIMEOUT = 2.0


async def may_see_details(authenticator: Authenticator, metadata: Metadata, peer: str) -> bool:
    """A verified credential (token/jwt modes); in trusted mode, which verifies nobody, only a
    caller on this host (trusted mode listens on loopback unless told otherwise).

    ``peer`` is the caller's ``host:port`` (``[v6]:port``); empty when unknown.
    """
    if isinstance(authenticator, BearerAuthenticator):
        try:
            await authenticator.identify(metadata)
        except GatewayError:  # none, bad, or not verifiable now: still a probe's answer
            return False
        return True
    if not peer:
        return False
    host = peer.rpartition(":")[0] or peer
    return is_loopback(host)


class HealthService:
    """Public: needs no identity and touches no tenant's data; details need a credential."""

    def __init__(
        self,
        settings: Settings,
        adapter: NatsAdapter,
        monitor: NatsMonitor,
        authenticator: Authenticator,
    ) -> None:
        self.settings = settings
        self.adapter = adapter
        self.monitor = monitor
        self.authenticator = authenticator

    async def _detailed(self, call: Call) -> bool:
        stream = call.stream
        if stream is None:  # driven directly (scripts, unit tests): nobody to place
            return False
        addr = stream.peer.addr()
        peer = ""
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = str(addr[0])
            peer = f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
        return await may_see_details(self.authenticator, stream.metadata or {}, peer)

    async def health_check(
        self, call: Call, message: pb.NatsHealthCheckRequest
    ) -> pb.NatsHealthCheckResponse:
        state = self.adapter.state()
        now = datetime.datetime.now(datetime.UTC)
        detailed = await self._detailed(call)
        if not self.adapter.connected:
            return pb.NatsHealthCheckResponse(
                healthy=False,
                nats_status=state.status,
                checked_at=now,
                message=f"not connected to NATS ({state.status.lower()}); still retrying",
            )
        facts = self.adapter.facts()
        jetstream = facts.jetstream and self.settings.jetstream_enabled
        notes = ["serving"]
        if detailed:
            notes = [
                f"connected to {mask_url(state.connected_url)}",
                f"nats-server {facts.version} ({facts.server_name or facts.server_id})",
                f"max_payload {facts.max_payload}",
            ]
        healthy = True
        if message.deep_check:
            try:
                rtt = await self.adapter.rtt(_DEEP_TIMEOUT)
                if detailed:
                    notes.append(f"rtt {rtt * 1000:.2f} ms")
                if jetstream:
                    await self.adapter.jetstream_account(_DEEP_TIMEOUT)
                    notes.append("JetStream ok")
            except GatewayError as exc:
                healthy = False
                notes.append(
                    f"deep check failed: {exc.message}" if detailed else "deep check failed"
                )
        connections = 0
        if detailed and self.monitor.configured:
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
