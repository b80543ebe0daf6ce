"""KV watch (ordering, resume, reconnect), bucket management and TTL through the gateway."""

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
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from tests.conftest import gateway_settings, tenant
from tests.integration.test_kv import kv_stream, put

Stub = pb.NatsServiceStub


class Watcher:
    """Collects a KVWatch stream in the background."""

    def __init__(self, stub: Stub, request: pb.KvWatchRequest) -> None:
        self.entries: list[pb.KvEntry] = []
        self.error: BaseException | None = None
        self._stub = stub
        self._request = request
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Watcher:
        ready = asyncio.Event()

        async def run() -> None:
            try:
                async with self._stub.channel.request(
                    "/isa.nats.NATSService/KVWatch",
                    cardinality=Cardinality.UNARY_STREAM,
                    request_type=pb.KvWatchRequest,
                    reply_type=pb.KvEntry,
                ) as stream:
                    await stream.send_message(self._request, end=True)
                    await stream.recv_initial_metadata()
                    ready.set()
                    async for entry in stream:
                        self.entries.append(entry)
            except BaseException as exc:
                self.error = exc
                ready.set()
                if isinstance(exc, asyncio.CancelledError):
                    raise

        self._task = asyncio.create_task(run())
        await asyncio.wait_for(ready.wait(), 10)
        if self.error is not None:
            raise self.error
        return self

    async def wait_count(self, count: int, timeout: float = 10.0) -> list[pb.KvEntry]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.entries) < count:
            if self.error is not None:
                raise AssertionError(f"watch ended: {self.error!r}")
            if loop.time() > deadline:
                raise AssertionError(f"only {len(self.entries)} of {count} entries: {self.entries}")
            await asyncio.sleep(0.02)
        return self.entries

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


@contextlib.asynccontextmanager
async def watching(stub: Stub, request: pb.KvWatchRequest) -> AsyncIterator[Watcher]:
    watcher = await Watcher(stub, request).start()
    try:
        yield watcher
    finally:
        await watcher.stop()


async def test_watch_delivers_current_values_then_puts_and_deletes_in_order(stub: Stub) -> None:
    user = tenant()
    await put(stub, user, "w", "a", b"a0")
    await put(stub, user, "w", "b", b"b0")
    await put(stub, user, "w", "a", b"a1")
    async with watching(stub, pb.KvWatchRequest(user_id=user, bucket="w")) as watcher:
        initial = await watcher.wait_count(2)
        assert sorted((e.key, e.value) for e in initial) == [("a", b"a1"), ("b", b"b0")]
        await put(stub, user, "w", "c", b"c0")
        await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="w", key="a"))
        await put(stub, user, "w", "b", b"b1")
        entries = await watcher.wait_count(5)
    live = entries[2:]
    assert [(e.key, e.operation, e.value) for e in live] == [
        ("c", pb.KvOperation.PUT, b"c0"),
        ("a", pb.KvOperation.DELETE, b""),
        ("b", pb.KvOperation.PUT, b"b1"),
    ]
    revisions = [e.revision for e in entries]
    assert revisions == sorted(revisions)
    assert all(e.created is not None for e in entries)


async def test_watch_of_a_pattern_only_sees_matching_keys(stub: Stub) -> None:
    user = tenant()
    await put(stub, user, "wp", "orders.1", b"x")
    request = pb.KvWatchRequest(user_id=user, bucket="wp", key="orders.*", updates_only=True)
    async with watching(stub, request) as watcher:
        await put(stub, user, "wp", "users.1", b"no")
        await put(stub, user, "wp", "orders.2", b"yes")
        await put(stub, user, "wp", "orders.2.deep", b"no")
        await put(stub, user, "wp", "orders.3", b"yes")
        entries = await watcher.wait_count(2)
        await asyncio.sleep(0.2)
    assert [e.key for e in watcher.entries] == ["orders.2", "orders.3"]
    assert entries[0].value == b"yes"


async def test_watch_resumes_from_a_revision(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="wr", history=10))
    revs = [await put(stub, user, "wr", "k", f"v{i}".encode()) for i in range(4)]
    request = pb.KvWatchRequest(user_id=user, bucket="wr", key="k", from_revision=revs[2])
    async with watching(stub, request) as watcher:
        entries = await watcher.wait_count(2)
        await put(stub, user, "wr", "k", b"v4")
        entries = await watcher.wait_count(3)
    assert [e.value for e in entries] == [b"v2", b"v3", b"v4"]


async def test_watch_of_missing_bucket_is_not_found(stub: Stub) -> None:
    with pytest.raises(GRPCError) as err:
        async for _ in stub.kv_watch(pb.KvWatchRequest(user_id=tenant(), bucket="missing")):
            pass
    assert err.value.status is Status.NOT_FOUND


