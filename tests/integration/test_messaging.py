"""Publish, PublishBatch, Subscribe, QueueSubscribe and Unsubscribe through a grpclib client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError
from h2.exceptions import StreamClosedError

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import settled, tenant, wait_for


def mapped(user: str, subject: str) -> str:
    return Namespace(Tenant.user(user)).pattern(subject)


@contextlib.asynccontextmanager
async def open_subscription(
    stub: pb.NatsServiceStub, request: pb.SubscribeRequest | pb.QueueSubscribeRequest
) -> AsyncIterator[Any]:
    """Open a Subscribe stream; the gateway's response headers mean the NATS subscription exists."""
    method = "Subscribe" if isinstance(request, pb.SubscribeRequest) else "QueueSubscribe"
    async with stub.channel.request(
        f"/isa.nats.NATSService/{method}",
        Cardinality.UNARY_STREAM,
        type(request),
        pb.MessageResponse,
    ) as stream:
        await stream.send_message(request, end=True)
        await stream.recv_initial_metadata()
        try:
            yield stream
        finally:
            with contextlib.suppress(ProtocolError, StreamClosedError):  # already over
                await stream.cancel()  # a client hanging up


async def subsz(server: EmbeddedNatsServer, subject: str) -> int:
    """How many subscriptions nats-server has on exactly this subject (monitoring endpoint)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.monitor_url}/subsz", params={"subs": "1", "test": ""}) as resp,
    ):
        body = await resp.json()
    return sum(1 for s in body.get("subscriptions_list", []) if s["subject"] == subject)


async def test_publish_keeps_data_headers_and_maps_reply(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    sub = await nc.subscribe(mapped(user, "orders.>"))
    await settled(nc)
    response = await stub.publish(
        pb.PublishRequest(
            user_id=user,
            subject="orders.eu.created",
            data=b"\x00payload\xff",
            headers={"Trace-Id": "abc", "Nats-Msg-Id": "1"},
            reply_to="answers.here",
        )
    )
    assert response.success
    msg = await sub.next_msg(timeout=2)
    assert msg.subject == mapped(user, "orders.eu.created")
    assert msg.data == b"\x00payload\xff"
    assert msg.headers == {"Trace-Id": "abc", "Nats-Msg-Id": "1"}
    assert msg.reply == mapped(user, "answers.here")


@pytest.mark.parametrize(
    ("request_kwargs", "status", "needle"),
    [
        ({"subject": "a.*"}, Status.INVALID_ARGUMENT, "subject"),
        ({"subject": ""}, Status.INVALID_ARGUMENT, "subject"),
        ({"subject": "a..b"}, Status.INVALID_ARGUMENT, "subject"),
        ({"subject": "a b"}, Status.INVALID_ARGUMENT, "subject"),
        ({"subject": "ok", "reply_to": "x.>"}, Status.INVALID_ARGUMENT, "reply_to"),
        ({"subject": "ok", "headers": {"bad:key": "v"}}, Status.INVALID_ARGUMENT, "headers"),
        ({"subject": "ok", "headers": {"k": "line\r\nbreak"}}, Status.INVALID_ARGUMENT, "headers"),
        ({"subject": "ok", "user_id": ""}, Status.UNAUTHENTICATED, "user_id"),
        (
            {"subject": "ok", "scope": pb.NamespaceScope.SCOPE_ORGANIZATION},
            Status.PERMISSION_DENIED,
            "organization",
        ),
    ],
)
async def test_publish_refuses_bad_input_with_an_actionable_status(
    stub: pb.NatsServiceStub, request_kwargs: dict[str, Any], status: Status, needle: str
) -> None:
    kwargs: dict[str, Any] = {"user_id": tenant()} | request_kwargs
    with pytest.raises(GRPCError) as info:
        await stub.publish(pb.PublishRequest(**kwargs))
    assert info.value.status is status
    assert needle in (info.value.message or "")


async def test_publish_batch_counts_exactly_and_loses_no_good_message(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    sub = await nc.subscribe(mapped(user, "batch.>"))
    await settled(nc)
    messages = [pb.NatsMessage(subject=f"batch.{i}", data=str(i).encode()) for i in range(10)]
    messages[3] = pb.NatsMessage(subject="batch.*", data=b"bad")
    messages[7] = pb.NatsMessage(subject="batch.7", data=b"x", headers={"": "empty name"})
    response = await stub.publish_batch(pb.PublishBatchRequest(user_id=user, messages=messages))
    assert response.published_count == 8
    assert not response.success
    assert len(response.errors) == 2
    assert response.errors[0].startswith("messages[3].subject")
    assert response.errors[1].startswith("messages[7]")
    received = [(await sub.next_msg(timeout=2)).data for _ in range(8)]
    assert received == [str(i).encode() for i in range(10) if i not in (3, 7)]


async def test_publish_batch_maps_reply_subjects_and_refuses_bad_ones_by_index(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    """Subjects and reply subjects are mapped once per distinct value in a batch; a refused
    reply is reported at its own index and the rest go out in order."""
    user = tenant()
    sub = await nc.subscribe(mapped(user, "rb.>"))
    await settled(nc)
    messages = [
        pb.NatsMessage(subject="rb.a", data=b"0", reply_to="rb.answers"),
        pb.NatsMessage(subject="rb.a", data=b"1", reply_to="rb.answers"),
        pb.NatsMessage(subject="rb.a", data=b"2", reply_to="rb.>"),
        pb.NatsMessage(subject="rb.answers", data=b"3", reply_to="rb.a"),
        pb.NatsMessage(subject="rb.a", data=b"4"),
    ]
    response = await stub.publish_batch(pb.PublishBatchRequest(user_id=user, messages=messages))
    assert response.published_count == 4
    assert len(response.errors) == 1
    assert response.errors[0].startswith("messages[2].reply_to")
    received = [await sub.next_msg(timeout=2) for _ in range(4)]
    assert [(m.subject, m.data, m.reply) for m in received] == [
        (mapped(user, "rb.a"), b"0", mapped(user, "rb.answers")),
        (mapped(user, "rb.a"), b"1", mapped(user, "rb.answers")),
        (mapped(user, "rb.answers"), b"3", mapped(user, "rb.a")),
        (mapped(user, "rb.a"), b"4", ""),
    ]


async def test_subscribe_delivers_real_subject_headers_reply_and_sequence(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    request = pb.SubscribeRequest(user_id=user, subject="sensors.*.temp.>")
    async with open_subscription(stub, request) as stream:
        await nc.publish(
            mapped(user, "sensors.kitchen.temp.c"),
            b"21",
            reply=mapped(user, "replies.1"),
            headers={"Unit": "C"},
        )
        await nc.publish(mapped(user, "sensors.kitchen.humidity.x"), b"no match")
        await nc.publish(mapped(user, "sensors.attic.temp.f.raw"), b"70")
        first = await asyncio.wait_for(stream.recv_message(), 5)
        second = await asyncio.wait_for(stream.recv_message(), 5)
    assert first.subject == "sensors.kitchen.temp.c"
    assert first.data == b"21" and first.headers == {"Unit": "C"}
    assert first.reply_to == "replies.1"
    assert first.timestamp is not None and first.sequence == 1
    assert (second.subject, second.data, second.sequence, second.reply_to) == (
        "sensors.attic.temp.f.raw",
        b"70",
        2,
        "",
    )


async def test_subscribe_sees_only_its_own_tenant(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    alice, mallory = tenant("alice"), tenant("mallory")
    request = pb.SubscribeRequest(user_id=mallory, subject=">")
    async with open_subscription(stub, request) as stream:
        await stub.publish(pb.PublishRequest(user_id=alice, subject="secret", data=b"s"))
        await nc.publish("_INBOX.x", b"s")
        await nc.publish("$SYS.x", b"s")
        await stub.publish(pb.PublishRequest(user_id=mallory, subject="mine", data=b"m"))
        message = await asyncio.wait_for(stream.recv_message(), 5)
        # The others came on other connections, in no guaranteed order: none may follow either.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.recv_message(), 0.3)
    assert (message.subject, message.data) == ("mine", b"m")


async def test_cancelled_stream_removes_the_nats_subscription(
    stub: pb.NatsServiceStub, nats_server: EmbeddedNatsServer
) -> None:
    user = tenant()
    nats_subject = mapped(user, "gone.soon")
    request = pb.SubscribeRequest(user_id=user, subject="gone.soon")
    async with open_subscription(stub, request) as stream:
        assert await subsz(nats_server, nats_subject) == 1
        await stream.cancel()
    for _ in range(100):
        if await subsz(nats_server, nats_subject) == 0:
            break
        await asyncio.sleep(0.05)
    assert await subsz(nats_server, nats_subject) == 0


async def test_queue_groups_share_the_work(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    request = pb.QueueSubscribeRequest(user_id=user, subject="jobs.>", queue_group="workers")
    counts = [0, 0]
    total = 60
    async with (
        open_subscription(stub, request) as s1,
        open_subscription(stub, request) as s2,
    ):

        async def drain(index: int, stream: Any) -> None:
            while sum(counts) < total:
                await stream.recv_message()
                counts[index] += 1

        readers = [asyncio.create_task(drain(i, s)) for i, s in enumerate((s1, s2))]
        batch = [pb.NatsMessage(subject=f"jobs.{i}", data=b"j") for i in range(total)]
        await stub.publish_batch(pb.PublishBatchRequest(user_id=user, messages=batch))
        await wait_for(lambda: sum(counts) == total)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert sum(counts) == total
    assert counts[0] > 0 and counts[1] > 0, counts


async def test_queue_subscribe_requires_a_group(stub: pb.NatsServiceStub) -> None:
    request = pb.QueueSubscribeRequest(user_id=tenant(), subject="jobs.>")
    with pytest.raises(GRPCError) as info:
        async for _ in stub.queue_subscribe(request):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT
    assert "queue_group" in (info.value.message or "")


async def test_unsubscribe_completes_the_callers_streams(
    stub: pb.NatsServiceStub, nats_server: EmbeddedNatsServer
) -> None:
    user, other = tenant(), tenant()
    request = pb.SubscribeRequest(user_id=user, subject="news.>")
    async with (
        open_subscription(stub, request) as s1,
        open_subscription(stub, request) as s2,
        open_subscription(stub, pb.SubscribeRequest(user_id=other, subject="news.>")) as s3,
    ):
        # Another tenant unsubscribing the same subject ends nothing of ours.
        response = await stub.unsubscribe(pb.UnsubscribeRequest(user_id=tenant(), subject="news.>"))
        assert not response.success
        response = await stub.unsubscribe(pb.UnsubscribeRequest(user_id=user, subject="news.>"))
        assert response.success
        assert await asyncio.wait_for(s1.recv_message(), 5) is None
        assert await asyncio.wait_for(s2.recv_message(), 5) is None
        await s1.recv_trailing_metadata()
        await stub.publish(pb.PublishRequest(user_id=other, subject="news.x", data=b"still"))
        assert (await asyncio.wait_for(s3.recv_message(), 5)).data == b"still"
    for _ in range(100):  # the streams ended; their NATS subscriptions go soon after
        if await subsz(nats_server, mapped(user, "news.>")) == 0:
            break
        await asyncio.sleep(0.05)
    assert await subsz(nats_server, mapped(user, "news.>")) == 0
    again = await stub.unsubscribe(pb.UnsubscribeRequest(user_id=user, subject="news.>"))
    assert not again.success


async def test_stream_publishes_seen_by_subscribers_show_no_nats_names(
    stub: pb.NatsServiceStub,
) -> None:
    user = tenant()
    created = await stub.create_stream(
        pb.CreateStreamRequest(
            user_id=user, config=pb.StreamConfig(name="orders", subjects=["o.>"])
        )
    )
    assert created.success
    async with open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="o.>")) as s:
        await stub.publish_to_stream(
            pb.PublishToStreamRequest(user_id=user, stream_name="orders", subject="o.1", data=b"x")
        )
        message = await asyncio.wait_for(s.recv_message(), 5)
    assert message.headers.get("Nats-Expected-Stream") == "orders"
    assert not any(Namespace(Tenant.user(user)).key in v for v in message.headers.values())
