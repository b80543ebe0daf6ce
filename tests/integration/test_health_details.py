"""HealthCheck is open to probes, but its details (NATS URL, server id and version, server-wide
counts) are for callers the gateway can place: a verified credential, or, in trusted mode, a
caller on the gateway's own host. Nothing counts other tenants' streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import TrustedAuthenticator
from natsgw.config import AuthMode
from natsgw.server import Gateway
from natsgw.service.health import may_see_details
from tests.conftest import GatewayFactory, tenant

pytestmark = pytest.mark.asyncio

_DETAILS = ("nats://", "nats-server", "max_payload", "rtt", "streams")


def _undetailed(reply: pb.NatsHealthCheckResponse) -> None:
    assert reply.healthy and reply.nats_status == "CONNECTED"
    assert reply.connections == 0
    for detail in _DETAILS:
        assert detail not in reply.message, reply.message


async def test_without_credential_health_says_only_serving(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    token = "health-" + "t" * 30
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"token": token, "user_id": tenant()}]}))
    gw = await make_gateway(auth_mode=AuthMode.TOKEN, auth_tokens_file=path)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        for deep in (False, True):
            request = pb.NatsHealthCheckRequest(deep_check=deep)
            _undetailed(await stub.health_check(request))
            bad = {"authorization": "Bearer not-a-token-" + "x" * 20}
            _undetailed(await stub.health_check(request, metadata=bad))
        good = {"authorization": f"Bearer {token}"}
        deep_reply = await stub.health_check(
            pb.NatsHealthCheckRequest(deep_check=True), metadata=good
        )
        assert "nats-server 2." in deep_reply.message and "rtt" in deep_reply.message
        assert deep_reply.connections >= 1
        assert "streams" not in deep_reply.message  # a count over every tenant: never shown
    finally:
        channel.close()


async def test_trusted_mode_details_only_for_this_host(gateway: Gateway) -> None:
    """Trusted mode verifies nobody: only the network position says something (it listens on
    loopback unless NATSGW_TRUSTED_ALLOW_REMOTE=true), so only loopback callers see details."""
    auth = TrustedAuthenticator()
    for peer, expected in (
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("10.1.2.3:5000", False),
        ("", False),  # unknown caller
    ):
        assert await may_see_details(auth, {}, peer) is expected, peer


async def test_trusted_loopback_deep_check_has_no_cross_tenant_count(
    stub: pb.NatsServiceStub,
) -> None:
    reply = await stub.health_check(pb.NatsHealthCheckRequest(deep_check=True))
    assert "rtt" in reply.message and "JetStream ok" in reply.message
    assert "streams" not in reply.message
