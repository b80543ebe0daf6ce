"""The adapter's one JetStream client against a real nats-server: pull outcomes as typed values
(no NATS status number leaves the adapter), stored-message reads, header sizes."""

from __future__ import annotations

import datetime
import uuid

import nats
import pytest
from nats.js import api

from natsgw.adapter import NatsAdapter
from natsgw.adapter.core import header_bytes
from natsgw.adapter.jetstream import JetStreamAdapter, PullPipe
from natsgw.adapter.types import (
    ConsumerDeleted,
    ConsumerSpec,
    Heartbeat,
    JetStreamDelivery,
    NoMessages,
    NoResponders,
    PullOutcome,
    PullRefused,
    RequestExpired,
    StreamPubAck,
    StreamSpec,
    TooLarge,
)
from natsgw.errors import InvalidArgument, NotFound, ResourceExhausted
from tests.conftest import NatsFactory, settled

KIB = 1024


async def stream_with_consumer(js: JetStreamAdapter, *, messages: int = 0) -> tuple[str, str]:
    name = f"pulls-{uuid.uuid4().hex[:10]}"
    await js.add_stream(StreamSpec(name=name, subjects=(f"{name}.>",), storage="memory"))
    await js.add_consumer(name, ConsumerSpec(durable_name="c"))
    for n in range(messages):
        await js.publish(f"{name}.m", f"message {n}".encode(), stream=name)
    return name, "c"


async def next_outcome(pipe: PullPipe, timeout: float = 5.0) -> PullOutcome:
    outcome = await pipe.next(timeout)
    assert outcome is not None, "nothing arrived on the pull inbox"
    return outcome


async def test_pull_on_a_consumer_deleted_while_waiting_is_consumer_deleted(
    adapter: NatsAdapter,
) -> None:
    js = JetStreamAdapter(adapter)
    stream, consumer = await stream_with_consumer(js)
    pipe = await js.open_pull(stream, consumer, 10)
    try:
        await pipe.request(10, expires=30.0)
        await adapter.confirm()  # the pull request is at the server before the delete
        await js.delete_consumer(stream, consumer)
        outcome = await next_outcome(pipe)
        assert isinstance(outcome, ConsumerDeleted)
        assert isinstance(outcome.error, NotFound)
        assert "deleted" in outcome.error.message
    finally:
        await pipe.close()


async def test_pull_on_a_missing_consumer_is_no_responders(adapter: NatsAdapter) -> None:
    js = JetStreamAdapter(adapter)
    stream, _ = await stream_with_consumer(js)
    pipe = await js.open_pull(stream, "never-made", 1)
    try:
        await pipe.request(1, expires=5.0)
        assert isinstance(await next_outcome(pipe), NoResponders)
    finally:
        await pipe.close()
    with pytest.raises(NotFound, match="never-made"):
        await js.fetch(stream, "never-made", 1, 0.5)


async def test_requests_end_as_no_messages_expired_or_delivered(adapter: NatsAdapter) -> None:
    js = JetStreamAdapter(adapter)
    stream, consumer = await stream_with_consumer(js)
    pipe = await js.open_pull(stream, consumer, 10)
    try:
        await pipe.request(5, no_wait=True)
        assert isinstance(await next_outcome(pipe), NoMessages)
        await pipe.request(5, expires=0.5)
        assert isinstance(await next_outcome(pipe), RequestExpired)
        await js.publish(f"{stream}.m", b"one", stream=stream)
        await pipe.request(5, expires=0.5)
        delivery = await next_outcome(pipe)
        assert isinstance(delivery, JetStreamDelivery)
        assert delivery.data == b"one"
        assert isinstance(await next_outcome(pipe), RequestExpired)
    finally:
        await pipe.close()


async def test_idle_pull_sends_heartbeats(adapter: NatsAdapter) -> None:
    js = JetStreamAdapter(adapter)
    stream, consumer = await stream_with_consumer(js)
    pipe = await js.open_pull(stream, consumer, 10)
    try:
        await pipe.request(5, expires=10.0, heartbeat=0.5)
        assert isinstance(await next_outcome(pipe, 3.0), Heartbeat)
        assert isinstance(await next_outcome(pipe, 3.0), Heartbeat)  # and keeps sending them
    finally:
        await pipe.close()


async def test_message_larger_than_max_bytes_is_too_large(adapter: NatsAdapter) -> None:
    js = JetStreamAdapter(adapter)
    stream, consumer = await stream_with_consumer(js)
    await js.publish(f"{stream}.m", b"x" * (4 * KIB), stream=stream)
    pipe = await js.open_pull(stream, consumer, 10)
    try:
        await pipe.request(5, expires=2.0, max_bytes=KIB)
        assert isinstance(await next_outcome(pipe), TooLarge)
    finally:
        await pipe.close()


async def test_too_many_waiting_pulls_is_refused_as_resource_exhausted(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    js = JetStreamAdapter(adapter)
    stream, _ = await stream_with_consumer(js)
    await nc.jetstream().add_consumer(
        stream, api.ConsumerConfig(durable_name="narrow", max_waiting=1)
    )
    first = await js.open_pull(stream, "narrow", 1)
    second = await js.open_pull(stream, "narrow", 1)
    try:
        await first.request(1, expires=10.0)
        await adapter.confirm()
        await second.request(1, expires=10.0)
        outcome = await next_outcome(second)
        assert isinstance(outcome, PullRefused)
        assert isinstance(outcome.error, ResourceExhausted)
    finally:
        await first.close()
        await second.close()


async def test_stored_messages_are_read_with_or_without_direct_get(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    js = JetStreamAdapter(adapter)
    plain, _ = await stream_with_consumer(js, messages=2)  # made without allow_direct
    direct = f"direct-{uuid.uuid4().hex[:10]}"
    await nc.jetstream().add_stream(name=direct, subjects=[f"{direct}.>"], allow_direct=True)
    await nc.jetstream().publish(f"{direct}.m", b"message 0")
    await nc.jetstream().publish(f"{direct}.m", b"message 1")
    for stream in (plain, direct):
        first = await js.get_message(stream, seq=1, what="test")
        assert first is not None
        assert (first.seq, first.data) == (1, b"message 0")
        last = await js.get_message(stream, subject=f"{stream}.m", what="test")
        assert last is not None
        assert (last.seq, last.data) == (2, b"message 1")
        assert await js.get_message(stream, seq=99, what="test") is None
        await js.publish(f"{stream}.h", b"with headers", stream=stream, headers={"X-Note": "a: b"})
        headed = await js.get_message(stream, subject=f"{stream}.h", what="test")
        assert headed is not None
        assert (headed.subject, headed.seq, headed.data) == (f"{stream}.h", 3, b"with headers")
        assert headed.headers["X-Note"] == "a: b"
        assert headed.time is not None
        assert abs((datetime.datetime.now(datetime.UTC) - headed.time).total_seconds()) < 60


async def test_stream_listing_and_summaries(adapter: NatsAdapter) -> None:
    js = JetStreamAdapter(adapter)
    prefix = f"inv{uuid.uuid4().hex[:8]}-"
    for n in range(3):
        await js.add_stream(
            StreamSpec(name=f"{prefix}{n}", subjects=(f"{prefix}{n}.>",), storage="memory")
        )
    await js.add_consumer(f"{prefix}0", ConsumerSpec(durable_name="c"))
    summaries = await js.stream_summaries((prefix,))
    assert sorted((s.name, s.consumers) for s in summaries) == [
        (f"{prefix}0", 1),
        (f"{prefix}1", 0),
        (f"{prefix}2", 0),
    ]
    assert {f"{prefix}0", f"{prefix}1", f"{prefix}2"} <= set(await js.stream_names())
    assert await js.stream_summary(f"{prefix}9") is None
    assert await js.consumer_exists(f"{prefix}0", "c")
    assert not await js.consumer_exists(f"{prefix}1", "c")
    assert await js.limit_stream_bytes(f"{prefix}1", 64 * KIB)
    assert not await js.limit_stream_bytes(f"{prefix}1", 128 * KIB)  # already lower
    capped = await js.stream_info(f"{prefix}1")
    assert capped.spec.max_bytes == 64 * KIB
    assert capped.spec.subjects == (f"{prefix}1.>",)  # the rest of the config is kept


async def test_header_size_is_what_nats_counts(make_nats: NatsFactory) -> None:
    """A message of exactly max_payload, headers included, goes through; one byte more does not."""
    server = await make_nats(max_payload=64 * KIB)
    core = NatsAdapter([server.url])
    await core.start(wait=5)
    reader = await nats.connect(server.url)
    try:
        sub = await reader.subscribe("sized")
        await settled(reader)
        headers = {"Trace-Id": "abc", "k": "v"}
        data = b"x" * (64 * KIB - header_bytes(headers))
        await core.publish("sized", data, headers=headers)
        got = await sub.next_msg(timeout=2)
        assert got.data == data
        assert got.headers == headers
        with pytest.raises(ResourceExhausted, match=f"{64 * KIB + 1} bytes"):
            await core.publish("sized", data + b"!", headers=headers)
    finally:
        await reader.close()
        await core.close()


async def test_batched_stream_publishes_keep_order_across_windows(
    adapter: NatsAdapter,
) -> None:
    """More messages than one window: every one stored once, results in request order."""
    js = JetStreamAdapter(adapter)
    name = f"window-{uuid.uuid4().hex[:10]}"
    await js.add_stream(StreamSpec(name=name, subjects=(f"{name}.>",), storage="memory"))
    items: list[tuple[str, bytes, dict[str, str]]] = [
        (f"{name}.m", f"m{n}".encode(), {}) for n in range(25)
    ]
    results = await js.publish_many(items, stream=name, inflight=3)
    assert [getattr(r, "sequence", r) for r in results] == list(range(1, 26))


async def test_an_unanswered_request_in_a_window_is_deadline_exceeded(
    adapter: NatsAdapter,
) -> None:
    """A responder that reads but never answers: that item times out, the others are answered."""
    js = JetStreamAdapter(adapter)
    nc = adapter.client()
    subject = f"silent.{uuid.uuid4().hex[:10]}"

    async def answer_all_but_one(msg: nats.aio.msg.Msg) -> None:
        if msg.data != b"2":
            await msg.respond(b"+OK")

    sub = await nc.subscribe(f"{subject}.>", cb=answer_all_but_one)
    await nc.flush()
    try:
        results = await js.ack_many(
            [(f"{subject}.{n}", str(n).encode()) for n in range(5)], inflight=2, timeout=0.5
        )
    finally:
        await sub.unsubscribe()
    assert [type(r).__name__ for r in results] == [
        "NoneType", "NoneType", "DeadlineExceeded", "NoneType", "NoneType",
    ]  # fmt: skip


async def test_batched_stream_publishes_store_headers_as_nats_py_does(
    adapter: NatsAdapter,
) -> None:
    """The batch's ready-made HPUB commands store the headers nats-py's publish stores (values
    trimmed, Nats-Expected-Stream added); a name nats-py refuses fails that item only;
    a repeated Nats-Msg-Id comes back as a duplicate of the first one's sequence."""
    js = JetStreamAdapter(adapter)
    nc = adapter.client()
    name = f"hdrs-{uuid.uuid4().hex[:10]}"
    await js.add_stream(StreamSpec(name=name, subjects=(f"{name}.>",), storage="memory"))
    headers = {"Trace-Id": " a b ", "k": "v", "Nats-Msg-Id": "one"}
    items: list[tuple[str, bytes, dict[str, str]]] = [
        (f"{name}.a", b"first", headers),
        (f"{name}.a", b"plain", {}),
        (f"{name}.a", b"refused", {"caf\u00e9": "x"}),  # printable, not an RFC 7230 token
        (f"{name}.a", b"again", {"Nats-Msg-Id": "one"}),
    ]
    results = await js.publish_many(items, stream=name, inflight=2)
    first, plain, refused, again = results
    assert isinstance(first, StreamPubAck) and not first.duplicate
    assert isinstance(plain, StreamPubAck) and plain.sequence == first.sequence + 1
    assert isinstance(refused, InvalidArgument)
    assert isinstance(again, StreamPubAck) and again.duplicate
    assert again.sequence == first.sequence

    await nc.publish(f"{name}.b", b"by nats-py", headers=headers | {"Nats-Msg-Id": "two"})
    await nc.flush()
    ours = await js.get_message(name, seq=first.sequence, what="test")
    theirs = await js.get_message(name, seq=plain.sequence + 1, what="test")
    assert ours is not None and theirs is not None and theirs.data == b"by nats-py"
    assert ours.headers == dict(theirs.headers) | {
        "Nats-Msg-Id": "one",
        "Nats-Expected-Stream": name,
    }
    bare = await js.get_message(name, seq=plain.sequence, what="test")
    assert bare is not None and bare.headers == {"Nats-Expected-Stream": name}
