"""Messages: PublishToStream(+Batch), PullMessages, Ack/Nak by sequence and by token."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator

import nats
import pytest_asyncio
from grpclib.client import Channel
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, tenant
from tests.integration._jetstream import (
    error_of,
    make_consumer,
    make_stream,
    ns_of,
    publish,
    pull,
    status_of,
)

SECRET = "a-shared-secret-for-the-replicas"


@pytest_asyncio.fixture
async def channels() -> AsyncIterator[list[Channel]]:
    opened: list[Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def stub_for(gw: Gateway, channels: list[Channel]) -> pb.NatsServiceStub:
    channel = Channel("127.0.0.1", gw.port)
    channels.append(channel)
    return pb.NatsServiceStub(channel)


async def ack_pending(nc: nats.NATS, user: str, stream: str, consumer: str) -> int:
    info = await nc.jetstream().consumer_info(ns_of(user).stream(stream), consumer)
    return int(info.num_ack_pending)


# -- publishing ------------------------------------------------------------------------------------


async def test_publish_to_stream_returns_sequence_and_stored_time(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "pub", ["pub.>"])
    first = await publish(stub, user, "pub", "pub.a", b"one", headers={"k": "v"})
    second = await publish(stub, user, "pub", "pub.b.c", b"two")
    assert (first.sequence, second.sequence) == (1, 2)
    assert not first.duplicate
    stored = await nc.jetstream().get_msg(ns_of(user).stream("pub"), 2)
    assert stored.subject == ns_of(user).subject("pub.b.c")
    assert second.timestamp is not None
    raw = await nc.request(f"$JS.API.STREAM.MSG.GET.{ns_of(user).stream('pub')}", b'{"seq": 2}')
    assert second.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f") in raw.data.decode()


async def test_publish_subject_must_be_captured_by_the_named_stream(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "cap", ["cap.*"])
    await make_stream(stub, user, "other", ["zzz"])
    for subject in ("cap.a.b", "zzz", "nothing"):
        error = await error_of(
            stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=user, stream_name="cap", subject=subject, data=b"x"
                )
            )
        )
        assert error.status == Status.INVALID_ARGUMENT
        assert "not captured by stream 'cap'" in error.message
    js = nc.jetstream()
    assert (await js.stream_info(ns_of(user).stream("other"))).state.messages == 0
    assert (await js.stream_info(ns_of(user).stream("cap"))).state.messages == 0


async def test_nats_enforces_the_expected_stream_too(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    """Even when the gateway's (briefly cached) view of a stream's subjects is stale."""
    user = tenant()
    ns = ns_of(user)
    await make_stream(stub, user, "moving", ["mv.*"])
    await publish(stub, user, "moving", "mv.a", b"cached")  # caches the subject list
    js = nc.jetstream()
    info = await js.stream_info(ns.stream("moving"))
    info.config.subjects = [ns.pattern("elsewhere")]
    await js.update_stream(info.config)
    await js.add_stream(name=ns.stream("thief"), subjects=[ns.pattern("mv.*")])
    error = await error_of(
        stub.publish_to_stream(
            pb.PublishToStreamRequest(user_id=user, stream_name="moving", subject="mv.a", data=b"x")
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert (await js.stream_info(ns.stream("thief"))).state.messages == 0
    assert (await js.stream_info(ns.stream("moving"))).state.messages == 1


async def test_msg_id_deduplicates(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "dedup", ["dd"])
    first = await publish(stub, user, "dedup", "dd", b"x", headers={"Nats-Msg-Id": "order-1"})
    again = await publish(stub, user, "dedup", "dd", b"x", headers={"Nats-Msg-Id": "order-1"})
    other = await publish(stub, user, "dedup", "dd", b"x", headers={"Nats-Msg-Id": "order-2"})
    assert not first.duplicate
    assert again.duplicate
    assert not other.duplicate
    assert again.sequence == first.sequence == 1
    assert other.sequence == 2
    assert (await nc.jetstream().stream_info(ns_of(user).stream("dedup"))).state.messages == 2


async def test_expectation_headers_are_failed_precondition(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    """Nats-Expected-Last-Sequence (optimistic concurrency) passes through, NATS enforces it."""
    user = tenant()
    await make_stream(stub, user, "occ", ["occ"])
    await publish(stub, user, "occ", "occ", b"first")
    stale = pb.PublishToStreamRequest(
        user_id=user,
        stream_name="occ",
        subject="occ",
        data=b"lost update",
        headers={"Nats-Expected-Last-Sequence": "0"},
    )
    error = await error_of(stub.publish_to_stream(stale))
    assert error.status == Status.FAILED_PRECONDITION
    assert "wrong last sequence" in error.message
    batch = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(
            user_id=user,
            stream_name="occ",
            messages=[
                pb.StreamMessage(
                    subject="occ", data=b"x", headers={"Nats-Expected-Last-Sequence": "0"}
                )
            ],
        )
    )
    assert batch.results[0].status_code == Status.FAILED_PRECONDITION.value
    assert (await nc.jetstream().stream_info(ns_of(user).stream("occ"))).state.messages == 1
    fresh = await publish(
        stub, user, "occ", "occ", b"second", headers={"Nats-Expected-Last-Sequence": "1"}
    )
    assert fresh.sequence == 2


async def test_publish_without_stream_name_uses_the_capturing_stream(
    stub: pb.NatsServiceStub,
) -> None:
    """Old clients never sent stream_name (the original ignored it)."""
    user = tenant()
    await make_stream(stub, user, "implicit", ["imp.>"])
    response = await publish(stub, user, "", "imp.x", b"x")
    assert response.sequence == 1
    missing = pb.PublishToStreamRequest(user_id=user, subject="nowhere", data=b"x")
    assert await status_of(stub.publish_to_stream(missing)) == Status.INVALID_ARGUMENT


async def test_publish_batch_keeps_order_and_reports_each(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "bulk", ["bulk.*"])
    items = [pb.StreamMessage(subject="bulk.a", data=str(i).encode()) for i in range(200)]
    items[10] = pb.StreamMessage(subject="bulk.a.toolong", data=b"bad")
    items[20] = pb.StreamMessage(subject="bulk.b", data=b"first", msg_id="m-1")
    items[30] = pb.StreamMessage(subject="bulk.b", data=b"again", msg_id="m-1")
    response = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(user_id=user, stream_name="bulk", messages=items)
    )
    assert len(response.results) == 200
    assert response.published_count == 199
    bad = response.results[10]
    assert not bad.success
    assert bad.status_code == Status.INVALID_ARGUMENT.value
    assert bad.error.startswith("messages[10].subject")
    assert response.results[30].duplicate
    assert response.results[30].sequence == response.results[20].sequence
    stored = sorted(r.sequence for r in response.results if r.success and not r.duplicate)
    assert stored == list(range(1, 199))
    assert (await nc.jetstream().stream_info(ns_of(user).stream("bulk"))).state.messages == 198


async def test_publish_batch_refuses_per_message_even_the_first(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "first", ["first"])
    response = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(
            user_id=user,
            stream_name="first",
            messages=[
                pb.StreamMessage(subject="first.*", data=b"wildcard"),
                pb.StreamMessage(subject="first", data=b"ok", headers={"bad name": "x"}),
                pb.StreamMessage(subject="first", data=b"ok"),
            ],
        )
    )
    assert [r.success for r in response.results] == [False, False, True]
    assert response.results[0].error.startswith("messages[0].subject")
    assert response.results[1].status_code == Status.INVALID_ARGUMENT.value
    assert (await nc.jetstream().stream_info(ns_of(user).stream("first"))).state.messages == 1
    empty = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(user_id=user, stream_name="first")
    )
    assert (empty.published_count, empty.results) == (0, [])


async def test_batch_results_when_nats_refuses(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    """NATS's own refusals reach each message: stream gone, nothing to acknowledge."""
    user = tenant()
    await make_stream(stub, user, "vanish", ["vanish"])
    one = [pb.StreamMessage(subject="vanish", data=b"x")]
    first = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(user_id=user, stream_name="vanish", messages=one)
    )
    assert first.published_count == 1  # the gateway now caches the stream's subjects briefly
    await make_consumer(stub, user, "vanish", "none", ack_policy=pb.AckPolicy.ACK_NONE)
    (delivered,) = await pull(stub, user, "vanish", "none")
    acks = await stub.ack_messages(
        pb.AckMessagesRequest(user_id=user, ack_tokens=[delivered.ack_token])
    )
    assert acks.succeeded == 0
    assert acks.results[0].status_code == Status.FAILED_PRECONDITION.value
    assert "ack_policy none" in acks.results[0].error
    await nc.jetstream().delete_stream(ns_of(user).stream("vanish"))
    gone = await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(user_id=user, stream_name="vanish", messages=one * 3)
    )
    assert gone.published_count == 0
    assert {r.status_code for r in gone.results} == {Status.NOT_FOUND.value}
    assert all("natsgw" not in r.error for r in gone.results)


