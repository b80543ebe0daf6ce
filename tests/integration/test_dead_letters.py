"""Dead letters and retry (issue #18 item 1) against a real nats-server.

A consumer's ``backoff`` spaces its redeliveries; its ``dead_letter_stream`` receives, once, a
copy of every message it gave up on (max_deliver reached, or terminated with a reason), made by
the gateways' shared relay; another tenant's stream can never be the target.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
from types import ModuleType
from typing import Any

import grpc
import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.adapter.dead_letters import MAX_DELIVERIES, TERMINATED, Advisory
from natsgw.client import ConsumerConfig, connect
from natsgw.server import Gateway
from natsgw.service import dead_letters
from natsgw.service.dead_letters import DeadLetterRelay
from tests.conftest import GatewayFactory, tenant, wait_for
from tests.integration._jetstream import (
    error_of,
    make_consumer,
    make_stream,
    ns_of,
    publish,
    pull,
    status_of,
)

SECONDS = datetime.timedelta(seconds=1)


async def _stream_messages(stub: pb.NatsServiceStub, user: str, stream: str) -> int:
    info = await stub.get_stream_info(pb.GetStreamInfoRequest(user_id=user, stream_name=stream))
    assert info.stream is not None and info.stream.state is not None
    return info.stream.state.messages


async def _dead_letters(
    stub: pb.NatsServiceStub, user: str, stream: str, count: int, timeout: float = 15.0
) -> list[pb.JetStreamMessage]:
    """The first ``count`` copies in ``stream`` (read with a consumer of the test's own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await _stream_messages(stub, user, stream) < count:
        assert loop.time() < deadline, f"fewer than {count} dead letters in {stream}"
        await asyncio.sleep(0.05)
    reader = f"reader-{count}"
    await make_consumer(stub, user, stream, reader)
    got = await pull(stub, user, stream, reader, batch=count + 10, wait=0.5)
    await stub.delete_consumer(
        pb.DeleteConsumerRequest(user_id=user, stream_name=stream, consumer_name=reader)
    )
    return got


async def _setup(stub: pb.NatsServiceStub, user: str, **config: object) -> None:
    await make_stream(stub, user, "jobs", ["jobs.>"])
    await make_stream(stub, user, "jobs-dlq", ["dead.>"])
    await make_consumer(stub, user, "jobs", "worker", dead_letter_stream="jobs-dlq", **config)


def _relays(*gateways: Gateway) -> list[DeadLetterRelay]:
    relays = [gw.dead_letters for gw in gateways]
    assert all(r is not None for r in relays)
    return [r for r in relays if r is not None]


async def test_max_deliver_copies_the_message_with_its_origin(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await _setup(stub, user, max_deliver=2)
    stored = await publish(
        stub, user, "jobs", "jobs.resize", b"payload", headers={"trace": "t-1", "Nats-Msg-Id": "m1"}
    )
    for _ in range(2):
        (msg,) = await pull(stub, user, "jobs", "worker", wait=2.0)
        await stub.nak_message(pb.NakMessageRequest(user_id=user, ack_token=msg.ack_token))
    # NATS notices max_deliver when it would deliver again: that takes a pull waiting.
    assert await pull(stub, user, "jobs", "worker", wait=0.5) == []
    (copy,) = await _dead_letters(stub, user, "jobs-dlq", 1)
    assert copy.subject == "dead.jobs.resize"
    assert copy.data == b"payload"
    headers = dict(copy.headers)
    assert headers["trace"] == "t-1"
    assert headers["natsgw-dead-letter-subject"] == "jobs.resize"
    assert headers["natsgw-dead-letter-stream"] == "jobs"
    assert headers["natsgw-dead-letter-consumer"] == "worker"
    assert headers["natsgw-dead-letter-sequence"] == str(stored.sequence)
    assert headers["natsgw-dead-letter-deliveries"] == "2"
    assert headers["natsgw-dead-letter-cause"] == MAX_DELIVERIES
    assert headers["natsgw-dead-letter-msg-id"] == "m1"
    assert headers["Nats-Msg-Id"] == f"jobs:worker:{stored.sequence}:2"
    assert "natsgw-dead-letter-reason" not in headers
    # Nothing in the copy names NATS's side of the namespace.
    ns = ns_of(user)
    shown = json.dumps(headers) + copy.subject
    assert ns.key not in shown and ns.subject_prefix not in shown


async def test_terminate_with_a_reason_is_copied_with_it(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await _setup(stub, user)
    await publish(stub, user, "jobs", "jobs.one", b"1")
    await publish(stub, user, "jobs", "jobs.two", b"2")
    first, second = await pull(stub, user, "jobs", "worker", wait=2.0)
    await stub.ack_message(
        pb.AckMessageRequest(
            user_id=user,
            ack_token=first.ack_token,
            action=pb.AckAction.TERMINATE,
            reason="schema v1 is not supported",
        )
    )
    batch = await stub.ack_messages(
        pb.AckMessagesRequest(
            user_id=user,
            ack_tokens=[second.ack_token],
            action=pb.AckAction.TERMINATE,
            term_reason="bad payload",
        )
    )
    assert batch.succeeded == 1
    copies = await _dead_letters(stub, user, "jobs-dlq", 2)
    by_subject = {c.subject: dict(c.headers) for c in copies}
    assert by_subject["dead.jobs.one"]["natsgw-dead-letter-reason"] == "schema v1 is not supported"
    assert by_subject["dead.jobs.two"]["natsgw-dead-letter-reason"] == "bad payload"
    assert {h["natsgw-dead-letter-cause"] for h in by_subject.values()} == {TERMINATED}


async def test_term_reason_is_checked(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await _setup(stub, user)
    await publish(stub, user, "jobs", "jobs.x", b"x")
    (msg,) = await pull(stub, user, "jobs", "worker", wait=2.0)
    for action, reason in [
        (pb.AckAction.ACK, "only with terminate"),
        (pb.AckAction.TERMINATE, "two\nlines"),
        (pb.AckAction.TERMINATE, "x" * 257),
    ]:
        error = await error_of(
            stub.ack_message(
                pb.AckMessageRequest(
                    user_id=user, ack_token=msg.ack_token, action=action, reason=reason
                )
            )
        )
        assert error.status == Status.INVALID_ARGUMENT
        assert "reason" in error.message
    status = await status_of(
        stub.ack_messages(
            pb.AckMessagesRequest(
                user_id=user, ack_tokens=[msg.ack_token], action=pb.AckAction.NAK, term_reason="r"
            )
        )
    )
    assert status == Status.INVALID_ARGUMENT


async def test_two_gateways_copy_each_message_exactly_once(
    stub: pb.NatsServiceStub,
    gateway: Gateway,
    make_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three relays (the session's gateway and two more) on one nats-server share the
    max_deliver advisories: one copy of each message."""
    monkeypatch.setattr(dead_letters, "RELAY_BATCH", 1)  # the relays compete for every one
    others = [await make_gateway(), await make_gateway()]
    before = sum(r.outcomes["copied"] for r in _relays(gateway))
    user = tenant()
    await _setup(stub, user, max_deliver=1)
    count = 30
    for i in range(count):
        await publish(stub, user, "jobs", f"jobs.{i}", b"x")
    tokens: list[str] = []
    while len(tokens) < count:
        tokens += [m.ack_token for m in await pull(stub, user, "jobs", "worker", 100, 1.0)]
    # Nak'ed through all three gateways; the pull that follows makes NATS give up on each.
    for index, gw in enumerate([gateway, *others]):
        channel = Channel("127.0.0.1", gw.port)
        try:
            await pb.NatsServiceStub(channel).ack_messages(
                pb.AckMessagesRequest(
                    user_id=user, ack_tokens=tokens[index::3], action=pb.AckAction.NAK
                )
            )
        finally:
            channel.close()
    assert await pull(stub, user, "jobs", "worker", 100, 1.0) == []
    copies = await _dead_letters(stub, user, "jobs-dlq", count)
    assert {c.headers["natsgw-dead-letter-cause"] for c in copies} == {MAX_DELIVERIES}
    await asyncio.sleep(1.0)  # time for any second copy to land (none may)
    assert await _stream_messages(stub, user, "jobs-dlq") == count
    sequences = [c.headers["natsgw-dead-letter-sequence"] for c in copies]
    assert len(set(sequences)) == count
    shares = [r.outcomes["copied"] for r in _relays(gateway, *others)]
    shares[0] -= before
    print(f"copies per relay: {shares}")
    assert sum(shares) == count  # each advisory handled once, none stored twice
    assert 'natsgw_dead_letters_total{outcome="copied"}' in gateway.metrics.exposition().decode()


async def test_a_replayed_advisory_is_not_copied_twice(
    stub: pb.NatsServiceStub, gateway: Gateway
) -> None:
    """A replica that stored the copy and died before acking: the next one's copy is dropped
    by NATS (same Nats-Msg-Id)."""
    user = tenant()
    await _setup(stub, user)
    stored = await publish(stub, user, "jobs", "jobs.again", b"x")
    (relay,) = _relays(gateway)
    ns = ns_of(user)
    advisory = Advisory(TERMINATED, ns.stream("jobs"), "worker", stored.sequence, 1, "why")
    assert await relay.relay(advisory) == "copied"
    assert await relay.relay(advisory) == "copied"  # stored again? NATS says duplicate
    assert await _stream_messages(stub, user, "jobs-dlq") == 1
    gone = Advisory(MAX_DELIVERIES, ns.stream("jobs"), "worker", stored.sequence + 99, 3)
    assert await relay.relay(gone) == "source_gone"


async def test_another_tenants_stream_is_never_a_dead_letter_target(
    stub: pb.NatsServiceStub, gateway: Gateway, nc: nats.NATS
) -> None:
    alice, bob = tenant("alice"), tenant("bob")
    await make_stream(stub, bob, "dlq", ["dead.>"])
    await make_stream(stub, alice, "jobs", ["jobs.>"])
    for name in ["dlq", ns_of(bob).stream("dlq")]:  # bob's name, and bob's NATS name
        error = await error_of(
            stub.create_consumer(
                pb.CreateConsumerRequest(
                    user_id=alice,
                    stream_name="jobs",
                    config=pb.ConsumerConfig(durable_name="w", dead_letter_stream=name),
                )
            )
        )
        assert error.status == Status.NOT_FOUND
        assert "dead-letter stream" in error.message
    for name, status in [("a.b", Status.INVALID_ARGUMENT), ("jobs", Status.INVALID_ARGUMENT)]:
        got = await status_of(
            stub.create_consumer(
                pb.CreateConsumerRequest(
                    user_id=alice,
                    stream_name="jobs",
                    config=pb.ConsumerConfig(durable_name="w", dead_letter_stream=name),
                )
            )
        )
        assert got == status, name
    # Metadata written around the gateway (a raw NATS client) naming bob's stream: the relay
    # maps the name into alice's namespace, where no such stream exists; bob gets nothing.
    ns = ns_of(alice)
    body = {
        "stream_name": ns.stream("jobs"),
        "config": {
            "durable_name": "raw",
            "ack_policy": "explicit",
            "metadata": {"natsgw.dead_letter_stream": ns_of(bob).stream("dlq")},
        },
    }
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{ns.stream('jobs')}.raw", json.dumps(body).encode(), timeout=5
    )
    assert "error" not in json.loads(reply.data)
    stored = await publish(stub, alice, "jobs", "jobs.x", b"x")
    (relay,) = _relays(gateway)
    advisory = Advisory(TERMINATED, ns.stream("jobs"), "raw", stored.sequence, 1)
    with pytest.raises(Exception, match="does not exist"):
        await relay.relay(advisory)
    assert await _stream_messages(stub, bob, "dlq") == 0


async def test_a_missing_dead_letter_stream_is_retried(
    stub: pb.NatsServiceStub, gateway: Gateway
) -> None:
    user = tenant()
    await _setup(stub, user)
    missing = await error_of(
        stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="jobs",
                config=pb.ConsumerConfig(durable_name="w2", dead_letter_stream="nope"),
            )
        )
    )
    assert missing.status == Status.NOT_FOUND
    assert "'nope'" in missing.message
    await make_consumer(stub, user, "jobs", "once", max_deliver=1, dead_letter_stream="jobs-dlq")
    (relay,) = _relays(gateway)
    retried = relay.outcomes["retried"]
    await stub.delete_stream(pb.DeleteStreamRequest(user_id=user, stream_name="jobs-dlq"))
    await publish(stub, user, "jobs", "jobs.late", b"x")
    # A TERM is refused while its copy has nowhere to go: the message is not lost.
    (msg,) = await pull(stub, user, "jobs", "worker", wait=2.0)
    refused = await error_of(
        stub.ack_message(
            pb.AckMessageRequest(
                user_id=user, ack_token=msg.ack_token, action=pb.AckAction.TERMINATE
            )
        )
    )
    assert refused.status == Status.FAILED_PRECONDITION
    assert "'jobs-dlq' does not exist" in refused.message
    # max_deliver reached while it is missing: the relay keeps the advisory and retries.
    (msg,) = await pull(stub, user, "jobs", "once", wait=2.0)
    await stub.nak_message(pb.NakMessageRequest(user_id=user, ack_token=msg.ack_token))
    assert await pull(stub, user, "jobs", "once", wait=0.5) == []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while relay.outcomes["retried"] == retried:
        assert loop.time() < deadline, "the relay never retried"
        await asyncio.sleep(0.05)
    await make_stream(stub, user, "jobs-dlq", ["dead.>"])
    (copy,) = await _dead_letters(stub, user, "jobs-dlq", 1, timeout=20.0)
    assert copy.subject == "dead.jobs.late"
    assert copy.headers["natsgw-dead-letter-consumer"] == "once"


async def test_terminated_work_queue_messages_are_copied_before_they_go(
    stub: pb.NatsServiceStub,
) -> None:
    """A TERM removes the message from a work-queue stream at once: the gateway copies it
    before it sends the TERM (from the advisory alone it would be gone)."""
    user = tenant()
    await make_stream(
        stub, user, "jobs", ["jobs.>"], retention=pb.RetentionPolicy.RETENTION_WORK_QUEUE
    )
    await make_stream(stub, user, "jobs-dlq", ["dead.>"])
    await make_consumer(stub, user, "jobs", "worker", dead_letter_stream="jobs-dlq")
    await publish(stub, user, "jobs", "jobs.a", b"x")
    (msg,) = await pull(stub, user, "jobs", "worker", wait=2.0)
    await stub.ack_message(
        pb.AckMessageRequest(
            user_id=user, ack_token=msg.ack_token, action=pb.AckAction.TERMINATE, reason="r"
        )
    )
    assert await _stream_messages(stub, user, "jobs") == 0  # gone from the work queue
    (copy,) = await _dead_letters(stub, user, "jobs-dlq", 1)
    assert copy.headers["natsgw-dead-letter-reason"] == "r"
    await asyncio.sleep(0.5)  # the advisory's own copy attempt is a no-op
    assert await _stream_messages(stub, user, "jobs-dlq") == 1


async def test_backoff_spaces_redeliveries(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "jobs", ["jobs.>"])
    delays = [0.5 * SECONDS, 1.5 * SECONDS]
    info = await make_consumer(stub, user, "jobs", "slow", backoff=delays, max_deliver=3)
    assert info.config is not None and info.config.backoff == delays
    await publish(stub, user, "jobs", "jobs.x", b"x")
    loop = asyncio.get_running_loop()
    seen: list[float] = []
    while len(seen) < 3:
        for msg in await pull(stub, user, "jobs", "slow", wait=1.0):
            seen.append(loop.time())
            assert msg.num_delivered == len(seen)
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    print(f"redelivery gaps {gaps[0]:.2f}s, {gaps[1]:.2f}s for backoff 0.5s, 1.5s")
    assert 0.4 <= gaps[0] < 3.0
    assert 1.3 <= gaps[1] < 5.0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"backoff": [SECONDS, SECONDS], "max_deliver": 2}, "config.backoff"),
        ({"backoff": [datetime.timedelta(0)], "max_deliver": 5}, "config.backoff[0]"),
        ({"backoff": [SECONDS] * 101}, "config.backoff"),
        ({"backoff": [SECONDS], "ack_policy": pb.AckPolicy.ACK_NONE}, "config.backoff"),
        ({"dead_letter_stream": "d", "ack_policy": pb.AckPolicy.ACK_NONE}, "dead_letter_stream"),
    ],
)
async def test_bad_backoff_is_invalid_argument(
    stub: pb.NatsServiceStub, config: dict[str, object], field: str
) -> None:
    user = tenant()
    await make_stream(stub, user, "jobs", ["jobs.>"])
    await make_stream(stub, user, "d", ["d"])
    error = await error_of(
        stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="jobs",
                config=pb.ConsumerConfig(durable_name="w", **config),  # type: ignore[arg-type]
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert field in error.message


async def test_typed_client_backoff_dead_letters_and_terminate(gateway: Gateway) -> None:
    async with await connect(f"127.0.0.1:{gateway.port}", user_id=tenant()) as client:
        await client.create_stream("jobs", ["jobs.>"])
        await client.create_stream("failed", ["failed"])
        info = await client.create_consumer(
            "jobs",
            "worker",
            config=ConsumerConfig(
                backoff=[2 * SECONDS], max_deliver=5, dead_letter_stream="failed"
            ),
        )
        assert info.config is not None
        assert info.config.dead_letter_stream == "failed"
        assert info.config.backoff == [2 * SECONDS]
        await client.publish_to_stream("jobs.a", b"a")
        (msg,) = await client.pull("jobs", "worker", max_wait=2.0)
        assert await client.terminate(msg, reason="cannot parse") == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while (await client.stream_info("failed")).state.messages < 1:  # type: ignore[union-attr]
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        await client.create_consumer("failed", "reader")
        (copy,) = await client.pull("failed", "reader", max_wait=2.0)
        assert copy.subject == "failed"
        assert copy.headers["natsgw-dead-letter-reason"] == "cannot parse"


async def test_grpcio_client_sets_backoff_and_terminates_with_a_reason(
    gateway: Gateway, grpcio_stubs: tuple[ModuleType, ModuleType]
) -> None:
    """The new fields as a client built from the project's .proto with grpcio sends them."""
    pb2, pb2_grpc = grpcio_stubs
    user = tenant("grpcio")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub: Any = pb2_grpc.NATSServiceStub(channel)
        for name, subjects in [("jobs", ["jobs.>"]), ("dlq", ["dead.>"])]:
            await stub.CreateStream(
                pb2.CreateStreamRequest(
                    user_id=user, config=pb2.StreamConfig(name=name, subjects=subjects)
                )
            )
        config = pb2.ConsumerConfig(durable_name="w", max_deliver=4, dead_letter_stream="dlq")
        for millis in (250, 1000, 4000):
            config.backoff.add().FromMilliseconds(millis)
        created = await stub.CreateConsumer(
            pb2.CreateConsumerRequest(user_id=user, stream_name="jobs", config=config)
        )
        assert [d.ToMilliseconds() for d in created.consumer.config.backoff] == [250, 1000, 4000]
        assert created.consumer.config.dead_letter_stream == "dlq"
        await stub.PublishToStream(
            pb2.PublishToStreamRequest(user_id=user, stream_name="jobs", subject="jobs.a")
        )
        pulled = await stub.PullMessages(
            pb2.PullMessagesRequest(user_id=user, stream_name="jobs", consumer_name="w")
        )
        (msg,) = pulled.messages
        await stub.AckMessage(
            pb2.AckMessageRequest(
                user_id=user,
                ack_token=msg.ack_token,
                action=pb2.ACK_ACTION_TERMINATE,
                reason="from grpcio",
            )
        )
    copies = await _dead_letters_of(gateway, user)
    assert copies[0].headers["natsgw-dead-letter-reason"] == "from grpcio"


async def _dead_letters_of(gateway: Gateway, user: str) -> list[pb.JetStreamMessage]:
    channel = Channel("127.0.0.1", gateway.port)
    try:
        return await _dead_letters(pb.NatsServiceStub(channel), user, "dlq", 1)
    finally:
        channel.close()


async def test_a_deleted_advisory_stream_is_made_again(
    stub: pb.NatsServiceStub, gateway: Gateway, nc: nats.NATS
) -> None:
    user = tenant()
    await _setup(stub, user)  # the advisory stream exists from here on
    (relay,) = _relays(gateway)
    await wait_for(lambda: relay.reading, timeout=10.0)
    advisories = relay.log.stream
    await nc.request(f"$JS.API.STREAM.DELETE.{advisories}", b"", timeout=5)

    async def exists() -> bool:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{advisories}", b"", timeout=5)
        return "error" not in json.loads(reply.data)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while not await exists():
        assert loop.time() < deadline, "the advisory stream was not made again"
        await asyncio.sleep(0.1)
    await publish(stub, user, "jobs", "jobs.after", b"x")
    (msg,) = await pull(stub, user, "jobs", "worker", wait=2.0)
    await stub.ack_message(
        pb.AckMessageRequest(user_id=user, ack_token=msg.ack_token, action=pb.AckAction.TERMINATE)
    )
    (copy,) = await _dead_letters(stub, user, "jobs-dlq", 1)
    assert copy.subject == "dead.jobs.after"


async def test_update_consumer_checks_and_keeps_the_dead_letter_stream(
    stub: pb.NatsServiceStub,
) -> None:
    """UpdateConsumer (consumer control): a new dead_letter_stream is checked as at create; an
    update that names none keeps the current one (it lives in the gateway's metadata)."""
    user = tenant()
    await _setup(stub, user)
    await make_stream(stub, user, "other-dlq", ["other"])

    async def update(**config: Any) -> pb.UpdateConsumerResponse:
        return await stub.update_consumer(
            pb.UpdateConsumerRequest(
                user_id=user,
                stream_name="jobs",
                config=pb.ConsumerConfig(durable_name="worker", ack_wait=30 * SECONDS, **config),
            )
        )

    assert (await status_of(update(dead_letter_stream="nope"))) == Status.NOT_FOUND
    kept = await update(description="same target")
    assert kept.consumer is not None and kept.consumer.config is not None
    assert kept.consumer.config.dead_letter_stream == "jobs-dlq"
    assert "natsgw.dead_letter_stream" not in kept.consumer.config.metadata
    moved = await update(dead_letter_stream="other-dlq", metadata={"team": "a"})
    assert moved.consumer is not None and moved.consumer.config is not None
    assert moved.consumer.config.dead_letter_stream == "other-dlq"
    assert moved.consumer.config.metadata == {"team": "a"}
    refused = await status_of(update(metadata={"natsgw.dead_letter_stream": "x"}))
    assert refused == Status.INVALID_ARGUMENT
