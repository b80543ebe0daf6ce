"""Consumer control (issue #18 item 3) against a real nats-server: UpdateConsumer, pause and
resume, reset (seek), several filter subjects, description and metadata, full state in info, and
the escape attempts each new field invites."""

from __future__ import annotations

import datetime
import json

import nats
import pytest
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.client import ConsumerConfig, FailedPrecondition, connect
from natsgw.server import Gateway
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

_FUTURE = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)


async def _info(stub: pb.NatsServiceStub, user: str, stream: str, name: str) -> pb.ConsumerInfo:
    response = await stub.get_consumer_info(
        pb.GetConsumerInfoRequest(user_id=user, stream_name=stream, consumer_name=name)
    )
    assert response.consumer is not None
    return response.consumer


async def _update(
    stub: pb.NatsServiceStub, user: str, stream: str, **config: object
) -> pb.ConsumerInfo:
    response = await stub.update_consumer(
        pb.UpdateConsumerRequest(
            user_id=user,
            stream_name=stream,
            config=pb.ConsumerConfig(**config),  # type: ignore[arg-type]
        )
    )
    assert response.success
    assert response.consumer is not None
    return response.consumer


async def test_filter_subjects_description_metadata_round_trip(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "orders", ["orders.>"])
    created = await make_consumer(
        stub,
        user,
        "orders",
        "w",
        filter_subjects=["orders.eu.*", "orders.us.>"],
        description="billing worker",
        metadata={"team": "billing"},
    )
    assert created.config is not None
    assert created.config.filter_subjects == ["orders.eu.*", "orders.us.>"]
    assert created.config.description == "billing worker"
    assert created.config.metadata == {"team": "billing"}  # no _nats.* keys shown
    again = await make_consumer(  # the same config again is still a no-op, as before
        stub,
        user,
        "orders",
        "w",
        filter_subjects=["orders.eu.*", "orders.us.>"],
        description="billing worker",
        metadata={"team": "billing"},
    )
    assert again.created == created.created
    for subject in ("orders.eu.1", "orders.us.x.y", "orders.asia.1"):
        await publish(stub, user, "orders", subject, b"x")
    got = await pull(stub, user, "orders", "w", batch=10)
    assert sorted(m.subject for m in got) == ["orders.eu.1", "orders.us.x.y"]
    # What NATS holds: each filter mapped into the tenant's namespace.
    ns = ns_of(user)
    raw = await nc.request(f"$JS.API.CONSUMER.INFO.{ns.stream('orders')}.w", b"", timeout=5)
    config = json.loads(raw.data)["config"]
    assert config["filter_subjects"] == [ns.pattern("orders.eu.*"), ns.pattern("orders.us.>")]
    assert config["metadata"]["team"] == "billing"


