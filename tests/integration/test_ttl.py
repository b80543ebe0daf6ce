"""Per-message TTLs (issue #18 item 2) against a real nats-server: stream allow_msg_ttl and
subject_delete_marker_ttl, ttl on PublishToStream, KVPut, KVCreate and KV purge, markers in
history and watches, old buckets without TTLs, and the refusals NATS would otherwise answer."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import Awaitable, Callable

import nats
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.adapter.kv import bucket_config
from natsgw.adapter.types import BucketDefaults
from tests.conftest import tenant
from tests.integration._jetstream import error_of, make_stream, ns_of, publish, status_of

SECOND = datetime.timedelta(seconds=1)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> None:
    """Poll ``check`` until it holds (TTL expiry runs on the server's own clock)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def _messages(stub: pb.NatsServiceStub, user: str, stream: str) -> int:
    info = await stub.get_stream_info(pb.GetStreamInfoRequest(user_id=user, stream_name=stream))
    assert info.stream is not None
    assert info.stream.state is not None
    return info.stream.state.messages


async def test_stream_ttl_settings_round_trip_and_bounds(stub: pb.NatsServiceStub) -> None:
    user = tenant("ttl")
    info = await make_stream(
        stub, user, "t", ["t.>"], allow_msg_ttl=True, subject_delete_marker_ttl=2 * SECOND
    )
    assert info.config is not None
    assert info.config.allow_msg_ttl
    assert info.config.subject_delete_marker_ttl == 2 * SECOND
    # Old clients' UpdateStream never sends the new fields: TTLs stay allowed, markers stay.
    updated = await stub.update_stream(
        pb.UpdateStreamRequest(
            user_id=user, stream_name="t", config=pb.StreamConfig(subjects=["t.>"], max_msgs=10)
        )
    )
    assert updated.stream is not None
    assert updated.stream.config is not None
    assert updated.stream.config.allow_msg_ttl
    assert updated.stream.config.subject_delete_marker_ttl == 2 * SECOND
    error = await error_of(
        stub.create_stream(
            pb.CreateStreamRequest(
                user_id=user,
                config=pb.StreamConfig(
                    name="short",
                    subjects=["short.>"],
                    subject_delete_marker_ttl=datetime.timedelta(milliseconds=500),
                ),
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert error.message.startswith("config.subject_delete_marker_ttl")


async def test_publish_ttl_expires_and_leaves_a_marker(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant("ttl")
    await make_stream(
        stub, user, "e", ["e.>"], allow_msg_ttl=True, subject_delete_marker_ttl=3 * SECOND
    )
    sent = await publish(stub, user, "e", "e.gone", b"short-lived", ttl=SECOND)
    await publish(stub, user, "e", "e.kept", b"forever")
    ns = ns_of(user)
    stream = ns.stream("e")
    raw = await nc.request(
        f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": sent.sequence}).encode(), timeout=5
    )
    assert "error" not in json.loads(raw.data)

    async def expired() -> bool:
        raw = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}",
            json.dumps({"seq": sent.sequence}).encode(),
            timeout=5,
        )
        return "error" in json.loads(raw.data)

    await eventually(expired)
    # NATS left a delete marker on the subject, as it reports it.
    raw = await nc.request(
        f"$JS.API.STREAM.MSG.GET.{stream}",
        json.dumps({"last_by_subj": ns.subject("e.gone")}).encode(),
        timeout=5,
    )
    marker = json.loads(raw.data)["message"]
    assert b"Nats-Marker-Reason: MaxAge" in base64.b64decode(marker["hdrs"])


async def test_ttl_on_a_stream_without_allow_msg_ttl_is_failed_precondition(
    stub: pb.NatsServiceStub,
) -> None:
    user = tenant("ttl")
    await make_stream(stub, user, "plain", ["plain.>"])
    request = pb.PublishToStreamRequest(
        user_id=user, stream_name="plain", subject="plain.x", data=b"x", ttl=SECOND
    )
    error = await error_of(stub.publish_to_stream(request))
    assert error.status == Status.FAILED_PRECONDITION
    assert "allow_msg_ttl" in error.message
    assert "'plain'" in error.message
    assert await _messages(stub, user, "plain") == 0
    # Turned on by an update, the same publish is stored.
    await stub.update_stream(
        pb.UpdateStreamRequest(
            user_id=user,
            stream_name="plain",
            config=pb.StreamConfig(subjects=["plain.>"], allow_msg_ttl=True),
        )
    )
    assert (await stub.publish_to_stream(request)).success


async def test_ttl_values_nats_would_refuse_are_invalid_argument(
    stub: pb.NatsServiceStub,
) -> None:
    user = tenant("ttl")
    await make_stream(stub, user, "v", ["v.>"], allow_msg_ttl=True)
    for kw in (
        {"ttl": datetime.timedelta(milliseconds=500)},  # below NATS's 1 s
        {"ttl": datetime.timedelta(milliseconds=1500)},  # NATS keeps whole seconds
        {"ttl": SECOND, "ttl_never": True},
        {"ttl": SECOND, "headers": {"Nats-TTL": "5s"}},
        {"ttl": datetime.timedelta(days=365 * 200)},
    ):
        error = await error_of(
            stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=user,
                    stream_name="v",
                    subject="v.x",
                    data=b"x",
                    **kw,  # type: ignore[arg-type]
                )
            )
        )
        assert error.status == Status.INVALID_ARGUMENT, kw
        assert error.message.startswith("ttl"), error.message
    assert await _messages(stub, user, "v") == 0


async def test_ttl_never_outlives_max_age(stub: pb.NatsServiceStub) -> None:
    user = tenant("ttl")
    await make_stream(stub, user, "n", ["n.>"], allow_msg_ttl=True, max_age=SECOND)
    await publish(stub, user, "n", "n.kept", b"kept", ttl_never=True)
    await publish(stub, user, "n", "n.aged", b"aged")

    async def aged_out() -> bool:
        return await _messages(stub, user, "n") == 1

    await eventually(aged_out)
    got = await stub.get_stream_info(pb.GetStreamInfoRequest(user_id=user, stream_name="n"))
    assert got.stream is not None
    assert got.stream.state is not None
    assert got.stream.state.first_seq == 1  # the ttl_never message is the one left


async def test_kv_put_create_ttl_expire(stub: pb.NatsServiceStub) -> None:
    user = tenant("ttl")
    put = await stub.kv_put(
        pb.KvPutRequest(user_id=user, bucket="b", key="session", value=b"v", ttl=SECOND)
    )
    created = await stub.kv_create(
        pb.KvCreateRequest(user_id=user, bucket="b", key="lock", value=b"me", ttl=SECOND)
    )
    assert put.revision and created.revision
    await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key="stays", value=b"v"))

    async def gone() -> bool:
        for key in ("session", "lock"):
            got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="b", key=key))
            if got.found:
                return False
        return True

    await eventually(gone)
    assert (await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="b", key="stays"))).found
    # An expired lock can be taken again.
    again = await stub.kv_create(
        pb.KvCreateRequest(user_id=user, bucket="b", key="lock", value=b"you")
    )
    assert again.success
    for bad in (
        pb.KvPutRequest(
            user_id=user, bucket="b", key="k", value=b"v", ttl=datetime.timedelta(seconds=0.2)
        ),
    ):
        assert await status_of(stub.kv_put(bad)) == Status.INVALID_ARGUMENT


