"""Existing grpcio clients (sync and grpc.aio), with stubs generated from api/, work unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from natsgw.wire import compression
from tests.conftest import settled, tenant, wait_for

Stubs = tuple[ModuleType, ModuleType]


@pytest.fixture
def sync_stub(gateway: Gateway, grpcio_stubs: Stubs) -> Any:
    _pb2, pb2_grpc = grpcio_stubs
    channel = grpc.insecure_channel(
        f"127.0.0.1:{gateway.port}",
        options=[
            ("grpc.max_receive_message_length", 100 * 1024 * 1024),
            ("grpc.max_send_message_length", 100 * 1024 * 1024),
        ],
    )
    yield pb2_grpc.NATSServiceStub(channel)
    channel.close()


@pytest_asyncio.fixture
async def aio_stub(gateway: Gateway, grpcio_stubs: Stubs) -> AsyncIterator[Any]:
    _, pb2_grpc = grpcio_stubs
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb2_grpc.NATSServiceStub(channel)


def mapped(user: str, subject: str) -> str:
    return Namespace(Tenant.user(user)).subject(subject)


async def test_sync_client_publish_batch_request_health(
    sync_stub: Any, grpcio_stubs: Stubs, nc: nats.NATS
) -> None:
    pb2, _ = grpcio_stubs
    user = tenant()
    sub = await nc.subscribe(mapped(user, "sync.a"))
    await settled(nc)

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data.upper())

    await nc.subscribe(mapped(user, "sync.svc"), cb=respond)
    await settled(nc)

    published = await asyncio.to_thread(
        sync_stub.Publish,
        pb2.PublishRequest(user_id=user, subject="sync.a", data=b"1", headers={"h": "v"}),
    )
    assert published.success
    message = await sub.next_msg(timeout=2)
    assert (message.data, message.headers) == (b"1", {"h": "v"})

    batch = await asyncio.to_thread(
        sync_stub.PublishBatch,
        pb2.PublishBatchRequest(
            user_id=user,
            messages=[pb2.NATSMessage(subject="sync.a", data=b"2"), pb2.NATSMessage(subject="")],
        ),
    )
    assert (batch.success, batch.published_count, len(batch.errors)) == (False, 1, 1)

    reply = await asyncio.to_thread(
        sync_stub.Request, pb2.RequestRequest(user_id=user, subject="sync.svc", data=b"abc")
    )
    assert (reply.success, reply.data) == (True, b"ABC")

    health = await asyncio.to_thread(
        sync_stub.HealthCheck, pb2.NATSHealthCheckRequest(deep_check=True)
    )
    assert health.healthy and health.nats_status == "CONNECTED"


async def test_sync_client_errors_carry_status_and_message(
    sync_stub: Any, grpcio_stubs: Stubs
) -> None:
    pb2, _ = grpcio_stubs
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(sync_stub.Publish, pb2.PublishRequest(subject="x"))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "user_id" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(
            sync_stub.Publish, pb2.PublishRequest(user_id=tenant(), subject="a.>")
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_sync_client_subscribe_unsubscribe_and_queue(
    sync_stub: Any, grpcio_stubs: Stubs, nc: nats.NATS
) -> None:
    pb2, _ = grpcio_stubs
    user = tenant()
    call = sync_stub.Subscribe(pb2.SubscribeRequest(user_id=user, subject="feed.*"))
    queue_call = sync_stub.QueueSubscribe(
        pb2.QueueSubscribeRequest(user_id=user, subject="feed.*", queue_group="g")
    )
    await asyncio.to_thread(call.initial_metadata)  # headers: the subscription is live
    await asyncio.to_thread(queue_call.initial_metadata)
    await nc.publish(mapped(user, "feed.one"), b"hello", headers={"k": "v"})
    message = await asyncio.to_thread(next, call, None)
    assert (message.subject, message.data, dict(message.headers)) == (
        "feed.one",
        b"hello",
        {"k": "v"},
    )
    assert message.sequence == 1 and message.timestamp.seconds > 0
    assert (await asyncio.to_thread(next, queue_call, None)).subject == "feed.one"

    done = await asyncio.to_thread(
        sync_stub.Unsubscribe, pb2.UnsubscribeRequest(user_id=user, subject="feed.*")
    )
    assert done.success
    assert await asyncio.to_thread(next, call, None) is None  # the stream completed
    assert call.code() is grpc.StatusCode.OK
    queue_call.cancel()


async def test_aio_client_round_trip(aio_stub: Any, grpcio_stubs: Stubs) -> None:
    pb2, _ = grpcio_stubs
    user = tenant()
    call = aio_stub.Subscribe(pb2.SubscribeRequest(user_id=user, subject="aio.>"))
    await call.initial_metadata()
    published = await aio_stub.Publish(pb2.PublishRequest(user_id=user, subject="aio.x", data=b"1"))
    assert published.success
    message = await call.read()
    assert (message.subject, message.data) == ("aio.x", b"1")
    call.cancel()
    health = await aio_stub.HealthCheck(pb2.NATSHealthCheckRequest())
    assert health.healthy


async def test_gzip_compressed_requests_are_accepted(
    sync_stub: Any, aio_stub: Any, grpcio_stubs: Stubs, nc: nats.NATS
) -> None:
    pb2, _ = grpcio_stubs
    user = tenant()
    sub = await nc.subscribe(mapped(user, "zipped"))
    await settled(nc)
    # grpc sends a frame uncompressed when gzip would not make it smaller: use compressible data.
    payload = b"compressible " * 50_000  # 650 kB, gzips to a few kB
    before = compression.inflated_frames
    response = await asyncio.to_thread(
        sync_stub.Publish,
        pb2.PublishRequest(user_id=user, subject="zipped", data=payload),
        compression=grpc.Compression.Gzip,
    )
    assert response.success
    assert (await sub.next_msg(timeout=2)).data == payload
    response = await aio_stub.Publish(
        pb2.PublishRequest(user_id=user, subject="zipped", data=b"aio" * 1000),
        compression=grpc.Compression.Gzip,
    )
    assert response.success
    assert (await sub.next_msg(timeout=2)).data == b"aio" * 1000
    await wait_for(lambda: compression.inflated_frames >= before + 2)


async def test_gateway_advertises_the_encodings_it_accepts(gateway: Gateway) -> None:
    """Raw HTTP/2: the response headers carry grpc-accept-encoding (clients strip it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/isa.nats.NATSService/HealthCheck"),
            (":authority", f"127.0.0.1:{gateway.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    conn.send_data(stream_id, b"\x00\x00\x00\x00\x00", end_stream=True)  # empty request message
    writer.write(conn.data_to_send())
    headers: dict[str, str] = {}
    try:
        while not headers:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "connection closed before response headers"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert headers[":status"] == "200"
    assert "gzip" in headers["grpc-accept-encoding"].split(",")


@pytest.mark.parametrize("max_batch", [0, 64])
async def test_aio_client_reads_coalesced_and_batched_deliveries(
    aio_stub: Any, grpcio_stubs: Stubs, max_batch: int
) -> None:
    """Issue 12.3: the gateway's raw, coalesced frames and opt-in batches decode in grpcio."""
    pb2, _ = grpcio_stubs
    user = tenant()
    call = aio_stub.Subscribe(pb2.SubscribeRequest(user_id=user, subject="co", max_batch=max_batch))
    await call.initial_metadata()
    await aio_stub.PublishBatch(
        pb2.PublishBatchRequest(
            user_id=user,
            messages=[pb2.NATSMessage(subject="co", data=b"%d" % i) for i in range(500)],
        )
    )
    messages: list[Any] = []
    responses = 0
    while len(messages) < 500:
        response = await asyncio.wait_for(call.read(), 5)
        responses += 1
        messages += [response, *response.batch]
    call.cancel()
    assert [m.data for m in messages] == [b"%d" % i for i in range(500)]
    assert [m.sequence for m in messages] == list(range(1, 501))
    assert all(m.dropped == 0 and m.subject == "co" for m in messages)
    assert all(m.timestamp.seconds > 0 for m in messages)
    if max_batch:
        assert responses < 500 // 8
    else:
        assert responses == 500
