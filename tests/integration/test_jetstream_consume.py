"""Consume: continuous delivery bounded by a client-set window, heartbeats, NATS restarts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import Settings
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, tenant, wait_for
from tests.integration._jetstream import make_consumer, make_stream, ns_of, publish


class Consumption:
    """A Consume call read in the background; responses are queued for the test."""

    def __init__(self, stub: pb.NatsServiceStub, request: pb.ConsumeRequest) -> None:
        self.queue: asyncio.Queue[pb.ConsumeResponse | BaseException] = asyncio.Queue()
        #: Set when the server ended the stream with OK (a quiet stream looks the same otherwise).
        self.ended = False
        self.task = asyncio.create_task(self._read(stub, request))

    async def _read(self, stub: pb.NatsServiceStub, request: pb.ConsumeRequest) -> None:
        try:
            async for response in stub.consume(request):
                self.queue.put_nowait(response)
        except GRPCError as exc:
            self.queue.put_nowait(exc)
        else:
            self.ended = True

    async def next(self, timeout: float = 5.0) -> pb.ConsumeResponse:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def message(self, timeout: float = 5.0) -> pb.ConsumeResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            response = await self.next(deadline - loop.time())
            if response.message is not None:
                return response

    async def only_heartbeats(self, seconds: float) -> list[pb.ConsumeResponse]:
        """Everything received during ``seconds``; fails if a message arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        seen: list[pb.ConsumeResponse] = []
        while (left := deadline - loop.time()) > 0:
            try:
                response = await self.next(left)
            except TimeoutError:
                break
            assert response.message is None, "a message arrived although the window was full"
            assert response.heartbeat
            seen.append(response)
        return seen

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def consuming(
    stub: pb.NatsServiceStub, user: str, stream: str, consumer: str, **options: object
) -> AsyncIterator[Consumption]:
    options.setdefault("heartbeat", datetime.timedelta(seconds=0.3))
    consumption = Consumption(
        stub,
        pb.ConsumeRequest(
            user_id=user,
            stream_name=stream,
            consumer_name=consumer,
            **options,  # type: ignore[arg-type]
        ),
    )
    try:
        yield consumption
    finally:
        await consumption.close()


async def ack(stub: pb.NatsServiceStub, user: str, response: pb.ConsumeResponse) -> None:
    assert response.message is not None
    await stub.ack_message(pb.AckMessageRequest(user_id=user, ack_token=response.message.ack_token))


async def test_consume_respects_the_message_window(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "win", ["win"])
    await make_consumer(stub, user, "win", "c")
    async with consuming(stub, user, "win", "c", max_messages=3) as consumption:
        for i in range(8):
            await publish(stub, user, "win", "win", f"m{i}".encode())
        got = [await consumption.message() for _ in range(3)]
        assert [r.message.data for r in got if r.message] == [b"m0", b"m1", b"m2"]
        assert got[-1].outstanding_messages == 3
        beats = await consumption.only_heartbeats(1.0)
        assert beats, "heartbeats keep coming while the window is full"
        assert all(b.outstanding_messages == 3 for b in beats)
        await ack(stub, user, got[0])
        fourth = await consumption.message(2.0)
        assert fourth.message is not None
        assert fourth.message.data == b"m3"
        assert fourth.outstanding_messages == 3
        await consumption.only_heartbeats(0.7)
        # Old-style acks by sequence free the window as well.
        for response in (got[1], got[2], fourth):
            assert response.message is not None
            await stub.ack_message(
                pb.AckMessageRequest(
                    user_id=user,
                    stream_name="win",
                    consumer_name="c",
                    sequence=response.message.sequence,
                )
            )
        rest = [await consumption.message(2.0) for _ in range(3)]
        assert [r.message.data for r in rest if r.message] == [b"m4", b"m5", b"m6"]