async def test_filter_subjects_escape_attempts(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user, other = tenant("cc"), tenant("cc-other")
    await make_stream(stub, user, "s", ["s.>"])
    await make_stream(stub, other, "s", ["s.>"])
    await publish(stub, other, "s", "s.secret", b"theirs")
    ns, other_ns = ns_of(user), ns_of(other)
    for i, attempt in enumerate(
        (
            other_ns.pattern("s.>"),  # another tenant's subjects, spelled as NATS does
            other_ns.subject("s.secret"),
            "$JS.API.>",  # a raw NATS subject
            "$KV.>",
        )
    ):
        name = f"esc{i}"
        request = pb.CreateConsumerRequest(
            user_id=user,
            stream_name="s",
            config=pb.ConsumerConfig(durable_name=name, filter_subjects=["s.a", attempt]),
        )
        await stub.create_consumer(request)
        # Accepted: NATS holds the filter inside the caller's namespace, so it matches nothing
        # of another tenant's (or NATS's internal) subjects.
        raw = await nc.request(f"$JS.API.CONSUMER.INFO.{ns.stream('s')}.{name}", b"", timeout=5)
        filters = json.loads(raw.data)["config"]["filter_subjects"]
        assert filters == [ns.pattern("s.a"), ns.pattern(attempt)]
        assert all(f.startswith(ns.subject_prefix) for f in filters)
        assert await pull(stub, user, "s", name, batch=5, wait=0.2) == []
    # Overlapping filters: NATS refuses them, INVALID_ARGUMENT.
    error = await error_of(
        stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="s",
                config=pb.ConsumerConfig(durable_name="ov", filter_subjects=["s.a", "s.>"]),
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert other_ns.key not in error.message
    # Both filter forms at once are refused before NATS is asked.
    error = await error_of(
        stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=user,
                stream_name="s",
                config=pb.ConsumerConfig(
                    durable_name="both", filter_subject="s.a", filter_subjects=["s.b"]
                ),
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert "filter_subjects" in error.message


async def test_reserved_metadata_keys_are_refused_and_hidden(stub: pb.NatsServiceStub) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "m", ["m.>"])
    for key in ("_nats.ver", "natsgw.dead_letter_stream", "NATSGW_x", "_NATS.level"):
        error = await error_of(
            stub.create_consumer(
                pb.CreateConsumerRequest(
                    user_id=user,
                    stream_name="m",
                    config=pb.ConsumerConfig(durable_name="c", metadata={key: "1"}),
                )
            )
        )
        assert error.status == Status.INVALID_ARGUMENT, key
        assert "reserved" in error.message
    info = await make_consumer(stub, user, "m", "c", metadata={"ok": "1"})
    assert info.config is not None
    assert info.config.metadata == {"ok": "1"}
    error = await error_of(
        stub.update_consumer(
            pb.UpdateConsumerRequest(
                user_id=user,
                stream_name="m",
                config=pb.ConsumerConfig(durable_name="c", metadata={"natsgw.x": "1"}),
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT


async def test_update_consumer_changes_what_nats_allows(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "u", ["u.>"])
    await make_consumer(stub, user, "u", "c", filter_subject="u.a", metadata={"v": "1"})
    # The gateway's own metadata entries (set by a gateway feature) survive a tenant's update.
    ns = ns_of(user)
    stream = ns.stream("u")
    raw = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.c", b"", timeout=5)).data)[
        "config"
    ]
    raw["metadata"]["natsgw.internal"] = "keep"
    body = {"stream_name": stream, "config": raw, "action": "update"}
    answer = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{stream}.c", json.dumps(body).encode(), timeout=5
    )
    assert "error" not in json.loads(answer.data)

    updated = await _update(
        stub,
        user,
        "u",
        durable_name="c",
        filter_subjects=["u.b", "u.c"],
        description="now two filters",
        metadata={"v": "2"},
        ack_wait=datetime.timedelta(seconds=12),
        max_deliver=4,
        max_ack_pending=7,
    )
    assert updated.config is not None
    assert updated.config.filter_subjects == ["u.b", "u.c"]
    assert updated.config.filter_subject == ""
    assert updated.config.description == "now two filters"
    assert updated.config.metadata == {"v": "2"}  # natsgw.internal is kept but never shown
    assert updated.config.ack_wait == datetime.timedelta(seconds=12)
    assert updated.config.max_deliver == 4
    assert updated.config.max_ack_pending == 7
    raw = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.c", b"", timeout=5)).data)[
        "config"
    ]
    assert raw["metadata"]["natsgw.internal"] == "keep"
    assert raw["metadata"]["v"] == "2"

    # A change NATS refuses names the field, as the wire calls it.
    for field, config in (
        ("config.delivery_policy", {"delivery_policy": pb.DeliveryPolicy.DELIVERY_NEW}),
        ("config.ack_policy", {"ack_policy": pb.AckPolicy.ACK_NONE}),
        ("config.replay_policy", {"replay_policy": pb.ReplayPolicy.REPLAY_ORIGINAL}),
    ):
        error = await error_of(
            stub.update_consumer(
                pb.UpdateConsumerRequest(
                    user_id=user,
                    stream_name="u",
                    config=pb.ConsumerConfig(durable_name="c", **config),  # type: ignore[arg-type]
                )
            )
        )
        assert error.status == Status.INVALID_ARGUMENT, field
        assert error.message.startswith(field), error.message


async def test_update_missing_or_other_tenants_consumer_is_not_found(
    stub: pb.NatsServiceStub,
) -> None:
    user, other = tenant("cc"), tenant("cc-other")
    await make_stream(stub, other, "theirs", ["t.>"])
    await make_consumer(stub, other, "theirs", "c")
    await make_stream(stub, user, "mine", ["t.>"])
    for stream, name in (("theirs", "c"), ("mine", "nope")):
        request = pb.UpdateConsumerRequest(
            user_id=user, stream_name=stream, config=pb.ConsumerConfig(durable_name=name)
        )
        assert await status_of(stub.update_consumer(request)) == Status.NOT_FOUND
        for call in (
            stub.pause_consumer(
                pb.PauseConsumerRequest(
                    user_id=user, stream_name=stream, consumer_name=name, pause_until=_FUTURE
                )
            ),
            stub.resume_consumer(
                pb.ResumeConsumerRequest(user_id=user, stream_name=stream, consumer_name=name)
            ),
            stub.reset_consumer(
                pb.ResetConsumerRequest(
                    user_id=user, stream_name=stream, consumer_name=name, sequence=1
                )
            ),
        ):
            assert await status_of(call) == Status.NOT_FOUND
    # The other tenant's consumer is untouched.
    info = await _info(stub, other, "theirs", "c")
    assert info.state is not None
    assert not info.state.paused


async def test_pause_resume_and_full_state(stub: pb.NatsServiceStub) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "p", ["p.>"])
    await make_consumer(stub, user, "p", "c")
    for i in range(3):
        await publish(stub, user, "p", "p.x", f"{i}".encode())

    paused = await stub.pause_consumer(
        pb.PauseConsumerRequest(
            user_id=user, stream_name="p", consumer_name="c", pause_until=_FUTURE
        )
    )
    assert paused.paused
    assert paused.pause_until == _FUTURE
    assert paused.pause_remaining is not None
    assert paused.pause_remaining > datetime.timedelta(days=365)
    assert await pull(stub, user, "p", "c", batch=3, wait=0.3) == []  # nothing while paused
    info = await _info(stub, user, "p", "c")
    assert info.state is not None
    assert info.state.paused
    assert info.config is not None
    assert info.config.pause_until == _FUTURE

    resumed = await stub.resume_consumer(
        pb.ResumeConsumerRequest(user_id=user, stream_name="p", consumer_name="c")
    )
    assert not resumed.paused
    assert resumed.pause_until is None
    got = await pull(stub, user, "p", "c", batch=2)
    assert [m.data for m in got] == [b"0", b"1"]
    ack = await stub.ack_message(pb.AckMessageRequest(user_id=user, ack_token=got[0].ack_token))
    assert ack.success
    state = (await _info(stub, user, "p", "c")).state
    assert state is not None
    assert not state.paused
    assert state.delivered_seq == 2
    assert state.delivered_consumer_seq == 2
    assert state.ack_floor_seq == 1
    assert state.ack_floor_consumer_seq == 1
    assert state.num_ack_pending == 1
    assert state.num_pending == 1
    assert state.last_active is not None

    # NATS ignores pause_until in an update; the gateway applies it (and an unset one leaves
    # the pause as it is).
    info = await _update(stub, user, "p", durable_name="c", pause_until=_FUTURE)
    assert info.state is not None
    assert info.state.paused
    info = await _update(stub, user, "p", durable_name="c", description="still paused")
    assert info.state is not None
    assert info.state.paused
    await stub.resume_consumer(
        pb.ResumeConsumerRequest(user_id=user, stream_name="p", consumer_name="c")
    )

    # A pause must lie in the future.
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    error = await error_of(
        stub.pause_consumer(
            pb.PauseConsumerRequest(
                user_id=user, stream_name="p", consumer_name="c", pause_until=past
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert error.message.startswith("pause_until")


async def test_created_paused(stub: pb.NatsServiceStub) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "cp", ["cp.>"])
    info = await make_consumer(stub, user, "cp", "c", pause_until=_FUTURE)
    assert info.state is not None
    assert info.state.paused


async def test_reset_to_sequence_and_time(stub: pb.NatsServiceStub) -> None:
    user = tenant("cc")
    await make_stream(stub, user, "r", ["r.>"])
    await make_consumer(stub, user, "r", "c")
    stamps: list[datetime.datetime] = []
    for i in range(5):
        stamp = (await publish(stub, user, "r", "r.x", f"{i}".encode())).timestamp
        assert stamp is not None
        stamps.append(stamp)
    got = await pull(stub, user, "r", "c", batch=5)
    assert len(got) == 5

    reset = await stub.reset_consumer(
        pb.ResetConsumerRequest(user_id=user, stream_name="r", consumer_name="c", sequence=2)
    )
    assert reset.reset_sequence == 2
    assert reset.consumer is not None
    assert reset.consumer.name == "c"
    assert [m.data for m in await pull(stub, user, "r", "c", batch=5)] == [
        b"1",
        b"2",
        b"3",
        b"4",
    ]

    reset = await stub.reset_consumer(
        pb.ResetConsumerRequest(user_id=user, stream_name="r", consumer_name="c", time=stamps[3])
    )
    assert reset.reset_sequence == 4
    assert [m.data for m in await pull(stub, user, "r", "c", batch=5)] == [b"3", b"4"]

    # A time past the last message: only new messages come.
    later = stamps[4] + datetime.timedelta(seconds=1)
    reset = await stub.reset_consumer(
        pb.ResetConsumerRequest(user_id=user, stream_name="r", consumer_name="c", time=later)
    )
    assert reset.reset_sequence == 6
    assert await pull(stub, user, "r", "c", batch=5, wait=0.3) == []

    for bad in (
        pb.ResetConsumerRequest(user_id=user, stream_name="r", consumer_name="c", sequence=-1),
        pb.ResetConsumerRequest(
            user_id=user, stream_name="r", consumer_name="c", sequence=1, time=stamps[0]
        ),
    ):
        assert await status_of(stub.reset_consumer(bad)) == Status.INVALID_ARGUMENT


async def test_typed_client_exposes_consumer_control_and_ttls(gateway: Gateway) -> None:
    async with await connect(f"127.0.0.1:{gateway.port}", user_id=tenant("cc")) as client:
        await client.create_stream("jobs", ["jobs.>"])
        await client.create_consumer(
            "jobs", config=ConsumerConfig(durable_name="w", filter_subjects=["jobs.a"])
        )
        info = await client.update_consumer(
            "jobs",
            ConsumerConfig(durable_name="w", filter_subjects=["jobs.a", "jobs.b"], description="d"),
        )
        assert info.config is not None
        assert info.config.filter_subjects == ["jobs.a", "jobs.b"]
        paused = await client.pause_consumer("jobs", "w", _FUTURE)
        assert paused.paused
        assert not (await client.resume_consumer("jobs", "w")).paused
        for i in range(3):
            await client.publish_to_stream("jobs.a", f"{i}".encode(), stream="jobs")
        reset = await client.reset_consumer("jobs", "w", sequence=3)
        assert reset.reset_sequence == 3
        got = await client.pull("jobs", "w", 5, max_wait=0.5)
        assert [m.data for m in got] == [b"2"]
        with pytest.raises(FailedPrecondition):  # the stream was made without allow_msg_ttl
            await client.publish_with_ttl("jobs.a", b"x", ttl=5, stream="jobs")
        assert await client.kv_put_ttl("leases", "a", b"1", 60)
        assert await client.kv_create_ttl("leases", "b", b"1", 60)
        await client.kv_purge("leases", "a", ttl=60)
