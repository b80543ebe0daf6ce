"""Consul registration against a fake agent implementing the endpoints natsgw uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode, Settings
from natsgw.ops.consul import service_definition
from natsgw.server import Gateway
from tests.conftest import wait_for
from tests.integration._security import FakeConsul, free_port

GatewayFactory = Callable[..., Awaitable[Gateway]]


def test_registration_payload_is_the_seeds() -> None:
    settings = Settings(
        service_hostname="isa-nats-grpc", grpc_host="0.0.0.0", trusted_allow_remote=True
    )
    definition = service_definition(settings, 50056, tls=False)
    assert definition == {
        "ID": "nats-service-isa-nats-grpc",
        "Name": "nats-grpc-service",
        "Address": "isa-nats-grpc",
        "Port": 50056,
        "Tags": ["grpc", "nats", "messaging", "eventbus"],
        "Meta": {"version": "0.1.0", "protocol": "grpc", "tls": "false", "auth_mode": "trusted"},
        "Check": {
            "Name": "nats-grpc-service gRPC health",
            "GRPC": "isa-nats-grpc:50056",
            "GRPCUseTLS": False,
            "Interval": "10s",
            "Timeout": "5s",
            "DeregisterCriticalServiceAfter": "60s",
        },
    }
    tls = service_definition(
        Settings(
            service_hostname="h",
            consul_service_address="10.0.0.7",
            auth_mode=AuthMode.TOKEN,
        ),
        7000,
        tls=True,
    )
    assert tls["Address"] == "10.0.0.7" and tls["Check"]["GRPC"] == "10.0.0.7:7000"
    assert tls["Check"]["GRPCUseTLS"] is True and tls["Meta"]["tls"] == "true"


async def test_register_reregister_when_forgotten_and_deregister(
    make_gateway: GatewayFactory,
) -> None:
    consul = FakeConsul()
    await consul.start()
    try:
        gw = await make_gateway(
            consul_enabled=True,
            consul_host="127.0.0.1",
            consul_port=consul.port,
            consul_sync_interval=0.1,
            service_hostname="gw-consul-1",
        )
        await wait_for(lambda: "nats-service-gw-consul-1" in consul.services)
        registered = consul.services["nats-service-gw-consul-1"]
        assert registered["Name"] == "nats-grpc-service"
        assert registered["Port"] == gw.port and registered["Address"] == "127.0.0.1"
        assert registered["Tags"] == ["grpc", "nats", "messaging", "eventbus"]
        assert registered["Check"]["GRPC"] == f"127.0.0.1:{gw.port}"
        assert registered["Check"]["Interval"] == "10s"
        assert "DeregisterCriticalServiceAfter" in registered["Check"]

        # The address Consul's check probes really answers gRPC health.
        from grpclib.health.v1.health_grpc import HealthStub
        from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

        channel = Channel("127.0.0.1", gw.port)
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=""))
        channel.close()
        assert reply.status == HealthCheckResponse.SERVING

        # The agent forgets the service (restart, critical deregistration): natsgw registers again.
        del consul.services["nats-service-gw-consul-1"]
        await wait_for(lambda: "nats-service-gw-consul-1" in consul.services)
        assert len(consul.registrations) == 2

        await gw.stop()
        assert consul.deregistrations == ["nats-service-gw-consul-1"]
        assert consul.services == {}
    finally:
        await consul.stop()


async def test_consul_down_at_start_keeps_serving_and_registers_later(
    make_gateway: GatewayFactory,
) -> None:
    port = free_port()
    gw = await make_gateway(
        consul_enabled=True,
        consul_host="127.0.0.1",
        consul_port=port,
        consul_sync_interval=0.1,
        service_hostname="gw-consul-late",
    )
    # Serving while Consul is unreachable:
    channel = Channel("127.0.0.1", gw.port)
    health = await pb.NatsServiceStub(channel).health_check(pb.NatsHealthCheckRequest())
    channel.close()
    assert health.healthy
    assert gw.consul is not None and not gw.consul.registered
    consul = FakeConsul()
    await consul.start(port)
    try:
        await wait_for(lambda: "nats-service-gw-consul-late" in consul.services, timeout=10)
        # The agent records the service before the gateway has read the agent's answer.
        await wait_for(lambda: gw.consul is not None and gw.consul.registered, timeout=5)
    finally:
        await gw.stop()
        await consul.stop()