async def test_consume_respects_the_byte_window(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    ns = ns_of(user)
    await make_stream(stub, user, "bytes", ["bytes"])
    await make_consumer(stub, user, "bytes", "c")
    for i in range(4):
        await publish(stub, user, "bytes", "bytes", bytes([65 + i]) * 100)
    # As NATS counts a delivery: subject + ack subject ($JS.ACK.<stream>.<consumer>.<delivered>
    # .<stream seq>.<consumer seq>.<19-digit ns time>.<pending>) + headers + payload. The stored
    # headers hold the Nats-Expected-Stream the gateway sets (and hides again on delivery).
    ack_subject = f"$JS.ACK.{ns.stream('bytes')}.c.1.1.1.{'9' * 19}.3"
    headers = len(f"NATS/1.0\r\nNats-Expected-Stream: {ns.stream('bytes')}\r\n\r\n")
    size = len(ns.subject("bytes")) + len(ack_subject) + headers + 100
    window = 2 * size + size // 2
    async with consuming(stub, user, "bytes", "c", max_messages=100, max_bytes=window) as c:
        first = await c.message()
        assert first.outstanding_bytes == size
        second = await c.message()
        assert second.outstanding_bytes == 2 * size
        await c.only_heartbeats(1.0)
        await ack(stub, user, first)
        third = await c.message(3.0)
        assert third.message is not None
        assert third.message.data == b"C" * 100
        assert third.outstanding_bytes == 2 * size


async def test_a_message_larger_than_the_byte_window_goes_alone(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "big", ["big"])
    await make_consumer(stub, user, "big", "c")
    await publish(stub, user, "big", "big", b"x" * 500)
    await publish(stub, user, "big", "big", b"y" * 10)
    async with consuming(stub, user, "big", "c", max_bytes=100) as c:
        big = await c.message(3.0)
        assert big.message is not None
        assert len(big.message.data) == 500
        await c.only_heartbeats(0.7)
        await ack(stub, user, big)
        small = await c.message(3.0)
        assert small.message is not None
        assert small.message.data == b"y" * 10


async def test_consume_heartbeats_and_late_messages(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "hb", ["hb.*"])
    await make_consumer(stub, user, "hb", "c")
    async with consuming(
        stub, user, "hb", "c", heartbeat=datetime.timedelta(seconds=0.2)
    ) as consumption:
        beats = await consumption.only_heartbeats(1.1)
        assert 2 <= len(beats) <= 7  # every 0.2 s; loose for loaded machines
        await publish(stub, user, "hb", "hb.late", b"late")
        response = await consumption.message(2.0)
        assert response.message is not None
        assert (response.message.subject, response.message.data) == ("hb.late", b"late")
        assert response.message.ack_token


async def test_ack_none_consumer_flows_without_acks(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "none", ["none"])
    await make_consumer(stub, user, "none", "c", ack_policy=pb.AckPolicy.ACK_NONE)
    for i in range(6):
        await publish(stub, user, "none", "none", str(i).encode())
    async with consuming(stub, user, "none", "c", max_messages=2) as consumption:
        got = [await consumption.message() for _ in range(6)]
        assert [r.message.data for r in got if r.message] == [str(i).encode() for i in range(6)]


async def test_consume_refusals(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "ref", ["ref"])
    cases = [
        (
            pb.ConsumeRequest(user_id=user, stream_name="ref", consumer_name="ghost"),
            Status.NOT_FOUND,
        ),
        (
            pb.ConsumeRequest(user_id=user, stream_name="ref", consumer_name="c", max_messages=-1),
            Status.INVALID_ARGUMENT,
        ),
        (
            pb.ConsumeRequest(
                user_id=user,
                stream_name="ref",
                consumer_name="c",
                heartbeat=datetime.timedelta(milliseconds=1),
            ),
            Status.INVALID_ARGUMENT,
        ),
    ]
    for request, status in cases:
        consumption = Consumption(stub, request)
        try:
            with pytest.raises(GRPCError) as failure:
                await consumption.next()
        finally:
            await consumption.close()
        assert failure.value.status == status


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_consume_carries_on_after_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", port=_free_port())
    await server.start()
    gateway = Gateway(
        Settings(
            nats_urls=(server.url,),
            nats_monitor_url=server.monitor_url,
            grpc_host="127.0.0.1",
            grpc_port=0,
            shutdown_grace=1.0,
        )
    )
    await gateway.start()
    channel = Channel("127.0.0.1", gateway.port)
    stub = pb.NatsServiceStub(channel)
    try:
        user = tenant()
        await make_stream(stub, user, "durable", ["d"])
        await make_consumer(stub, user, "durable", "c")
        async with consuming(
            stub, user, "durable", "c", heartbeat=datetime.timedelta(seconds=0.3)
        ) as consumption:
            await publish(stub, user, "durable", "d", b"before")
            before = await consumption.message()
            await ack(stub, user, before)

            await server.stop()
            # The stream stays open, heartbeating every 0.3s (an ended stream is quiet too).
            beats = await consumption.only_heartbeats(1.0)
            assert len(beats) >= 2, beats
            assert not consumption.ended
            await server.start()
            adapter = gateway.adapter
            assert adapter is not None
            await wait_for(lambda: adapter.connected, timeout=20.0)

            async def publish_when_ready() -> None:
                for _ in range(100):
                    try:
                        await publish(stub, user, "durable", "d", b"after")
                        return
                    except GRPCError as exc:
                        if exc.status != Status.UNAVAILABLE:
                            raise
                        await asyncio.sleep(0.2)
                raise AssertionError("JetStream did not come back")

            await publish_when_ready()
            after = await consumption.message(15.0)
            assert after.message is not None
            assert after.message.data == b"after"
            assert after.message.sequence == 2
            await ack(stub, user, after)
        client = await nats.connect(server.url)
        try:
            info = await client.jetstream().consumer_info(ns_of(user).stream("durable"), "c")
            assert info.ack_floor.stream_seq == 2
        finally:
            await client.close()
    finally:
        channel.close()
        await gateway.stop()
        await server.stop()


async def test_gateway_shutdown_ends_consume_cleanly(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(shutdown_grace=10.0)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        user = tenant()
        await make_stream(stub, user, "shut", ["shut"])
        await make_consumer(stub, user, "shut", "c")
        received: list[pb.ConsumeResponse] = []

        async def read() -> None:
            request = pb.ConsumeRequest(
                user_id=user,
                stream_name="shut",
                consumer_name="c",
                heartbeat=datetime.timedelta(seconds=60),
            )
            async for response in stub.consume(request):
                received.append(response)

        reader = asyncio.create_task(read())
        await publish(stub, user, "shut", "shut", b"x")
        await wait_for(lambda: len(received) == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await gw.stop()
        await asyncio.wait_for(reader, 5.0)  # ended normally (status OK), no exception
        assert loop.time() - started < 5.0  # well inside the 10 s grace: not cut at its end
        assert gw.in_flight.count == 0
    finally:
        channel.close()


async def test_acks_through_another_replica_free_the_window(
    make_gateway: GatewayFactory,
) -> None:
    secret = "replicas-share-this-secret"
    a_gw = await make_gateway(ack_token_secret=secret)
    b_gw = await make_gateway(ack_token_secret=secret)
    a_channel, b_channel = Channel("127.0.0.1", a_gw.port), Channel("127.0.0.1", b_gw.port)
    a, b = pb.NatsServiceStub(a_channel), pb.NatsServiceStub(b_channel)
    try:
        user = tenant()
        await make_stream(a, user, "spread", ["spread"])
        await make_consumer(a, user, "spread", "c")
        for i in range(4):
            await publish(a, user, "spread", "spread", str(i).encode())
        async with consuming(a, user, "spread", "c", max_messages=2) as consumption:
            first, second = await consumption.message(), await consumption.message()
            await consumption.only_heartbeats(0.5)
            for response in (first, second):
                await ack(b, user, response)  # replica B: A's window learns it from NATS
            third = await consumption.message(4.0)
            assert third.message is not None
            assert third.message.data == b"2"
    finally:
        a_channel.close()
        b_channel.close()


async def test_deleting_the_consumer_ends_consume_with_not_found(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "del", ["del"])
    await make_consumer(stub, user, "del", "c")
    async with consuming(stub, user, "del", "c") as consumption:
        await consumption.only_heartbeats(0.4)
        await nc.jetstream().delete_consumer(ns_of(user).stream("del"), "c")
        with pytest.raises(GRPCError) as ended:
            while True:
                await consumption.next(5.0)
        assert ended.value.status == Status.NOT_FOUND


async def test_consume_max_batch_carries_waiting_messages_together(
    stub: pb.NatsServiceStub,
) -> None:
    """Issue 12.3: opt-in batched Consume; every message still acks by its own token."""
    user = tenant()
    await make_stream(stub, user, "bat", ["bat"])
    await make_consumer(stub, user, "bat", "c")
    await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(
            user_id=user,
            stream_name="bat",
            messages=[pb.StreamMessage(subject="bat", data=b"%d" % i) for i in range(200)],
        )
    )
    got: list[pb.JetStreamMessage] = []
    responses = 0
    async with consuming(stub, user, "bat", "c", max_messages=500, max_batch=50) as consumption:
        while len(got) < 200:
            response = await consumption.message()
            assert response.message is not None
            assert len(response.batch) <= 49
            got += [response.message, *response.batch]
            responses += 1
        assert response.outstanding_messages == 200
    assert [m.data for m in got] == [b"%d" % i for i in range(200)]
    assert [m.sequence for m in got] == list(range(1, 201))
    assert responses < 200 // 5
    acked = await stub.ack_messages(
        pb.AckMessagesRequest(user_id=user, ack_tokens=[m.ack_token for m in got])
    )
    assert acked.succeeded == 200


async def test_waiting_deliveries_still_arrive_one_message_per_response(
    stub: pb.NatsServiceStub,
) -> None:
    """Deliveries already waiting leave in bursts, encoded without the dataclasses
    (natsgw.service.consume; tests/unit/test_consume_session.py), yet a client reading one
    message per response sees what it saw before: one message each, in order, each with the
    window as it was right after it, each acking by its own token."""
    user = tenant()
    await make_stream(stub, user, "burst", ["burst.>"])
    await make_consumer(stub, user, "burst", "c")
    await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(
            user_id=user,
            stream_name="burst",
            messages=[
                pb.StreamMessage(subject="burst.x", data=b"%d" % i, headers={"n": str(i)})
                for i in range(300)
            ],
        )
    )
    got: list[pb.ConsumeResponse] = []
    async with consuming(stub, user, "burst", "c", max_messages=500) as consumption:
        while len(got) < 300:
            got.append(await consumption.message())
    messages = [r.message for r in got if r.message is not None]
    assert all(not r.batch for r in got)
    assert [m.data for m in messages] == [b"%d" % i for i in range(300)]
    assert [m.sequence for m in messages] == list(range(1, 301))
    assert [r.outstanding_messages for r in got] == list(range(1, 301))
    assert all(m.subject == "burst.x" and m.headers == {"n": m.data.decode()} for m in messages)
    assert all(m.timestamp is not None and m.num_delivered == 1 for m in messages)
    acked = await stub.ack_messages(
        pb.AckMessagesRequest(user_id=user, ack_tokens=[m.ack_token for m in messages])
    )
    assert acked.succeeded == 300


async def test_consume_negative_max_batch_is_invalid_argument(
    stub: pb.NatsServiceStub,
) -> None:
    user = tenant()
    await make_stream(stub, user, "bad", ["bad"])
    await make_consumer(stub, user, "bad", "c")
    with pytest.raises(GRPCError) as info:
        async for _ in stub.consume(
            pb.ConsumeRequest(user_id=user, stream_name="bad", consumer_name="c", max_batch=-1)
        ):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "max_batch" in (info.value.message or "")
