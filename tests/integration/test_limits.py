"""Size limits and slow subscribers: refused clearly, never truncated, memory bounded."""

from __future__ import annotations

import asyncio

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import SlowConsumerPolicy
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, NatsFactory, settled, tenant
from tests.integration.test_messaging import open_subscription

KIB = 1024


async def test_payload_over_nats_max_payload_is_refused_naming_both_limits(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    server = await make_nats(max_payload=64 * KIB)
    gw = await make_gateway(server, max_message_size=1024 * KIB)
    user = tenant()
    nc = await nats.connect(server.url)
    sub = await nc.subscribe(Namespace(Tenant.user(user)).subject("big"))
    await settled(nc)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        exact = b"x" * (64 * KIB)
        assert (
            await stub.publish(pb.PublishRequest(user_id=user, subject="big", data=exact))
        ).success
        assert (await sub.next_msg(timeout=2)).data == exact
        with pytest.raises(GRPCError) as info:
            await stub.publish(pb.PublishRequest(user_id=user, subject="big", data=exact + b"!"))
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert "65537 bytes" in (info.value.message or "")
        assert "max_payload is 65536" in (info.value.message or "")
        assert str(1024 * KIB) in (info.value.message or "")
        # Headers count too: a payload that only fits without them is refused whole.
        with pytest.raises(GRPCError):
            await stub.publish(
                pb.PublishRequest(user_id=user, subject="big", data=exact, headers={"k": "v"})
            )
        # Nothing of the refused messages reached NATS.
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)
    finally:
        channel.close()
        await nc.close()


async def test_request_message_over_the_gateway_limit_is_resource_exhausted(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(max_message_size=32 * KIB)
    channel = Channel("127.0.0.1", gw.port)
    try:
        with pytest.raises(GRPCError) as info:
            await pb.NatsServiceStub(channel).publish(
                # over 32 KiB of payload plus the 64 KiB envelope allowance
                pb.PublishRequest(user_id=tenant(), subject="x", data=b"y" * (100 * KIB))
            )
    finally:
        channel.close()
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert "NATSGW_MAX_MESSAGE_SIZE" in (info.value.message or "")


async def test_payload_of_exactly_max_payload_goes_through_intact(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    payload = bytes(range(256)) * (10 * 4096)  # exactly the default max_payload, 10 MiB
    sub = await nc.subscribe(Namespace(Tenant.user(user)).subject("huge"))
    await settled(nc)
    await stub.publish(pb.PublishRequest(user_id=user, subject="huge", data=payload))
    assert (await sub.next_msg(timeout=5)).data == payload


async def test_slow_subscriber_is_closed_with_resource_exhausted(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    gw = await make_gateway(
        subscription_buffer_msgs=4,
        subscription_buffer_bytes=256 * KIB,
        max_message_size=256 * KIB,
        slow_consumer_policy=SlowConsumerPolicy.CLOSE,  # no longer the default
    )
    user = tenant()
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        async with open_subscription(
            stub, pb.SubscribeRequest(user_id=user, subject="firehose")
        ) as s:
            chunk = b"z" * (32 * KIB)
            for _ in range(400):  # ~12.5 MiB: far more than HTTP/2 windows plus the buffer
                await nc.publish(Namespace(Tenant.user(user)).subject("firehose"), chunk)
            await settled(nc)
            await asyncio.sleep(0.5)
            received = 0
            with pytest.raises(GRPCError) as info:
                while await asyncio.wait_for(s.recv_message(), 5) is not None:
                    received += 1
                await s.recv_trailing_metadata()
            assert info.value.status is Status.RESOURCE_EXHAUSTED
            assert "fell behind" in (info.value.message or "")
            assert 0 < received < 400
    finally:
        channel.close()


async def test_slow_subscriber_keeps_its_stream_and_sees_gaps_and_count_by_default(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    """Issue 12.4: NATS's convention is the default — keep the stream, drop, report."""
    gw = await make_gateway(
        subscription_buffer_msgs=4, subscription_buffer_bytes=256 * KIB, max_message_size=256 * KIB
    )
    user = tenant()
    subject = Namespace(Tenant.user(user)).subject("firehose")
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        async with open_subscription(
            stub, pb.SubscribeRequest(user_id=user, subject="firehose")
        ) as s:
            for _ in range(400):
                await nc.publish(subject, b"z" * (32 * KIB))
            await settled(nc)
            await asyncio.sleep(0.5)
            sequences = []
            with pytest.raises(asyncio.TimeoutError):
                while True:  # read everything that survived, until nothing more comes
                    sequences.append((await asyncio.wait_for(s.recv_message(), 1)).sequence)
            await nc.publish(subject, b"last")
            last = await asyncio.wait_for(s.recv_message(), 5)
    finally:
        channel.close()
    assert (last.data, last.sequence) == (b"last", 401)  # the stream lives on; drops counted
    assert 0 < len(sequences) < 400  # some were dropped ...
    assert sequences == sorted(sequences)
    assert sequences[-1] - sequences[0] + 1 > len(sequences)  # ... and the gaps show it
    assert last.dropped == 401 - (len(sequences) + 1)  # ... and so does the count


async def test_largest_accepted_message_reaches_a_reading_subscriber(
    gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """Issue 9.5: a 9 MiB publish under the default 10 MiB limit is delivered, stream kept."""
    user = tenant()
    big = bytes(range(256)) * (9 * 4096)  # 9 MiB
    # The subscriber has a connection of its own: a grpclib client grants HTTP/2 window only as
    # it reads, so a 9 MiB delivery would hold up the publish reply on a shared connection.
    channel = Channel("127.0.0.1", gateway.port)
    try:
        reader = pb.NatsServiceStub(channel)
        async with open_subscription(reader, pb.SubscribeRequest(user_id=user, subject="big")) as s:
            for _ in range(2):
                await stub.publish(pb.PublishRequest(user_id=user, subject="big", data=big))
                got = await asyncio.wait_for(s.recv_message(), 10)
                assert got is not None and got.data == big
            await stub.publish(pb.PublishRequest(user_id=user, subject="big", data=b"after"))
            assert (await asyncio.wait_for(s.recv_message(), 5)).data == b"after"
    finally:
        channel.close()
