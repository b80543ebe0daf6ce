"""The call pipeline (natsgw.pipeline.chain) seen from a client: what every call goes through.

- a stream the client cancels, resets or abandons releases its NATS subscription (the pipeline
  owns the handler's generator and closes it), counted by nats-server's own monitoring endpoint;
- the caller is authenticated exactly once per call, quotas included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import Metadata, Principal, Scope
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import gateway_settings, tenant, wait_for

GatewayFactory = Callable[..., Awaitable[Gateway]]


async def gateway_subscriptions(server: EmbeddedNatsServer, name: str) -> int:
    """Subscriptions nats-server holds for the gateway's connection (by connection name)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.monitor_url}/connz", params={"subs": "1", "limit": "1024"}) as resp,
    ):
        connz: dict[str, Any] = await resp.json()
    counts = [int(c.get("subscriptions", 0)) for c in connz["connections"] if c.get("name") == name]
    assert len(counts) == 1, f"expected one connection named {name!r}, got {counts}"
    return counts[0]


async def subscribe_and_block(gw: Gateway, nc: nats.NATS, user: str) -> tuple[Channel, Any, Any]:
    """Open a Subscribe, then fill the stream's HTTP/2 window so the gateway blocks in its send."""
    channel = Channel("127.0.0.1", gw.port)
    cm = channel.request(
        "/isa.nats.NATSService/Subscribe",
        Cardinality.UNARY_STREAM,
        pb.SubscribeRequest,
        pb.MessageResponse,
    )
    stream = await cm.__aenter__()
    await stream.send_message(pb.SubscribeRequest(user_id=user, subject="load.>"), end=True)
    await stream.recv_initial_metadata()  # the subscription is in place
    subject = Namespace(Tenant.user(user)).subject("load.x")
    for _ in range(64):  # 4 MiB: far beyond the stream's flow-control window; nobody reads
        await nc.publish(subject, b"x" * 65536)
    await nc.flush()
    await asyncio.sleep(0.3)
    return channel, cm, stream


async def test_cancelled_subscribe_releases_its_nats_subscription(
    make_gateway: GatewayFactory, nats_server: EmbeddedNatsServer, nc: nats.NATS
) -> None:
    gw = await make_gateway(service_hostname="pipeline-cancel")
    name = "natsgw:pipeline-cancel:deliveries"  # subscriptions live on the delivery connection
    baseline = await gateway_subscriptions(nats_server, name)
    channel, cm, stream = await subscribe_and_block(gw, nc, tenant())
    try:
        assert await gateway_subscriptions(nats_server, name) == baseline + 1
        assert gw.subscriptions.active == 1
        await stream.cancel()  # RST_STREAM while the gateway waits to send
        await wait_for(lambda: gw.subscriptions.active == 0)
        for _ in range(50):
            if await gateway_subscriptions(nats_server, name) == baseline:
                break
            await asyncio.sleep(0.1)
        assert await gateway_subscriptions(nats_server, name) == baseline
        assert gw.in_flight.count == 0
    finally:
        await cm.__aexit__(None, None, None)
        channel.close()


async def test_abandoned_subscribe_releases_its_nats_subscription(
    make_gateway: GatewayFactory, nats_server: EmbeddedNatsServer, nc: nats.NATS
) -> None:
    gw = await make_gateway(service_hostname="pipeline-abandon")
    name = "natsgw:pipeline-abandon:deliveries"  # subscriptions live on the delivery connection
    baseline = await gateway_subscriptions(nats_server, name)
    channel, _cm, _stream = await subscribe_and_block(gw, nc, tenant())
    assert await gateway_subscriptions(nats_server, name) == baseline + 1
    channel.close()  # the client goes away without a word (connection closed)
    await wait_for(lambda: gw.subscriptions.active == 0)
    for _ in range(50):
        if await gateway_subscriptions(nats_server, name) == baseline:
            break
        await asyncio.sleep(0.1)
    assert await gateway_subscriptions(nats_server, name) == baseline
    await wait_for(lambda: gw.in_flight.count == 0)


class CountingAuthenticator:
    """Trusts user_id, and counts how often the pipeline asks."""

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        self.calls += 1
        return Principal(user_id=user_id, tenant=Tenant.user(user_id), authenticated_as=user_id)


async def test_every_call_is_authenticated_exactly_once(nats_server: EmbeddedNatsServer) -> None:
    auth = CountingAuthenticator()
    # Quotas on: they used to authenticate a second time on their own.
    settings = gateway_settings(nats_server, quota_streams=5, quota_kv_buckets=5)
    gw = Gateway(settings, authenticator=auth)
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    try:
        await stub.publish(pb.PublishRequest(user_id=user, subject="a"))
        assert auth.calls == 1
        await stub.create_stream(
            pb.CreateStreamRequest(user_id=user, config=pb.StreamConfig(name="s", subjects=["s"]))
        )
        assert auth.calls == 2
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key="k", value=b"v"))
        assert auth.calls == 3

        async def chunks() -> Any:
            yield pb.ObjectPutStreamRequest(
                header=pb.ObjectPutHeader(user_id=user, bucket="o", object_name="n"), chunk=b"1"
            )
            yield pb.ObjectPutStreamRequest(chunk=b"2")

        async with channel.request(
            "/isa.nats.NATSService/ObjectPutStream",
            Cardinality.STREAM_UNARY,
            pb.ObjectPutStreamRequest,
            pb.ObjectPutResponse,
        ) as put:
            async for message in chunks():
                await put.send_message(message)
            await put.end()
            assert (await put.recv_message()) is not None
        assert auth.calls == 4
        await stub.health_check(pb.NatsHealthCheckRequest())  # public: no identity asked for
        assert auth.calls == 4
    finally:
        channel.close()
        await gw.stop()


async def test_a_streamed_put_without_its_header_is_refused_before_identity(
    gateway: Gateway,
) -> None:
    """The pipeline needs the header's ids to authenticate: no header (or no message) is
    INVALID_ARGUMENT naming it, and nothing is asked of the authenticator."""
    channel = Channel("127.0.0.1", gateway.port)
    try:
        for messages in ([], [pb.ObjectPutStreamRequest(chunk=b"x")]):
            with pytest.raises(GRPCError) as info:
                async with channel.request(
                    "/isa.nats.NATSService/ObjectPutStream",
                    Cardinality.STREAM_UNARY,
                    pb.ObjectPutStreamRequest,
                    pb.ObjectPutResponse,
                ) as put:
                    await put.send_request()
                    for message in messages:
                        await put.send_message(message)
                    await put.end()
                    await put.recv_message()
            assert info.value.status is Status.INVALID_ARGUMENT
            assert (info.value.message or "").startswith("header:"), info.value.message
    finally:
        channel.close()
