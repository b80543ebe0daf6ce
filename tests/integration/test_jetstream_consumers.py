"""Consumers through the gateway: every ConsumerConfig field and every delivery policy."""

from __future__ import annotations

import asyncio
import datetime

import nats
import nats.js.errors
import pytest
from grpclib.const import Status
from nats.js.api import AckPolicy, DeliverPolicy, ReplayPolicy

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration._jetstream import (
    error_of,
    make_consumer,
    make_stream,
    ns_of,
    publish,
    pull,
    status_of,
)


async def test_create_consumer_honours_every_field(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "jobs", ["jobs.>"])
    start = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    config = pb.ConsumerConfig(
        durable_name="worker",
        filter_subject="jobs.high.*",
        delivery_policy=pb.DeliveryPolicy.DELIVERY_BY_START_TIME,
        ack_policy=pb.AckPolicy.ACK_ALL,
        ack_wait=datetime.timedelta(seconds=7),
        max_deliver=4,
        replay_policy=pb.ReplayPolicy.REPLAY_ORIGINAL,
        opt_start_time=start,
        max_ack_pending=50,
    )
    response = await stub.create_consumer(
        pb.CreateConsumerRequest(user_id=user, stream_name="jobs", config=config)
    )
    assert response.success
    info = response.consumer
    assert info is not None
    assert info.config is not None
    assert info.stream_name == "jobs"
    assert info.name == "worker"
    assert info.config.filter_subject == "jobs.high.*"
    assert info.config.delivery_policy == pb.DeliveryPolicy.DELIVERY_BY_START_TIME
    assert info.config.ack_policy == pb.AckPolicy.ACK_ALL
    assert info.config.ack_wait == datetime.timedelta(seconds=7)
    assert info.config.max_deliver == 4
    assert info.config.replay_policy == pb.ReplayPolicy.REPLAY_ORIGINAL
    assert info.config.opt_start_time == start
    assert info.config.max_ack_pending == 50
    assert info.created is not None

    ns = ns_of(user)
    raw = (await nc.jetstream().consumer_info(ns.stream("jobs"), "worker")).config
    assert raw.durable_name == "worker"
    assert raw.filter_subject == ns.pattern("jobs.high.*")
    assert raw.deliver_policy == DeliverPolicy.BY_START_TIME
    assert raw.ack_policy == AckPolicy.ALL
    assert raw.ack_wait == 7
    assert raw.max_deliver == 4
    assert raw.replay_policy == ReplayPolicy.ORIGINAL
    assert raw.opt_start_time == start
    assert raw.max_ack_pending == 50
    assert raw.deliver_subject is None  # always a pull consumer


async def test_by_start_sequence_and_ack_none(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "seqs", ["seqs"])
    for i in range(5):
        await publish(stub, user, "seqs", "seqs", str(i).encode())
    await make_consumer(
        stub,
        user,
        "seqs",
        "from3",
        delivery_policy=pb.DeliveryPolicy.DELIVERY_BY_START_SEQUENCE,
        opt_start_seq=3,
        ack_policy=pb.AckPolicy.ACK_NONE,
    )
    raw = (await nc.jetstream().consumer_info(ns_of(user).stream("seqs"), "from3")).config
    assert raw.opt_start_seq == 3
    assert raw.ack_policy == AckPolicy.NONE
    got = await pull(stub, user, "seqs", "from3")
    assert [m.sequence for m in got] == [3, 4, 5]
    # Nothing to acknowledge with ack_policy none: said so, not faked.
    error = await error_of(
        stub.ack_message(pb.AckMessageRequest(user_id=user, ack_token=got[0].ack_token))
    )
    assert error.status == Status.FAILED_PRECONDITION
    assert "ack_policy none" in error.message
    info = await stub.get_consumer_info(
        pb.GetConsumerInfoRequest(user_id=user, stream_name="seqs", consumer_name="from3")
    )
    assert info.consumer is not None
    assert info.consumer.state is not None
    assert info.consumer.state.delivered_seq == 5
    assert info.consumer.state.ack_floor_seq == 5  # ack none: delivered is done
    assert info.consumer.state.num_pending == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (pb.DeliveryPolicy.DELIVERY_ALL, [b"a1", b"b1", b"a2"]),
        (pb.DeliveryPolicy.DELIVERY_LAST, [b"a2"]),
        (pb.DeliveryPolicy.DELIVERY_NEW, [b"later"]),
        (pb.DeliveryPolicy.DELIVERY_LAST_PER_SUBJECT, [b"b1", b"a2"]),
    ],
)
async def test_delivery_policies(
    stub: pb.NatsServiceStub, policy: pb.DeliveryPolicy, expected: list[bytes]
) -> None:
    user = tenant()
    await make_stream(stub, user, "d", ["d.*"])
    for subject, data in (("d.a", b"a1"), ("d.b", b"b1"), ("d.a", b"a2")):
        await publish(stub, user, "d", subject, data)
    await make_consumer(stub, user, "d", "c", delivery_policy=policy, filter_subject="d.*")
    await publish(stub, user, "d", "d.c", b"later")
    got = await pull(stub, user, "d", "c", batch=10, wait=0.3)
    expected_all = expected if policy == pb.DeliveryPolicy.DELIVERY_NEW else [*expected, b"later"]
    assert [m.data for m in got] == expected_all