# -- pulling ---------------------------------------------------------------------------------------


async def test_pull_honours_batch_size_and_fields(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "pl", ["pl.*"])
    for i in range(5):
        await publish(stub, user, "pl", f"pl.{i}", f"m{i}".encode(), headers={"n": str(i)})
    await make_consumer(stub, user, "pl", "c")
    got = await pull(stub, user, "pl", "c", batch=2)
    assert [m.sequence for m in got] == [1, 2]
    m = got[0]
    assert (m.subject, m.data, m.num_delivered, m.consumer_sequence) == ("pl.0", b"m0", 1, 1)
    assert m.headers == {"n": "0"}  # the gateway's Nats-Expected-Stream stays hidden
    assert m.num_pending == 4
    assert m.timestamp is not None
    assert abs(m.timestamp - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)
    assert m.ack_token
    rest = await pull(stub, user, "pl", "c", batch=10)
    assert [m.sequence for m in rest] == [3, 4, 5]


async def test_pull_waits_for_the_first_message_then_returns(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "w", ["w"])
    await make_consumer(stub, user, "w", "c")
    started = time.monotonic()
    assert await pull(stub, user, "w", "c", batch=5, wait=0.4) == []
    assert 0.3 <= time.monotonic() - started < 3.0

    async def later() -> None:
        await asyncio.sleep(0.3)
        await publish(stub, user, "w", "w", b"late")

    task = asyncio.create_task(later())
    started = time.monotonic()
    got = await pull(stub, user, "w", "c", batch=5, wait=5.0)
    await task
    assert [m.data for m in got] == [b"late"]
    assert time.monotonic() - started < 3.0