async def test_kv_purge_with_ttl_leaves_a_marker_that_expires(stub: pb.NatsServiceStub) -> None:
    user = tenant("ttl")
    await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="p", key="k", value=b"v"))
    error = await error_of(
        stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="p", key="k", ttl=SECOND))
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert "purge" in error.message
    await stub.kv_delete(
        pb.KvDeleteRequest(user_id=user, bucket="p", key="k", purge=True, ttl=SECOND)
    )
    history = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="p", key="k"))
    assert [e.operation for e in history.entries] == [pb.KvOperation.PURGE]

    async def no_trace() -> bool:
        got = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="p", key="k"))
        return not got.entries

    await eventually(no_trace)


async def test_kv_watch_and_history_show_the_servers_marker(stub: pb.NatsServiceStub) -> None:
    """A bucket made with limit_marker_ttl: an expired value shows as NATS reports it, a PURGE
    with marker_reason MaxAge."""
    user = tenant("ttl")
    error = await error_of(
        stub.kv_create_bucket(
            pb.KvCreateBucketRequest(
                user_id=user, bucket="m", limit_marker_ttl=datetime.timedelta(milliseconds=500)
            )
        )
    )
    assert error.status == Status.INVALID_ARGUMENT
    assert error.message.startswith("limit_marker_ttl")
    # nats-server 2.15.1 expires TTL'd messages late (about one marker TTL) on a stream with
    # markers: keep the marker TTL short.
    made = await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(user_id=user, bucket="m", limit_marker_ttl=5 * SECOND)
    )
    assert made.bucket is not None
    assert made.bucket.limit_marker_ttl == 5 * SECOND
    watch = stub.kv_watch(pb.KvWatchRequest(user_id=user, bucket="m", key="k"))
    entries: list[pb.KvEntry] = []

    async def collect() -> None:
        async for entry in watch:
            entries.append(entry)
            if len(entries) == 2:
                return

    task = asyncio.create_task(collect())
    try:
        await asyncio.sleep(0.2)  # the watch is in place before the put
        await stub.kv_put(
            pb.KvPutRequest(user_id=user, bucket="m", key="k", value=b"brief", ttl=SECOND)
        )
        await asyncio.wait_for(task, 15)
    finally:
        task.cancel()
    assert [(e.operation, e.marker_reason) for e in entries] == [
        (pb.KvOperation.PUT, ""),
        (pb.KvOperation.PURGE, "MaxAge"),
    ]
    history = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="m", key="k"))
    assert [(e.operation, e.marker_reason) for e in history.entries] == [
        (pb.KvOperation.PURGE, "MaxAge")
    ]


async def test_old_bucket_without_ttls_keeps_working(
    stub: pb.NatsServiceStub, nc: nats.NATS
) -> None:
    user = tenant("ttl")
    bucket = ns_of(user).kv_bucket("old")
    config = bucket_config(bucket, BucketDefaults())
    config.pop("allow_msg_ttl")  # as buckets made before nats-server 2.11 are
    answer = await nc.request(
        f"$JS.API.STREAM.CREATE.KV_{bucket}", json.dumps(config).encode(), timeout=5
    )
    assert "error" not in json.loads(answer.data), answer.data
    assert (
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="old", key="k", value=b"v"))
    ).success
    for call in (
        stub.kv_put(pb.KvPutRequest(user_id=user, bucket="old", key="k", value=b"v", ttl=SECOND)),
        stub.kv_create(
            pb.KvCreateRequest(user_id=user, bucket="old", key="n", value=b"v", ttl=SECOND)
        ),
        stub.kv_delete(
            pb.KvDeleteRequest(user_id=user, bucket="old", key="k", purge=True, ttl=SECOND)
        ),
    ):
        error = await error_of(call)
        assert error.status == Status.FAILED_PRECONDITION
        assert "bucket old was created without per-message TTLs" in error.message
        assert ns_of(user).key not in error.message
    got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="old", key="k"))
    assert got.found
