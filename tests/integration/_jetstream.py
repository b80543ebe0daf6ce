"""Helpers shared by the JetStream integration tests."""

from __future__ import annotations

import datetime
from typing import Any

from natsgw._generated.isa import nats as pb
from natsgw.tenancy import Namespace, Tenant


def ns_of(user: str) -> Namespace:
    return Namespace(Tenant.user(user))


async def make_stream(
    stub: pb.NatsServiceStub, user: str, name: str, subjects: list[str], **config: Any
) -> pb.StreamInfo:
    response = await stub.create_stream(
        pb.CreateStreamRequest(
            user_id=user, config=pb.StreamConfig(name=name, subjects=subjects, **config)
        )
    )
    assert response.success
    assert response.stream is not None
    return response.stream


async def make_consumer(
    stub: pb.NatsServiceStub, user: str, stream: str, name: str, **config: Any
) -> pb.ConsumerInfo:
    config.setdefault("ack_wait", datetime.timedelta(seconds=30))
    response = await stub.create_consumer(
        pb.CreateConsumerRequest(
            user_id=user,
            stream_name=stream,
            config=pb.ConsumerConfig(durable_name=name, **config),
        )
    )
    assert response.success
    assert response.consumer is not None
    return response.consumer


async def publish(
    stub: pb.NatsServiceStub, user: str, stream: str, subject: str, data: bytes, **kw: Any
) -> pb.PublishToStreamResponse:
    response = await stub.publish_to_stream(
        pb.PublishToStreamRequest(
            user_id=user, stream_name=stream, subject=subject, data=data, **kw
        )
    )
    assert response.success
    return response


async def pull(
    stub: pb.NatsServiceStub,
    user: str,
    stream: str,
    consumer: str,
    batch: int = 10,
    wait: float = 0.5,
) -> list[pb.JetStreamMessage]:
    response = await stub.pull_messages(
        pb.PullMessagesRequest(
            user_id=user,
            stream_name=stream,
            consumer_name=consumer,
            batch_size=batch,
            max_wait=datetime.timedelta(seconds=wait),
        )
    )
    return list(response.messages)


async def status_of(awaitable: Any) -> Any:
    """The gRPC status an RPC failed with (fails the test when it succeeded)."""
    from grpclib.exceptions import GRPCError

    try:
        await awaitable
    except GRPCError as exc:
        return exc.status
    raise AssertionError("the call succeeded but was expected to fail")


async def error_of(awaitable: Any) -> Any:
    from grpclib.exceptions import GRPCError

    try:
        await awaitable
    except GRPCError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")