async def test_pull_keeps_responses_inside_the_message_size_limit(
    nc: nats.NATS, make_gateway: GatewayFactory, channels: list[Channel]
) -> None:
    """A pull returns at most half the gateway's max message size; a bigger message alone."""
    stub = stub_for(await make_gateway(max_message_size=64 * 1024), channels)
    user = tenant()
    await make_stream(stub, user, "sized", ["sized"])
    await make_consumer(stub, user, "sized", "c")
    js = nc.jetstream()
    subject = ns_of(user).subject("sized")
    for i in range(6):
        await js.publish(subject, bytes([65 + i]) * 10_000)
    await js.publish(subject, b"Z" * 40_000)  # larger than the 32 KiB budget on its own
    calls: list[list[int]] = []
    while len(received := [n for call in calls for n in call]) < 7:
        got = await pull(stub, user, "sized", "c", batch=100, wait=0.5)
        assert got, f"stalled after {received}"
        calls.append([len(m.data) for m in got])
    assert calls == [[10_000] * 3, [10_000] * 3, [40_000]]


async def test_pull_from_missing_consumer_is_not_found(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "nc", ["nc"])
    request = pb.PullMessagesRequest(
        user_id=user, stream_name="nc", consumer_name="ghost", batch_size=1
    )
    assert await status_of(stub.pull_messages(request)) == Status.NOT_FOUND
    bad = pb.PullMessagesRequest(user_id=user, stream_name="nc", consumer_name="c", batch_size=-1)
    assert await status_of(stub.pull_messages(bad)) == Status.INVALID_ARGUMENT


# -- acknowledging by sequence (old clients) ------------------------------------------