@pytest.mark.parametrize("pattern", ["a.>.b", "a*", ".a", "a..b", "sp ace"])
async def test_watch_refuses_bad_patterns(stub: Stub, pattern: str) -> None:
    with pytest.raises(GRPCError) as err:
        async for _ in stub.kv_watch(pb.KvWatchRequest(user_id=tenant(), bucket="b", key=pattern)):
            pass
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_watch_ends_with_not_found_when_the_bucket_is_deleted(stub: Stub) -> None:
    user = tenant()
    await put(stub, user, "wd", "k", b"v")
    async with watching(stub, pb.KvWatchRequest(user_id=user, bucket="wd")) as watcher:
        await watcher.wait_count(1)
        await stub.kv_delete_bucket(pb.KvDeleteBucketRequest(user_id=user, bucket="wd"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while watcher.error is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert isinstance(watcher.error, GRPCError)
    assert watcher.error.status is Status.NOT_FOUND


async def test_bucket_management(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    created = await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(
            user_id=user,
            bucket="managed",
            history=7,
            ttl=datetime.timedelta(hours=1),
            max_bytes=1024 * 1024,
            storage=pb.BucketStorage.MEMORY,
        )
    )
    assert created.success
    info = created.bucket
    assert info.bucket == "managed"
    assert info.history == 7
    assert info.ttl == datetime.timedelta(hours=1)
    assert info.max_bytes == 1024 * 1024
    assert info.storage is pb.BucketStorage.MEMORY
    assert info.replicas == 1
    assert info.created is not None

    stream = await nc.jetstream().stream_info(kv_stream(user, "managed"))
    assert stream.config.max_msgs_per_subject == 7
    assert stream.config.max_bytes == 1024 * 1024
    assert stream.config.max_age == 3600

    with pytest.raises(GRPCError) as err:
        await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="managed"))
    assert err.value.status is Status.ALREADY_EXISTS

    await put(stub, user, "managed", "k", b"12345")
    await put(stub, user, "other", "k", b"x")
    status = await stub.kv_bucket_status(pb.KvBucketStatusRequest(user_id=user, bucket="managed"))
    assert status.bucket.values == 1
    assert status.bucket.bytes > 5

    listed = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=user))
    assert [b.bucket for b in listed.buckets] == ["managed", "other"]

    deleted = await stub.kv_delete_bucket(pb.KvDeleteBucketRequest(user_id=user, bucket="managed"))
    assert deleted.success
    listed = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=user))
    assert [b.bucket for b in listed.buckets] == ["other"]
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().stream_info(kv_stream(user, "managed"))
    for call in (
        stub.kv_delete_bucket(pb.KvDeleteBucketRequest(user_id=user, bucket="managed")),
        stub.kv_bucket_status(pb.KvBucketStatusRequest(user_id=user, bucket="managed")),
    ):
        with pytest.raises(GRPCError) as err:
            await call
        assert err.value.status is Status.NOT_FOUND


@pytest.mark.parametrize(
    ("field", "request_kwargs"),
    [
        ("history", {"history": 65}),
        ("ttl", {"ttl": datetime.timedelta(seconds=-1)}),
        ("max_bytes", {"max_bytes": -5}),
        ("replicas", {"replicas": 9}),
    ],
)
async def test_create_bucket_refuses_bad_limits(
    stub: Stub, field: str, request_kwargs: dict[str, object]
) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.kv_create_bucket(
            pb.KvCreateBucketRequest(user_id=tenant(), bucket="bad", **request_kwargs)  # type: ignore[arg-type]
        )
    assert err.value.status is Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith(field)


async def test_max_bytes_is_enforced(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(user_id=user, bucket="tiny", max_bytes=4096)
    )
    stored = 0
    with pytest.raises(GRPCError) as err:
        for i in range(10):
            await put(stub, user, "tiny", f"k{i}", b"x" * 1000)
            stored += 1
    assert err.value.status is Status.RESOURCE_EXHAUSTED
    assert 1 <= stored < 10
    keys = await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="tiny"))
    assert len(keys.keys) == stored


async def test_ttl_expiry(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(user_id=user, bucket="ttl", ttl=datetime.timedelta(seconds=1))
    )
    await put(stub, user, "ttl", "k", b"short-lived")
    assert (await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="ttl", key="k"))).found
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="ttl", key="k"))).found:
        assert loop.time() < deadline, "value outlived its 1s TTL"
        await asyncio.sleep(0.2)
    keys = await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="ttl"))
    assert keys.keys == []


async def test_settings_ttl_applies_to_buckets_made_on_first_put(
    make_gateway: object, nc: nats.NATS
) -> None:
    gw: Gateway = await make_gateway(kv_ttl=1.0, kv_history=3)  # type: ignore[operator]
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        await put(stub, user, "auto", "k", b"v")
        info = await nc.jetstream().stream_info(kv_stream(user, "auto"))
        assert info.config.max_age == 1.0
        assert info.config.max_msgs_per_subject == 3
    finally:
        channel.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def put_retrying(stub: Stub, user: str, bucket: str, key: str, value: bytes) -> int:
    """Puts while the gateway reconnects: UNAVAILABLE / DEADLINE_EXCEEDED mean "not stored"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            return await put(stub, user, bucket, key, value)
        except GRPCError as exc:
            if exc.status not in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                raise
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_watch_carries_on_after_nats_restarts(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", port=free_port())
    await server.start()
    gateway = Gateway(gateway_settings(server))
    await gateway.start()
    channel = Channel("127.0.0.1", gateway.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    try:
        await put(stub, user, "rw", "k", b"before-0")
        async with watching(stub, pb.KvWatchRequest(user_id=user, bucket="rw")) as watcher:
            await watcher.wait_count(1)
            await put(stub, user, "rw", "k", b"before-1")
            await watcher.wait_count(2)

            await server.stop()
            await asyncio.sleep(0.5)
            await server.start()  # same port, same JetStream store

            await put_retrying(stub, user, "rw", "k", b"after-0")
            await put_retrying(stub, user, "rw", "j", b"after-1")
            entries = await watcher.wait_count(4, timeout=30)
            await asyncio.sleep(0.3)
            assert watcher.error is None
        assert [e.value for e in watcher.entries] == [
            b"before-0",
            b"before-1",
            b"after-0",
            b"after-1",
        ]
        revisions = [e.revision for e in entries]
        assert revisions == sorted(set(revisions))
    finally:
        channel.close()
        await gateway.stop()
        await server.stop()
