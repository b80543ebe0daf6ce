"""Issue 12.3: opt-in batched delivery (max_batch) for Subscribe and QueueSubscribe."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from tests.conftest import GatewayFactory, tenant
from tests.integration.test_messaging import open_subscription


async def _flood_then_read(
    stub: pb.NatsServiceStub,
    request: pb.SubscribeRequest | pb.QueueSubscribeRequest,
    count: int,
    per_call: int = 1000,
) -> list[pb.MessageResponse]:
    responses = []
    async with open_subscription(stub, request) as s:
        for start in range(0, count, per_call):
            end = min(start + per_call, count)
            await stub.publish_batch(
                pb.PublishBatchRequest(
                    user_id=request.user_id,
                    messages=[
                        pb.NatsMessage(subject="b", data=b"%d" % i) for i in range(start, end)
                    ],
                )
            )
        await asyncio.sleep(0.3)  # all of them wait in the gateway before the first read
        seen = 0
        while seen < count:
            response = await asyncio.wait_for(s.recv_message(), 5)
            responses.append(response)
            seen += 1 + len(response.batch)
    return responses


@pytest.mark.parametrize("queue", [False, True])
async def test_max_batch_carries_waiting_messages_in_one_response(
    stub: pb.NatsServiceStub, queue: bool
) -> None:
    user = tenant()
    request = (
        pb.QueueSubscribeRequest(user_id=user, subject="b", queue_group="g", max_batch=50)
        if queue
        else pb.SubscribeRequest(user_id=user, subject="b", max_batch=50)
    )
    responses = await _flood_then_read(stub, request, 300)
    messages = [m for r in responses for m in (r, *r.batch)]
    assert [m.data for m in messages] == [b"%d" % i for i in range(300)]
    assert [m.sequence for m in messages] == list(range(1, 301))
    assert all(m.subject == "b" and m.timestamp is not None for m in messages)
    assert all(len(r.batch) <= 49 for r in responses)
    assert len(responses) < 300 // 10  # batched indeed


async def test_without_max_batch_every_response_is_one_message(stub: pb.NatsServiceStub) -> None:
    responses = await _flood_then_read(
        stub, pb.SubscribeRequest(user_id=tenant(), subject="b"), 100
    )
    assert len(responses) == 100 and all(not r.batch for r in responses)
    assert [r.sequence for r in responses] == list(range(1, 101))


async def test_negative_max_batch_is_invalid_argument(stub: pb.NatsServiceStub) -> None:
    with pytest.raises(GRPCError) as info:
        async for _ in stub.subscribe(
            pb.SubscribeRequest(user_id=tenant(), subject="b", max_batch=-1)
        ):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "max_batch" in (info.value.message or "")


async def test_max_batch_above_the_gateway_limit_is_capped_to_it(
    make_gateway: GatewayFactory,
) -> None:
    """A preference, not a bound: a client's default keeps working on a gateway set lower."""
    gw = await make_gateway(max_batch_messages=20)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        request = pb.SubscribeRequest(user_id=tenant(), subject="b", max_batch=100)
        responses = await _flood_then_read(stub, request, 200, per_call=20)
    finally:
        channel.close()
    messages = [m for r in responses for m in (r, *r.batch)]
    assert [m.sequence for m in messages] == list(range(1, 201))
    assert max(1 + len(r.batch) for r in responses) == 20


async def test_a_reader_that_keeps_up_loses_nothing_to_a_burst_of_full_batches(
    make_gateway: GatewayFactory,
) -> None:
    """Issue 12.3: four PublishBatch calls of 1000 in flight at once (the bench's feed) reach a
    subscriber reading one message per response, none dropped, under the default buffer."""
    gw = await make_gateway()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    batch = pb.PublishBatchRequest(
        user_id=user, messages=[pb.NatsMessage(subject="burst", data=b"x" * 128)] * 1000
    )
    received: list[pb.MessageResponse] = []
    try:
        async with open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="burst")) as s:

            async def read() -> None:
                while len(received) < 4000:  # or nothing more came for 2 s (some were dropped)
                    try:
                        received.append(await asyncio.wait_for(s.recv_message(), 2))
                    except TimeoutError:
                        return

            reader = asyncio.create_task(read())
            await asyncio.gather(*(stub.publish_batch(batch) for _ in range(4)))
            await asyncio.wait_for(reader, 30)
    finally:
        channel.close()
    assert max(r.dropped for r in received) == 0, f"{len(received)} of 4000 arrived"
    assert [r.sequence for r in received] == list(range(1, 4001))
