"""HealthCheck: the real NATS connection state, JetStream availability and server facts.

Open to every caller (probes carry no credential), so the answer is split: anyone learns whether
the gateway serves (``healthy``, ``nats_status``, ``jetstream_enabled``); the details — the NATS
URL, the server's id and version, max_payload, RTT, the server's connection count — go only to
callers :func:`may_see_details` can place. No answer counts other tenants' streams.
"""

from __future__ import annotations

import datetime

from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import Authenticator, BearerAuthenticator, current_call
from natsgw.config import is_loopback
from natsgw.errors import GatewayError
from natsgw.ops.redact import mask_url
from natsgw.service.base import Handlers

_DEEP_TIMEOUT = 2.0


async def may_see_details(authenticator: Authenticator) -> bool:
    """A verified credential (token/jwt modes); in trusted mode, which verifies nobody, only a
    caller on this host (trusted mode listens on loopback unless told otherwise)."""
    if isinstance(authenticator, BearerAuthenticator):
        try:
            await authenticator.identify()
        except GatewayError:  # none, bad, or not verifiable now: still a probe's answer
            return False
        return True
    call = current_call.get()
    if call is None or not call.peer:
        return False
    host = call.peer.rpartition(":")[0] or call.peer
    return is_loopback(host)


class HealthHandlers(Handlers):
    async def health_check(self, message: pb.NatsHealthCheckRequest) -> pb.NatsHealthCheckResponse:
        state = self.adapter.state()
        now = datetime.datetime.now(datetime.UTC)
        detailed = await may_see_details(self.deps.authenticator)
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
        if detailed and self.deps.monitor.configured:
            try:
                connections = int((await self.deps.monitor.varz()).get("connections", 0))
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
