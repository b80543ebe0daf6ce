"""GetStatistics shows a tenant its own traffic only: a busy neighbour does not move its numbers."""

from __future__ import annotations

import asyncio

from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, tenant
from tests.integration._jetstream import make_stream, publish

_TRAFFIC = ("in_msgs", "in_bytes", "out_msgs", "out_bytes", "connections")


def _traffic(stats: pb.GetStatisticsResponse) -> dict[str, int]:
    return {name: getattr(stats, name) for name in _TRAFFIC}


async def _busy(stub: pb.NatsServiceStub, user: str, messages: int) -> int:
    """Publish ``messages`` core messages to a subscription of its own, a stream, a batch;
    returns how many the subscription received."""
    replies = aiter(stub.subscribe(pb.SubscribeRequest(user_id=user, subject="busy.>")))
    first = asyncio.ensure_future(anext(replies))
    while not first.done():  # the subscription exists once a message comes back
        await stub.publish(pb.PublishRequest(user_id=user, subject="busy.warm", data=b"w"))
        await asyncio.wait([first], timeout=0.05)
    await first
    for i in range(messages):
        await stub.publish(pb.PublishRequest(user_id=user, subject=f"busy.{i}", data=b"b" * 100))
    received = 1
    async for _ in replies:  # every message comes back before the stream is closed
        received += 1
        if received > messages:
            break
    await replies.aclose()  # type: ignore[attr-defined]
    await make_stream(stub, user, "busy", ["busy-stream"])
    await publish(stub, user, "busy", "busy-stream", b"s" * 1000)
    batch = [pb.NatsMessage(subject="busy.batch", data=b"x" * 10) for _ in range(20)]
    await stub.publish_batch(pb.PublishBatchRequest(user_id=user, messages=batch))
    return received


async def test_a_busy_tenant_does_not_move_a_quiet_ones_numbers(gateway: Gateway) -> None:
    quiet, busy = tenant("quiet"), tenant("busy")
    channel = Channel("127.0.0.1", gateway.port)
    stub = pb.NatsServiceStub(channel)
    try:
        await stub.publish(pb.PublishRequest(user_id=quiet, subject="q", data=b"abc"))
        before = _traffic(await stub.get_statistics(pb.GetStatisticsRequest(user_id=quiet)))
        received = await _busy(stub, busy, 200)
        after = _traffic(await stub.get_statistics(pb.GetStatisticsRequest(user_id=quiet)))
        mine = _traffic(await stub.get_statistics(pb.GetStatisticsRequest(user_id=busy)))
    finally:
        channel.close()
    print(f"quiet tenant before {before} after the busy one's traffic {after}; busy {mine}")
    assert before == after
    assert before == {"in_msgs": 1, "in_bytes": 3, "out_msgs": 0, "out_bytes": 0, "connections": 0}
    # The busy tenant sees what it did: its publishes (warm-up ones too), stream and batch.
    assert mine["in_msgs"] >= 200 + 1 + 20 + 1
    assert mine["in_bytes"] >= 200 * 100 + 1000 + 20 * 10
    assert mine["out_msgs"] >= received  # one response per message (not batched)
    assert mine["out_bytes"] > 200 * 100
    assert mine["connections"] == 0  # its subscription is closed


async def test_open_streams_count_as_the_tenants_connections(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    user = tenant()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        replies = aiter(stub.subscribe(pb.SubscribeRequest(user_id=user, subject="open")))
        first = asyncio.ensure_future(anext(replies))
        while not first.done():
            await stub.publish(pb.PublishRequest(user_id=user, subject="open", data=b"o"))
            await asyncio.wait([first], timeout=0.05)
        stats = await stub.get_statistics(pb.GetStatisticsRequest(user_id=user))
        assert stats.connections == 1
        await replies.aclose()  # type: ignore[attr-defined]
    finally:
        channel.close()