async def test_by_start_time_delivers_from_that_time(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "t", ["t"])
    await publish(stub, user, "t", "t", b"old")
    await asyncio.sleep(0.05)
    cut = datetime.datetime.now(datetime.UTC)
    await asyncio.sleep(0.05)
    await publish(stub, user, "t", "t", b"new")
    await make_consumer(
        stub,
        user,
        "t",
        "since",
        delivery_policy=pb.DeliveryPolicy.DELIVERY_BY_START_TIME,
        opt_start_time=cut,
    )
    assert [m.data for m in await pull(stub, user, "t", "since")] == [b"new"]


async def test_filter_subject_is_mapped_and_applied(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "f", ["f.>"])
    await publish(stub, user, "f", "f.x.1", b"x")
    await publish(stub, user, "f", "f.y.1", b"y")
    await make_consumer(stub, user, "f", "only-x", filter_subject="f.x.>")
    got = await pull(stub, user, "f", "only-x")
    assert [(m.subject, m.data) for m in got] == [("f.x.1", b"x")]


async def test_consumer_create_idempotent_different_refused(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "i", ["i"])
    await make_consumer(stub, user, "i", "c", max_deliver=3)
    await make_consumer(stub, user, "i", "c", max_deliver=3)
    error = await error_of(
        stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="i",
                config=pb.ConsumerConfig(durable_name="c", max_deliver=9),
            )
        )
    )
    assert error.status == Status.ALREADY_EXISTS
    raw = (await nc.jetstream().consumer_info(ns_of(user).stream("i"), "c")).config
    assert raw.max_deliver == 3


async def test_named_ephemeral_consumer_and_invalid_configs(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "e", ["e"])
    response = await stub.create_consumer(
        pb.CreateConsumerRequest(
            user_id=user,
            stream_name="e",
            config=pb.ConsumerConfig(name="eph", inactive_threshold=datetime.timedelta(seconds=60)),
        )
    )
    assert response.consumer is not None
    assert response.consumer.name == "eph"
    raw = (await nc.jetstream().consumer_info(ns_of(user).stream("e"), "eph")).config
    assert raw.durable_name is None
    assert raw.inactive_threshold == 60

    async def create(**config: object) -> Status:
        return await status_of(
            stub.create_consumer(
                pb.CreateConsumerRequest(
                    user_id=user,
                    stream_name="e",
                    config=pb.ConsumerConfig(**config),  # type: ignore[arg-type]
                )
            )
        )

    assert await create(name="a", durable_name="b") == Status.INVALID_ARGUMENT
    assert await create(durable_name="bad.name") == Status.INVALID_ARGUMENT
    assert await create(durable_name="x", filter_subject="a..b") == Status.INVALID_ARGUMENT
    assert (
        await create(durable_name="x", delivery_policy=pb.DeliveryPolicy.DELIVERY_BY_START_SEQUENCE)
        == Status.INVALID_ARGUMENT
    )
    assert (
        await create(durable_name="x", delivery_policy=pb.DeliveryPolicy.DELIVERY_BY_START_TIME)
        == Status.INVALID_ARGUMENT
    )
    assert await create(durable_name="x", max_deliver=-3) == Status.INVALID_ARGUMENT
    missing = pb.CreateConsumerRequest(
        user_id=user, stream_name="nostream", config=pb.ConsumerConfig(durable_name="x")
    )
    assert await status_of(stub.create_consumer(missing)) == Status.NOT_FOUND


async def test_list_get_delete_consumers(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "l", ["l"])
    await make_consumer(stub, user, "l", "b")
    await make_consumer(stub, user, "l", "a", filter_subject="l")
    listed = await stub.list_consumers(pb.ListConsumersRequest(user_id=user, stream_name="l"))
    assert [c.name for c in listed.consumers] == ["a", "b"]
    assert all(c.stream_name == "l" for c in listed.consumers)
    assert listed.consumers[0].config is not None
    assert listed.consumers[0].config.filter_subject == "l"
    got = await stub.get_consumer_info(
        pb.GetConsumerInfoRequest(user_id=user, stream_name="l", consumer_name="a")
    )
    assert got.consumer is not None
    assert got.consumer.name == "a"
    deleted = await stub.delete_consumer(
        pb.DeleteConsumerRequest(user_id=user, stream_name="l", consumer_name="a")
    )
    assert deleted.success
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().consumer_info(ns_of(user).stream("l"), "a")
    missing = pb.GetConsumerInfoRequest(user_id=user, stream_name="l", consumer_name="a")
    assert await status_of(stub.get_consumer_info(missing)) == Status.NOT_FOUND
    again = pb.DeleteConsumerRequest(user_id=user, stream_name="l", consumer_name="a")
    assert await status_of(stub.delete_consumer(again)) == Status.NOT_FOUND


async def test_replay_original_keeps_the_original_pace(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "pace", ["pace"])
    await publish(stub, user, "pace", "pace", b"one")
    await asyncio.sleep(0.6)
    await publish(stub, user, "pace", "pace", b"two")
    await make_consumer(stub, user, "pace", "instant")
    await make_consumer(
        stub, user, "pace", "original", replay_policy=pb.ReplayPolicy.REPLAY_ORIGINAL
    )
    loop = asyncio.get_running_loop()

    async def both(consumer: str) -> float:
        started, got = loop.time(), list[bytes]()
        while len(got) < 2:
            got += [m.data for m in await pull(stub, user, "pace", consumer, batch=2, wait=2.0)]
        assert got == [b"one", b"two"]
        return loop.time() - started

    assert await both("instant") < 0.4
    assert await both("original") >= 0.5  # the 0.6 s between the two publishes, replayed
