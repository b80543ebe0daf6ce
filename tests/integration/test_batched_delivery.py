"""Issue 12.3: opt-in batched delivery (max_batch) for Subscribe and QueueSubscribe."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration.test_messaging import open_subscription


async def _flood_then_read(
    stub: pb.NatsServiceStub, request: pb.SubscribeRequest | pb.QueueSubscribeRequest, count: int
) -> list[pb.MessageResponse]:
    responses = []
    async with open_subscription(stub, request) as s:
        await stub.publish_batch(
            pb.PublishBatchRequest(
                user_id=request.user_id,
                messages=[pb.NatsMessage(subject="b", data=b"%d" % i) for i in range(count)],
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


@pytest.mark.parametrize("max_batch", [-1, 1001])
async def test_max_batch_out_of_range_is_invalid_argument(
    stub: pb.NatsServiceStub, max_batch: int
) -> None:
    with pytest.raises(GRPCError) as info:
        async for _ in stub.subscribe(
            pb.SubscribeRequest(user_id=tenant(), subject="b", max_batch=max_batch)
        ):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "max_batch" in (info.value.message or "")
