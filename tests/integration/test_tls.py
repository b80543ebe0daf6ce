"""TLS and mutual TLS on the gRPC port, with certificates made in the test and grpcio clients."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.config import ConfigError, Settings
from natsgw.ops.tls import server_context
from natsgw.server import Gateway
from tests.conftest import tenant
from tests.integration._security import Pki, grpcio_unary, make_pki

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def health_over_grpcio(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    """HealthCheck through grpcio; returns the response or the grpc.StatusCode of the failure."""
    target = f"localhost:{port}"
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        try:
            return grpcio_unary(
                channel,
                "HealthCheck",
                pb.NatsHealthCheckRequest(),
                pb.NatsHealthCheckResponse,
                timeout=3,
            )
        except grpc.RpcError as exc:
            return exc.code()


async def test_tls_serves_grpcio_clients_that_trust_the_ca(
    make_gateway: GatewayFactory, pki: Pki
) -> None:
    gw = await make_gateway(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    trusting = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    reply = await asyncio.to_thread(health_over_grpcio, gw.port, trusting)
    assert isinstance(reply, pb.NatsHealthCheckResponse) and reply.healthy
    # A plaintext client cannot talk to the TLS port; one trusting another CA refuses the server.
    assert await asyncio.to_thread(health_over_grpcio, gw.port, None) == (
        grpc.StatusCode.UNAVAILABLE
    )
    stranger = grpc.ssl_channel_credentials(root_certificates=pki.other_ca_cert.read_bytes())
    assert await asyncio.to_thread(health_over_grpcio, gw.port, stranger) == (
        grpc.StatusCode.UNAVAILABLE
    )


async def test_tls_with_a_grpclib_client_and_a_real_call(
    make_gateway: GatewayFactory, pki: Pki
) -> None:
    gw = await make_gateway(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.set_alpn_protocols(["h2"])
    channel = Channel("localhost", gw.port, ssl=context)
    try:
        reply = await pb.NatsServiceStub(channel).publish(
            pb.PublishRequest(user_id=tenant(), subject="over.tls", data=b"x")
        )
        assert reply.success
    finally:
        channel.close()


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    make_gateway: GatewayFactory, pki: Pki
) -> None:
    gw = await make_gateway(
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca_cert,
    )
    root = pki.ca_cert.read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    reply = await asyncio.to_thread(health_over_grpcio, gw.port, with_cert)
    assert isinstance(reply, pb.NatsHealthCheckResponse) and reply.healthy

    without_cert = grpc.ssl_channel_credentials(root_certificates=root)
    assert await asyncio.to_thread(health_over_grpcio, gw.port, without_cert) == (
        grpc.StatusCode.UNAVAILABLE
    )
    foreign_cert = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=pki.other_client_key.read_bytes(),
        certificate_chain=pki.other_client_cert.read_bytes(),
    )
    assert await asyncio.to_thread(health_over_grpcio, gw.port, foreign_cert) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_tls_settings_are_checked(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NATSGW_TLS_CERT_FILE"):
        Settings.from_env({"NATSGW_TLS_KEY_FILE": str(pki.server_key)})
    with pytest.raises(ConfigError, match="NATSGW_TLS_CLIENT_CA_FILE"):
        Settings.from_env({"NATSGW_TLS_CLIENT_CA_FILE": str(pki.ca_cert)})
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        server_context(Settings(tls_cert_file=broken, tls_key_file=pki.server_key))
    context = server_context(
        Settings(
            tls_cert_file=pki.server_cert,
            tls_key_file=pki.server_key,
            tls_client_ca_file=pki.ca_cert,
        )
    )
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert server_context(Settings()) is None
