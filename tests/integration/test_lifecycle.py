"""Reconnects, NATS outages, graceful shutdown and the standard gRPC side services."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from nats.aio.msg import Msg

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, NatsFactory, settled, tenant, wait_for
from tests.integration.test_messaging import open_subscription


async def test_health_check_reports_real_state(stub: pb.NatsServiceStub) -> None:
    shallow = await stub.health_check(pb.NatsHealthCheckRequest())
    deep = await stub.health_check(pb.NatsHealthCheckRequest(deep_check=True))
    for response in (shallow, deep):
        assert response.healthy
        assert response.nats_status == "CONNECTED"
        assert response.jetstream_enabled
        assert response.connections >= 1
        assert response.checked_at is not None
        assert "nats-server 2." in response.message
    assert "rtt" in deep.message and "rtt" not in shallow.message


async def test_outage_is_unavailable_then_everything_resumes(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    """NATS goes away: calls fail fast with UNAVAILABLE; it comes back: streams carry on."""
    server = await make_nats()
    gw = await make_gateway(server)
    user = tenant()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        async with open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="up.>")) as s:
            await server.stop()
            assert gw.adapter is not None
            await wait_for(lambda: not gw.adapter.connected)  # type: ignore[union-attr]
            with pytest.raises(GRPCError) as info:
                await stub.publish(pb.PublishRequest(user_id=user, subject="up.x", data=b"lost?"))
            assert info.value.status is Status.UNAVAILABLE
            health = await stub.health_check(pb.NatsHealthCheckRequest())
            assert not health.healthy
            assert health.nats_status == "RECONNECTING"

            await server.start()  # same port
            await wait_for(lambda: gw.adapter.connected, timeout=20)  # type: ignore[union-attr]
            # The subscription was re-established by the reconnect: a publish now arrives.
            for _ in range(50):
                await stub.publish(pb.PublishRequest(user_id=user, subject="up.x", data=b"back"))
                with contextlib.suppress(asyncio.TimeoutError):
                    message = await asyncio.wait_for(s.recv_message(), 0.2)
                    break
            assert (message.subject, message.data) == ("up.x", b"back")
    finally:
        channel.close()


async def test_gateway_starts_while_nats_is_down_and_connects_later(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    server = await make_nats()
    port = server.port
    await server.stop()
    gw = await make_gateway(server)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        with pytest.raises(GRPCError) as info:
            await stub.publish(pb.PublishRequest(user_id=tenant(), subject="x"))
        assert info.value.status is Status.UNAVAILABLE
        assert "not connected to NATS yet" in (info.value.message or "")
        await server.start()
        assert server.port == port
        await wait_for(lambda: gw.adapter.connected, timeout=20)  # type: ignore[union-attr]
        assert (await stub.publish(pb.PublishRequest(user_id=tenant(), subject="x"))).success
    finally:
        channel.close()


async def test_graceful_shutdown_finishes_calls_and_ends_streams(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    gw = await make_gateway(shutdown_grace=5.0)
    user = tenant()

    async def slow_responder(msg: Msg) -> None:
        await asyncio.sleep(0.5)
        await msg.respond(b"done")

    await nc.subscribe(Namespace(Tenant.user(user)).subject("svc.slow"), cb=slow_responder)
    await settled(nc)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        async with open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="s")) as s:
            await stub.publish(pb.PublishRequest(user_id=user, subject="s", data=b"before"))
            in_flight = asyncio.create_task(
                stub.request(pb.RequestRequest(user_id=user, subject="svc.slow"))
            )
            await asyncio.sleep(0.1)
            stopping = asyncio.create_task(gw.stop())
            await asyncio.sleep(0.05)
            # New calls are refused while the gateway drains ...
            with pytest.raises(GRPCError) as info:
                await stub.publish(pb.PublishRequest(user_id=user, subject="s"))
            assert info.value.status is Status.UNAVAILABLE
            # ... the call in flight still completes ...
            assert (await asyncio.wait_for(in_flight, 5)).data == b"done"
            # ... and the stream delivers what it had, then ends with OK.
            assert (await asyncio.wait_for(s.recv_message(), 5)).data == b"before"
            assert await asyncio.wait_for(s.recv_message(), 5) is None
            await s.recv_trailing_metadata()
            await asyncio.wait_for(stopping, 10)
    finally:
        channel.close()


async def test_standard_health_and_reflection_services(gateway: Gateway) -> None:
    channel = Channel("127.0.0.1", gateway.port)
    try:
        health = await HealthStub(channel).Check(HealthCheckRequest(service="isa.nats.NATSService"))
        assert health.status == HealthCheckResponse.SERVING
        async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
            await stream.send_message(ServerReflectionRequest(list_services=""))
            reply = await stream.recv_message()
            assert reply is not None
            names = {s.name for s in reply.list_services_response.service}
            await stream.send_message(
                ServerReflectionRequest(file_containing_symbol="isa.nats.NATSService"), end=True
            )
            described = await stream.recv_message()
            assert described is not None
    finally:
        channel.close()
    assert {"isa.nats.NATSService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto
