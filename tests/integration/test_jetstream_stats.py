"""GetStatistics and GetStreamStats against what NATS reports."""

from __future__ import annotations

import asyncio

import nats
from grpclib.client import Channel
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from tests.conftest import GatewayFactory, tenant
from tests.integration._jetstream import make_consumer, make_stream, ns_of, publish, status_of


async def test_get_statistics_sums_the_callers_own(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "one", ["one"])
    await make_stream(stub, user, "two", ["two.*"])
    await make_consumer(stub, user, "one", "a")
    await make_consumer(stub, user, "two", "b")
    await make_consumer(stub, user, "two", "c")
    for i in range(5):
        await publish(stub, user, "one", "one", b"x" * i)
    for i in range(7):
        await publish(stub, user, "two", f"two.{i}", b"y" * 20)
    await make_stream(stub, tenant(), "noise", ["noise"])  # another tenant: not counted
    await nc.jetstream().create_key_value(bucket=ns_of(user).kv_bucket("kv"))  # not a stream

    stats = await stub.get_statistics(pb.GetStatisticsRequest(user_id=user))
    js = nc.jetstream()
    infos = [await js.stream_info(ns_of(user).stream(n)) for n in ("one", "two")]
    assert stats.total_streams == 2
    assert stats.total_consumers == 3
    assert stats.total_messages == 12
    assert stats.total_bytes == sum(i.state.bytes for i in infos)
    # The caller's own traffic through the gateway (never the server's, which is everyone's):
    # 12 published messages and their payloads; nothing streamed to it, no stream open.
    assert (stats.in_msgs, stats.in_bytes) == (12, sum(range(5)) + 7 * 20)
    assert (stats.out_msgs, stats.out_bytes, stats.connections) == (0, 0, 0)


async def test_stream_stats_rates_over_the_window(
    nc: nats.NATS, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(stream_stats_window=1.5)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        user = tenant()
        await make_stream(stub, user, "rated", ["r"])
        await make_consumer(stub, user, "rated", "c")
        await asyncio.gather(*(publish(stub, user, "rated", "r", b"z" * 50) for _ in range(12)))
        stats = await stub.get_stream_stats(
            pb.GetStreamStatsRequest(user_id=user, stream_name="rated")
        )
        info = await nc.jetstream().stream_info(ns_of(user).stream("rated"))
        assert stats.stream_name == "rated"
        assert (stats.messages, stats.bytes) == (12, info.state.bytes)
        assert stats.consumer_count == 1
        assert stats.message_rate == 12 / 1.5
        assert abs(stats.byte_rate - (12 / 1.5) * info.state.bytes / 12) < 1e-6
        await asyncio.sleep(1.7)
        await publish(stub, user, "rated", "r", b"z" * 50)
        later = await stub.get_stream_stats(
            pb.GetStreamStatsRequest(user_id=user, stream_name="rated")
        )
        assert later.messages == 13
        assert later.message_rate == 1 / 1.5  # only the newest one is inside the window
        await asyncio.sleep(1.7)
        idle = await stub.get_stream_stats(
            pb.GetStreamStatsRequest(user_id=user, stream_name="rated")
        )
        assert (idle.messages, idle.message_rate, idle.byte_rate) == (13, 0.0, 0.0)
        missing = pb.GetStreamStatsRequest(user_id=user, stream_name="nope")
        assert await status_of(stub.get_stream_stats(missing)) == Status.NOT_FOUND
    finally:
        channel.close()
