"""Cross-tenant attempts on every JetStream RPC are refused and change nothing in NATS."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import nats
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

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


@dataclass
class Snapshot:
    messages: int
    last_seq: int
    subjects: list[str]
    max_msgs: int
    consumers: int
    delivered: int
    ack_pending: int
    ack_floor: int


async def snapshot(nc: nats.NATS, user: str) -> Snapshot:
    js = nc.jetstream()
    stream = await js.stream_info(ns_of(user).stream("private"))
    consumer = await js.consumer_info(ns_of(user).stream("private"), "c")
    return Snapshot(
        messages=stream.state.messages,
        last_seq=stream.state.last_seq,
        subjects=list(stream.config.subjects or []),
        max_msgs=int(stream.config.max_msgs or 0),
        consumers=stream.state.consumer_count,
        delivered=consumer.delivered.stream_seq,
        ack_pending=consumer.num_ack_pending,
        ack_floor=consumer.ack_floor.stream_seq,
    )


async def test_cross_tenant_attempts_are_refused_and_change_nothing(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    victim, attacker = tenant("victim"), tenant("attacker")
    await make_stream(stub, victim, "private", ["private.>"])
    for i in range(3):
        await publish(stub, victim, "private", "private.x", f"secret-{i}".encode())
    await make_consumer(stub, victim, "private", "c")
    (delivered,) = await pull(stub, victim, "private", "c", batch=1)
    before = await snapshot(nc, victim)
    assert before.ack_pending == 1

    s, c = "private", "c"
    a = attacker
    calls = {
        "GetStreamInfo": stub.get_stream_info(pb.GetStreamInfoRequest(user_id=a, stream_name=s)),
        "DeleteStream": stub.delete_stream(pb.DeleteStreamRequest(user_id=a, stream_name=s)),
        "UpdateStream": stub.update_stream(
            pb.UpdateStreamRequest(
                user_id=a,
                stream_name=s,
                config=pb.StreamConfig(subjects=["private.>"], max_msgs=1),
            )
        ),
        "PurgeStream": stub.purge_stream(pb.PurgeStreamRequest(user_id=a, stream_name=s)),
        "CreateConsumer": stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=a, stream_name=s, config=pb.ConsumerConfig(durable_name="spy")
            )
        ),
        "DeleteConsumer": stub.delete_consumer(
            pb.DeleteConsumerRequest(user_id=a, stream_name=s, consumer_name=c)
        ),
        "GetConsumerInfo": stub.get_consumer_info(
            pb.GetConsumerInfoRequest(user_id=a, stream_name=s, consumer_name=c)
        ),
        "ListConsumers": stub.list_consumers(pb.ListConsumersRequest(user_id=a, stream_name=s)),
        "PublishToStream": stub.publish_to_stream(
            pb.PublishToStreamRequest(user_id=a, stream_name=s, subject="private.x", data=b"!")
        ),
        "PublishToStreamBatch": stub.publish_to_stream_batch(
            pb.PublishToStreamBatchRequest(
                user_id=a,
                stream_name=s,
                messages=[pb.StreamMessage(subject="private.x", data=b"!")],
            )
        ),
        "PullMessages": stub.pull_messages(
            pb.PullMessagesRequest(user_id=a, stream_name=s, consumer_name=c, batch_size=5)
        ),
        "GetStreamStats": stub.get_stream_stats(pb.GetStreamStatsRequest(user_id=a, stream_name=s)),
    }
    for name, call in calls.items():
        error = await error_of(call)
        assert error.status == Status.NOT_FOUND, name
        # Told in the caller's own names: no NATS name, no tenant key, nobody else's anything.
        assert "private" in error.message, (name, error.message)
        assert "natsgw" not in error.message, (name, error.message)
        assert ns_of(victim).key not in error.message, (name, error.message)

    # Without a stream name the attacker's own (absent) streams are searched, never the victim's.
    unnamed = pb.PublishToStreamRequest(user_id=a, subject="private.x", data=b"!")
    assert await status_of(stub.publish_to_stream(unnamed)) == Status.INVALID_ARGUMENT

    # The victim's delivery, acked by the attacker: by token (stolen) and by sequence (guessed).
    token = delivered.ack_token
    refused = {
        "AckMessage(token)": stub.ack_message(pb.AckMessageRequest(user_id=a, ack_token=token)),
        "NakMessage(token)": stub.nak_message(pb.NakMessageRequest(user_id=a, ack_token=token)),
        "Terminate(token)": stub.ack_message(
            pb.AckMessageRequest(user_id=a, ack_token=token, action=pb.AckAction.TERMINATE)
        ),
    }
    for name, call in refused.items():
        assert await status_of(call) == Status.PERMISSION_DENIED, name
    by_seq = pb.AckMessageRequest(user_id=a, stream_name=s, consumer_name=c, sequence=1)
    assert await status_of(stub.ack_message(by_seq)) == Status.FAILED_PRECONDITION
    nak_seq = pb.NakMessageRequest(user_id=a, stream_name=s, consumer_name=c, sequence=1)
    assert await status_of(stub.nak_message(nak_seq)) == Status.FAILED_PRECONDITION
    batch = await stub.ack_messages(pb.AckMessagesRequest(user_id=a, ack_tokens=[token]))
    assert batch.succeeded == 0
    assert batch.results[0].status_code == Status.PERMISSION_DENIED.value

    consume = stub.consume(pb.ConsumeRequest(user_id=a, stream_name=s, consumer_name=c))
    with pytest.raises(GRPCError) as consume_refused:
        await anext(aiter(consume))  # the first response would be a delivery or a heartbeat
    assert consume_refused.value.status == Status.NOT_FOUND

    listed = await stub.list_streams(pb.ListStreamsRequest(user_id=a))
    assert listed.streams == []
    stats = await stub.get_statistics(pb.GetStatisticsRequest(user_id=a))
    assert (stats.total_streams, stats.total_messages, stats.total_consumers) == (0, 0, 0)

    assert await snapshot(nc, victim) == before

    # The attacker's namesake stream, even with a catch-all subject, is its own.
    mine = await make_stream(stub, a, "private", [">"])
    assert mine.state is not None
    assert mine.state.messages == 0
    raw = await nc.jetstream().stream_info(ns_of(a).stream("private"))
    assert raw.config.subjects == [ns_of(a).pattern(">")]
    await publish(stub, a, "private", "private.x", b"mine")
    assert await snapshot(nc, victim) == before
    # The victim can still act on its delivery.
    assert (await stub.ack_message(pb.AckMessageRequest(user_id=victim, ack_token=token))).success


async def test_tenant_ids_that_look_like_prefixes_stay_apart(stub: pb.NatsServiceStub) -> None:
    """user "x" and user "x-y" (or "x.y") must never see each other's streams."""
    base = tenant()
    for user in (base, f"{base}-y", f"{base}.y", f"{base}_y"):
        await make_stream(stub, user, "s", ["s"], max_age=datetime.timedelta(minutes=5))
    for user in (base, f"{base}-y", f"{base}.y", f"{base}_y"):
        listed = await stub.list_streams(pb.ListStreamsRequest(user_id=user))
        assert [x.name for x in listed.streams] == ["s"]
