"""Object streams that end badly leave nothing behind: no chunks, no consumers, no half objects."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from tests.conftest import tenant, wait_for
from tests.integration.test_objects import obj_bucket, put_stream

Stub = pb.NatsServiceStub


async def stream_messages(nc: nats.NATS, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages)


async def test_abandoned_upload_is_purged(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    await put_stream(stub, user, "ab", "keep", b"kept")  # the bucket exists, one object in it
    stream = "OBJ_" + obj_bucket(user, "ab")
    before = await stream_messages(nc, stream)
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ObjectPutStreamRequest]:
        header = pb.ObjectPutHeader(user_id=user, bucket="ab", object_name="half")
        yield pb.ObjectPutStreamRequest(header=header)
        for _ in range(8):
            yield pb.ObjectPutStreamRequest(chunk=os.urandom(128 * 1024))
        sent.set()
        await asyncio.sleep(3600)  # the client goes silent, then gives up

    task = asyncio.create_task(stub.object_put_stream(requests()))
    await asyncio.wait_for(sent.wait(), 10)
    counts: list[int] = []

    async def grew() -> bool:
        counts.append(await stream_messages(nc, stream))
        return counts[-1] > before

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await grew():
        assert loop.time() < deadline, "no chunk reached the stream"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    deadline = loop.time() + 10
    while await stream_messages(nc, stream) != before:
        assert loop.time() < deadline, "the abandoned chunks were not purged"
        await asyncio.sleep(0.05)
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="ab", object_name="half"))
    assert not got.found
    assert (await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="ab"))).objects[
        0
    ].name == "keep"


async def test_abandoned_download_leaves_no_consumer(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    await put_stream(stub, user, "dl", "big", os.urandom(4 * 1024 * 1024))
    stream = "OBJ_" + obj_bucket(user, "dl")
    js = nc.jetstream()
    got_first = asyncio.Event()

    async def read_a_little() -> None:
        count = 0
        async for _ in stub.object_get_stream(
            pb.ObjectGetRequest(user_id=user, bucket="dl", object_name="big")
        ):
            count += 1
            if count == 3:
                got_first.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(read_a_little())
    await asyncio.wait_for(got_first.wait(), 10)
    assert (await js.stream_info(stream)).state.consumer_count == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await js.stream_info(stream)).state.consumer_count:
        assert loop.time() < deadline, "the download's consumer outlived it"
        await asyncio.sleep(0.05)


async def test_full_bucket_refuses_and_purges(make_gateway: object, nc: nats.NATS) -> None:
    gw: Gateway = await make_gateway(object_max_bytes=1024 * 1024)  # type: ignore[operator]
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        await put_stream(stub, user, "full", "small", b"s" * 1000)
        stream = "OBJ_" + obj_bucket(user, "full")
        before = await stream_messages(nc, stream)
        with pytest.raises(GRPCError) as err:
            await put_stream(stub, user, "full", "too-big", os.urandom(2 * 1024 * 1024))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert await stream_messages(nc, stream) == before
        got = await stub.object_get(
            pb.ObjectGetRequest(user_id=user, bucket="full", object_name="small")
        )
        assert got.data == b"s" * 1000
    finally:
        channel.close()


async def test_gateway_stop_ends_open_watches_with_where_to_resume(make_gateway: object) -> None:
    gw: Gateway = await make_gateway(shutdown_grace=5.0)  # type: ignore[operator]
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    put = await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="sw", key="k", value=b"v"))
    seen: list[int] = []
    errors: list[GRPCError] = []

    async def watch() -> None:
        try:
            async for entry in stub.kv_watch(pb.KvWatchRequest(user_id=user, bucket="sw")):
                seen.append(entry.revision)
        except GRPCError as exc:
            errors.append(exc)

    task = asyncio.create_task(watch())
    await wait_for(lambda: bool(seen))
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(gw.stop(), 15)
    await asyncio.wait_for(task, 5)
    assert loop.time() - start < 4  # ended at once, not after the grace period
    assert seen == [put.revision]
    assert len(errors) == 1
    assert errors[0].status is Status.UNAVAILABLE
    assert f"from_revision={put.revision + 1}" in (errors[0].message or "")
    channel.close()


async def test_concurrent_writers_of_one_name_leave_one_version_and_no_orphans(
    stub: Stub, nc: nats.NATS
) -> None:
    user = tenant()
    versions = [bytes([i]) * 300_000 for i in range(6)]
    await asyncio.gather(*(put_stream(stub, user, "race", "same", v) for v in versions))
    got = await stub.object_get(
        pb.ObjectGetRequest(user_id=user, bucket="race", object_name="same")
    )
    assert got.found
    assert got.data in versions
    listed = await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="race"))
    assert [o.name for o in listed.objects] == ["same"]
    bucket = obj_bucket(user, "race")
    info = await nc.jetstream().stream_info("OBJ_" + bucket, subjects_filter=">")
    chunk_subjects = [s for s in (info.state.subjects or {}) if ".C." in s]
    assert chunk_subjects == [f"$O.{bucket}.C.{listed.objects[0].object_id}"]
    # Deleting concurrently: one delete does it, the object and its chunks are gone.
    await asyncio.gather(
        *(
            stub.object_delete(
                pb.ObjectDeleteRequest(user_id=user, bucket="race", object_name="same")
            )
            for _ in range(4)
        )
    )
    info = await nc.jetstream().stream_info("OBJ_" + bucket, subjects_filter=">")
    assert [s for s in (info.state.subjects or {}) if ".C." in s] == []
