"""Streams through the gateway: every StreamConfig field, idempotency, listing, update, purge."""

from __future__ import annotations

import datetime

import nats
import nats.js.errors
import pytest
from grpclib.const import Status
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration._jetstream import error_of, make_stream, ns_of, publish, status_of


async def test_create_stream_honours_every_field(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    config = pb.StreamConfig(
        name="events",
        subjects=["events.>", "audit.*"],
        storage=pb.StorageType.STORAGE_MEMORY,
        max_msgs=1000,
        max_bytes=1 << 20,
        max_age=datetime.timedelta(hours=1),
        max_msg_size=4096,
        replicas=1,
        discard_new_per_subject=True,
        max_msgs_per_subject=10,
        duplicate_window=datetime.timedelta(seconds=30),
        retention=pb.RetentionPolicy.RETENTION_WORK_QUEUE,
    )
    response = await stub.create_stream(pb.CreateStreamRequest(user_id=user, config=config))
    assert response.success
    info = response.stream
    assert info is not None
    assert info.config is not None
    assert info.name == "events"
    assert info.config.subjects == ["events.>", "audit.*"]
    assert info.config.storage == pb.StorageType.STORAGE_MEMORY
    assert info.config.max_msgs == 1000
    assert info.config.max_bytes == 1 << 20
    assert info.config.max_age == datetime.timedelta(hours=1)
    assert info.config.max_msg_size == 4096
    assert info.config.discard_new_per_subject
    assert info.config.discard == pb.DiscardPolicy.DISCARD_NEW
    assert info.config.max_msgs_per_subject == 10
    assert info.config.duplicate_window == datetime.timedelta(seconds=30)
    assert info.config.retention == pb.RetentionPolicy.RETENTION_WORK_QUEUE
    assert info.created is not None
    assert abs(info.created - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)

    ns = ns_of(user)
    raw = (await nc.jetstream().stream_info(ns.stream("events"))).config
    assert raw.subjects == [ns.pattern("events.>"), ns.pattern("audit.*")]
    assert raw.storage == StorageType.MEMORY
    assert raw.max_msgs == 1000
    assert raw.max_bytes == 1 << 20
    assert raw.max_age == 3600
    assert raw.max_msg_size == 4096
    assert raw.num_replicas == 1
    assert raw.discard == DiscardPolicy.NEW
    assert raw.discard_new_per_subject is True
    assert raw.max_msgs_per_subject == 10
    assert raw.duplicate_window == 30
    assert raw.retention == RetentionPolicy.WORK_QUEUE


async def test_zero_values_mean_unlimited(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    info = await make_stream(stub, user, "plain", ["plain"])
    assert info.config is not None
    assert (info.config.max_msgs, info.config.max_bytes, info.config.max_msg_size) == (0, 0, 0)
    assert info.config.replicas == 1
    raw = (await nc.jetstream().stream_info(ns_of(user).stream("plain"))).config
    assert (raw.max_msgs, raw.max_bytes, raw.max_msg_size) == (-1, -1, -1)
    assert raw.storage == StorageType.FILE
    assert raw.discard == DiscardPolicy.OLD


async def test_create_is_idempotent_and_refuses_a_different_config(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant()
    await make_stream(stub, user, "s", ["s.>"], max_msgs=5)
    again = await make_stream(stub, user, "s", ["s.>"], max_msgs=5)
    assert again.config is not None
    assert again.config.max_msgs == 5
    error = await error_of(
        stub.create_stream(
            pb.CreateStreamRequest(
                user_id=user, config=pb.StreamConfig(name="s", subjects=["s.>"], max_msgs=6)
            )
        )
    )
    assert error.status == Status.ALREADY_EXISTS
    raw = (await nc.jetstream().stream_info(ns_of(user).stream("s"))).config
    assert raw.max_msgs == 5


async def test_invalid_stream_configs_are_refused(stub: pb.NatsServiceStub) -> None:
    user = tenant()

    async def create(**config: object) -> Status:
        return await status_of(
            stub.create_stream(
                pb.CreateStreamRequest(user_id=user, config=pb.StreamConfig(**config))  # type: ignore[arg-type]
            )
        )

    assert await create(name="", subjects=["a"]) == Status.INVALID_ARGUMENT
    assert await create(name="a.b", subjects=["a"]) == Status.INVALID_ARGUMENT
    assert await create(name="nosubj") == Status.INVALID_ARGUMENT
    assert await create(name="x", subjects=["a..b"]) == Status.INVALID_ARGUMENT
    assert await create(name="x", subjects=["a"], max_msgs=-5) == Status.INVALID_ARGUMENT
    assert (
        await create(name="x", subjects=["a"], max_age=datetime.timedelta(seconds=-1))
        == Status.INVALID_ARGUMENT
    )
    assert await create(name="x", subjects=["a"], discard_new_per_subject=True) == (
        Status.INVALID_ARGUMENT
    )
    # NATS's own refusal (single server: no replicas) keeps NATS's reason.
    error = await error_of(
        stub.create_stream(
            pb.CreateStreamRequest(
                user_id=user, config=pb.StreamConfig(name="x", subjects=["a"], replicas=3)
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert "replicas" in error.message


async def test_get_stream_info_real_state_and_not_found(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "st", ["st.*"])
    for i in range(3):
        await publish(stub, user, "st", f"st.{i}", b"x" * 10)
    response = await stub.get_stream_info(pb.GetStreamInfoRequest(user_id=user, stream_name="st"))
    info = response.stream
    assert info is not None
    assert info.state is not None
    assert info.state.messages == 3
    assert info.state.first_seq == 1
    assert info.state.last_seq == 3
    assert info.state.num_subjects == 3
    assert info.state.bytes > 30
    assert info.state.first_ts is not None
    assert info.state.last_ts is not None
    assert info.state.first_ts <= info.state.last_ts
    assert info.created is not None
    assert info.created <= info.state.first_ts
    missing = pb.GetStreamInfoRequest(user_id=user, stream_name="nope")
    assert await status_of(stub.get_stream_info(missing)) == Status.NOT_FOUND


async def test_list_streams_is_exactly_the_callers(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user, other = tenant(), tenant()
    await make_stream(stub, user, "b-stream", ["b"])
    await make_stream(stub, user, "a-stream", ["a.>"])
    await make_stream(stub, other, "a-stream", ["a.>"])
    # Key-Value and Object buckets of the same tenant are backed by streams too.
    ns = ns_of(user)
    js = nc.jetstream()
    await js.create_key_value(bucket=ns.kv_bucket("cache"))
    await js.create_object_store(bucket=ns.object_bucket("files"))
    response = await stub.list_streams(pb.ListStreamsRequest(user_id=user))
    assert [s.name for s in response.streams] == ["a-stream", "b-stream"]
    assert response.streams[0].config is not None
    assert response.streams[0].config.subjects == ["a.>"]
    empty = await stub.list_streams(pb.ListStreamsRequest(user_id=tenant()))
    assert empty.streams == []


async def test_update_stream_changes_nats(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "up", ["up.a"], max_msgs=10)
    response = await stub.update_stream(
        pb.UpdateStreamRequest(
            user_id=user,
            stream_name="up",
            config=pb.StreamConfig(name="up", subjects=["up.a", "up.b"], max_msgs=20),
        )
    )
    assert response.success
    assert response.stream is not None
    assert response.stream.config is not None
    assert response.stream.config.subjects == ["up.a", "up.b"]
    raw = (await nc.jetstream().stream_info(ns_of(user).stream("up"))).config
    assert raw.max_msgs == 20
    assert raw.subjects == [ns_of(user).pattern("up.a"), ns_of(user).pattern("up.b")]
    # Empty subjects keep the current ones (proto3 cannot say "unchanged").
    response = await stub.update_stream(
        pb.UpdateStreamRequest(user_id=user, stream_name="up", config=pb.StreamConfig(max_msgs=7))
    )
    raw = (await nc.jetstream().stream_info(ns_of(user).stream("up"))).config
    assert raw.max_msgs == 7
    assert len(raw.subjects or []) == 2


async def test_update_stream_refusals(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "fixed", ["fixed"])
    # NATS cannot change the storage type of a stream: its reason reaches the client.
    error = await error_of(
        stub.update_stream(
            pb.UpdateStreamRequest(
                user_id=user,
                stream_name="fixed",
                config=pb.StreamConfig(subjects=["fixed"], storage=pb.StorageType.STORAGE_MEMORY),
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT, (error.status, error.message)
    assert "can not change storage type" in error.message  # NATS's own reason
    raw = (await nc.jetstream().stream_info(ns_of(user).stream("fixed"))).config
    assert raw.storage == StorageType.FILE
    renamed = pb.UpdateStreamRequest(
        user_id=user, stream_name="fixed", config=pb.StreamConfig(name="other", subjects=["x"])
    )
    assert await status_of(stub.update_stream(renamed)) == Status.INVALID_ARGUMENT
    missing = pb.UpdateStreamRequest(
        user_id=user, stream_name="missing", config=pb.StreamConfig(subjects=["m"])
    )
    assert await status_of(stub.update_stream(missing)) == Status.NOT_FOUND


async def test_purge_counts_exactly(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "p", ["p.*"])
    for i in range(7):
        await publish(stub, user, "p", "p.a" if i % 2 == 0 else "p.b", b"m")
    response = await stub.purge_stream(
        pb.PurgeStreamRequest(user_id=user, stream_name="p", subject="p.a")
    )
    assert response.success
    assert response.purged_count == 4
    raw = await nc.jetstream().stream_info(ns_of(user).stream("p"))
    assert raw.state.messages == 3
    response = await stub.purge_stream(pb.PurgeStreamRequest(user_id=user, stream_name="p"))
    assert response.purged_count == 3
    raw = await nc.jetstream().stream_info(ns_of(user).stream("p"))
    assert raw.state.messages == 0


async def test_delete_stream(stub: pb.NatsServiceStub, nc: nats.NATS) -> None:
    user = tenant()
    await make_stream(stub, user, "gone", ["gone"])
    response = await stub.delete_stream(pb.DeleteStreamRequest(user_id=user, stream_name="gone"))
    assert response.success
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().stream_info(ns_of(user).stream("gone"))
    again = pb.DeleteStreamRequest(user_id=user, stream_name="gone")
    assert await status_of(stub.delete_stream(again)) == Status.NOT_FOUND