async def test_acked_message_is_not_redelivered_after_ack_wait(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "ack", ["ack"])
    await publish(stub, user, "ack", "ack", b"keep")
    await publish(stub, user, "ack", "ack", b"drop")
    await make_consumer(stub, user, "ack", "c", ack_wait=datetime.timedelta(seconds=1))
    got = await pull(stub, user, "ack", "c", batch=2)
    assert [m.sequence for m in got] == [1, 2]
    response = await stub.ack_message(
        pb.AckMessageRequest(user_id=user, stream_name="ack", consumer_name="c", sequence=2)
    )
    assert response.success
    assert await ack_pending(nc, user, "ack", "c") == 1
    await asyncio.sleep(1.3)
    again = await pull(stub, user, "ack", "c", batch=5, wait=0.5)
    # The unacked one comes back (proves ack_wait elapsed), the acked one never does.
    assert [(m.sequence, m.num_delivered) for m in again] == [(1, 2)]


async def test_nak_redelivers_with_num_delivered_2(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "nak", ["nak"])
    await publish(stub, user, "nak", "nak", b"x")
    await make_consumer(stub, user, "nak", "c")
    (first,) = await pull(stub, user, "nak", "c")
    response = await stub.nak_message(
        pb.NakMessageRequest(user_id=user, stream_name="nak", consumer_name="c", sequence=1)
    )
    assert response.success
    (again,) = await pull(stub, user, "nak", "c", wait=2.0)
    assert (again.sequence, first.num_delivered, again.num_delivered) == (1, 1, 2)


async def test_nak_with_delay_redelivers_no_earlier(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "delay", ["delay"])
    await publish(stub, user, "delay", "delay", b"x")
    await make_consumer(stub, user, "delay", "c")
    await pull(stub, user, "delay", "c")
    naked_at = time.monotonic()
    await stub.nak_message(
        pb.NakMessageRequest(
            user_id=user,
            stream_name="delay",
            consumer_name="c",
            sequence=1,
            delay=datetime.timedelta(seconds=1),
        )
    )
    assert await pull(stub, user, "delay", "c", wait=0.5) == []
    (again,) = await pull(stub, user, "delay", "c", wait=3.0)
    assert time.monotonic() - naked_at >= 1.0
    assert again.num_delivered == 2


async def test_max_deliver_stops_redelivery(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "md", ["md"])
    await publish(stub, user, "md", "md", b"x")
    await make_consumer(stub, user, "md", "c", max_deliver=2)
    for attempt in (1, 2):
        (m,) = await pull(stub, user, "md", "c", wait=2.0)
        assert m.num_delivered == attempt
        await stub.nak_message(pb.NakMessageRequest(user_id=user, ack_token=m.ack_token))
    assert await pull(stub, user, "md", "c", wait=0.7) == []


async def test_ack_of_unknown_delivery_is_failed_precondition(
    stub: pb.NatsServiceStub, nc: nats.NATS, make_gateway: GatewayFactory, channels: list[Channel]
) -> None:
    user = tenant()
    await make_stream(stub, user, "unk", ["unk"])
    await publish(stub, user, "unk", "unk", b"x")
    await make_consumer(stub, user, "unk", "c")
    never = pb.AckMessageRequest(user_id=user, stream_name="unk", consumer_name="c", sequence=1)
    error = await error_of(stub.ack_message(never))
    assert error.status == Status.FAILED_PRECONDITION
    assert "ack_token" in error.message
    await pull(stub, user, "unk", "c")
    # Another replica (or this one after a restart) does not know the delivery.
    other = stub_for(await make_gateway(), channels)
    assert await status_of(other.ack_message(never)) == Status.FAILED_PRECONDITION
    nak = pb.NakMessageRequest(user_id=user, stream_name="unk", consumer_name="c", sequence=1)
    assert await status_of(other.nak_message(nak)) == Status.FAILED_PRECONDITION
    assert await ack_pending(nc, user, "unk", "c") == 1  # nothing was acknowledged
    assert (await stub.ack_message(never)).success
    assert await ack_pending(nc, user, "unk", "c") == 0


# -- acknowledging by token -------------------------------------------------------------


async def test_ack_token_works_on_any_replica_sharing_the_secret(
    nc: nats.NATS, make_gateway: GatewayFactory, channels: list[Channel]
) -> None:
    a = stub_for(await make_gateway(ack_token_secret=SECRET), channels)
    b = stub_for(await make_gateway(ack_token_secret=SECRET), channels)
    c = stub_for(await make_gateway(ack_token_secret="another-secret-entirely!"), channels)
    user = tenant()
    await make_stream(a, user, "tok", ["tok"])
    await publish(a, user, "tok", "tok", b"x")
    await make_consumer(a, user, "tok", "c")
    (m,) = await pull(a, user, "tok", "c")
    error = await error_of(c.ack_message(pb.AckMessageRequest(user_id=user, ack_token=m.ack_token)))
    assert error.status == Status.INVALID_ARGUMENT
    assert "NATSGW_ACK_TOKEN_SECRET" in error.message
    assert await ack_pending(nc, user, "tok", "c") == 1
    assert (await b.ack_message(pb.AckMessageRequest(user_id=user, ack_token=m.ack_token))).success
    assert await ack_pending(nc, user, "tok", "c") == 0


async def test_tampered_or_mismatched_tokens_are_refused(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "tamper", ["tamper"])
    await publish(stub, user, "tamper", "tamper", b"x")
    await make_consumer(stub, user, "tamper", "c")
    (m,) = await pull(stub, user, "tamper", "c")
    token = m.ack_token
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (forged, "garbage", "1~~"):
        request = pb.AckMessageRequest(user_id=user, ack_token=bad)
        assert await status_of(stub.ack_message(request)) == Status.INVALID_ARGUMENT
    wrong_seq = pb.AckMessageRequest(user_id=user, ack_token=token, sequence=5)
    assert await status_of(stub.ack_message(wrong_seq)) == Status.INVALID_ARGUMENT
    assert await ack_pending(nc, user, "tamper", "c") == 1
    right = pb.AckMessageRequest(
        user_id=user, ack_token=token, stream_name="tamper", consumer_name="c", sequence=1
    )
    assert (await stub.ack_message(right)).success
    assert await ack_pending(nc, user, "tamper", "c") == 0


async def test_in_progress_extends_and_terminate_stops(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "wpi", ["wpi"])
    await publish(stub, user, "wpi", "wpi", b"slow")
    await publish(stub, user, "wpi", "wpi", b"poison")
    await make_consumer(stub, user, "wpi", "c", ack_wait=datetime.timedelta(seconds=1.5))
    slow, poison = await pull(stub, user, "wpi", "c", batch=2)
    await stub.ack_message(
        pb.AckMessageRequest(
            user_id=user, ack_token=poison.ack_token, action=pb.AckAction.TERMINATE
        )
    )
    for _ in range(6):  # 2.4 s of work on a 1.5 s ack_wait, kept alive by in-progress
        await asyncio.sleep(0.4)
        await stub.ack_message(
            pb.AckMessageRequest(
                user_id=user, ack_token=slow.ack_token, action=pb.AckAction.IN_PROGRESS
            )
        )
    assert await pull(stub, user, "wpi", "c", batch=2, wait=0.5) == []
    assert await ack_pending(nc, user, "wpi", "c") == 1
    # Without in-progress the slow one does come back after ack_wait; the terminated one never.
    again = await pull(stub, user, "wpi", "c", batch=2, wait=3.0)
    assert [(m.data, m.num_delivered) for m in again] == [(b"slow", 2)]


async def test_ack_messages_batch(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "many", ["many"])
    await stub.publish_to_stream_batch(
        pb.PublishToStreamBatchRequest(
            user_id=user,
            stream_name="many",
            messages=[pb.StreamMessage(subject="many", data=b"x") for _ in range(50)],
        )
    )
    await make_consumer(stub, user, "many", "c")
    got = await pull(stub, user, "many", "c", batch=50)
    assert len(got) == 50
    tokens = [m.ack_token for m in got[:40]] + ["not-a-token", ""]
    response = await stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=tokens))
    assert response.succeeded == 40
    assert [r.success for r in response.results] == [True] * 40 + [False, False]
    assert response.results[40].status_code == Status.INVALID_ARGUMENT.value
    assert "ack_tokens[40]" in response.results[40].error
    assert await ack_pending(nc, user, "many", "c") == 10
    naks = await stub.ack_messages(
        pb.AckMessagesRequest(
            user_id=user,
            ack_tokens=[m.ack_token for m in got[40:]],
            action=pb.AckAction.NAK,
        )
    )
    assert naks.succeeded == 10
    again = await pull(stub, user, "many", "c", batch=50, wait=2.0)
    assert sorted(m.sequence for m in again) == [m.sequence for m in got[40:]]
    assert all(m.num_delivered == 2 for m in again)
