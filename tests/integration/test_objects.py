"""Object Store through the gateway, against a real nats-server (grpclib client)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from collections.abc import Iterator

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import BucketStorageKind
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import tenant

Stub = pb.NatsServiceStub


def obj_bucket(user: str, bucket: str) -> str:
    return Namespace(Tenant.user(user)).object_bucket(bucket)


def nats_digest(data: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def put_stream(
    stub: Stub,
    user: str,
    bucket: str,
    name: str,
    data: bytes,
    *,
    piece: int = 100_000,
    metadata: dict[str, str] | None = None,
    sha256: str = "",
) -> pb.ObjectPutResponse:
    header = pb.ObjectPutHeader(
        user_id=user, bucket=bucket, object_name=name, metadata=metadata or {}, sha256=sha256
    )
    requests = [pb.ObjectPutStreamRequest(header=header)]
    requests += [pb.ObjectPutStreamRequest(chunk=p) for p in pieces(data, piece)]
    return await stub.object_put_stream(requests)


async def get_stream(
    stub: Stub, user: str, bucket: str, name: str
) -> tuple[pb.ObjectGetStreamResponse, bytes, int]:
    head: pb.ObjectGetStreamResponse | None = None
    body = bytearray()
    count = 0
    async for message in stub.object_get_stream(
        pb.ObjectGetRequest(user_id=user, bucket=bucket, object_name=name)
    ):
        if head is None:
            head = message
            continue
        assert message.info is None
        body += message.chunk
        count += 1
    assert head is not None
    return head, bytes(body), count


async def test_unary_put_get_round_trip_with_metadata(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    meta = {"content-type": "text/plain", "owner": "ünïcode ✓", "empty": ""}
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    put = await stub.object_put(
        pb.ObjectPutRequest(
            user_id=user, bucket="docs", object_name="a.txt", data=b"hello", metadata=meta
        )
    )
    assert put.success
    assert put.object_id
    assert put.info is not None
    assert put.info.size == 5
    assert put.info.digest == nats_digest(b"hello")
    assert put.info.metadata == meta

    got = await stub.object_get(
        pb.ObjectGetRequest(user_id=user, bucket="docs", object_name="a.txt")
    )
    assert got.found
    assert got.data == b"hello"
    assert got.metadata == meta

    listed = await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="docs"))
    assert [o.name for o in listed.objects] == ["a.txt"]
    info = listed.objects[0]
    assert info.size == 5
    assert info.metadata == meta
    assert info.digest == nats_digest(b"hello")
    assert info.object_id == put.object_id
    assert info.modified is not None
    assert before <= info.modified <= datetime.datetime.now(datetime.UTC)

    # A real NATS object store that native clients read.
    store = await nc.jetstream().object_store(obj_bucket(user, "docs"))
    result = await store.get("a.txt")
    assert result.data == b"hello"
    assert result.info.digest == nats_digest(b"hello")


async def test_missing_object_or_bucket_is_not_found(stub: Stub) -> None:
    user = tenant()
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="none", object_name="x"))
    assert not got.found
    with pytest.raises(GRPCError) as missing:  # not [], which an empty bucket answers
        await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="none"))
    assert missing.value.status is Status.NOT_FOUND
    assert missing.value.message == "object bucket 'none' does not exist"
    await stub.object_put(pb.ObjectPutRequest(user_id=user, bucket="b", object_name="y", data=b"1"))
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="b", object_name="x"))
    assert not got.found
    head, body, _ = await get_stream(stub, user, "b", "x")
    assert not head.found
    assert body == b""


async def test_delete_and_overwrite(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    first = await put_stream(stub, user, "ow", "obj", os.urandom(300_000))
    second = await stub.object_put(
        pb.ObjectPutRequest(user_id=user, bucket="ow", object_name="obj", data=b"v2")
    )
    assert second.object_id != first.object_id
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="ow", object_name="obj"))
    assert got.data == b"v2"
    # The first version's chunks are gone from NATS.
    stream = await nc.jetstream().stream_info("OBJ_" + obj_bucket(user, "ow"), subjects_filter=">")
    chunk_subjects = [s for s in (stream.state.subjects or {}) if ".C." in s]
    assert chunk_subjects == [f"$O.{obj_bucket(user, 'ow')}.C.{second.object_id}"]

    deleted = await stub.object_delete(
        pb.ObjectDeleteRequest(user_id=user, bucket="ow", object_name="obj")
    )
    assert deleted.success
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="ow", object_name="obj"))
    assert not got.found
    assert (await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="ow"))).objects == []
    # Idempotent.
    again = await stub.object_delete(
        pb.ObjectDeleteRequest(user_id=user, bucket="ow", object_name="obj")
    )
    assert again.success


async def test_streamed_multi_chunk_object_with_digest(stub: Stub, gateway: Gateway) -> None:
    user = tenant()
    chunk = gateway.settings.object_chunk_size
    data = os.urandom(5 * chunk + 12345)  # 6 NATS chunks, pieces straddling chunk borders
    digest = hashlib.sha256(data).hexdigest()
    put = await put_stream(
        stub, user, "big", "blob.bin", data, piece=50_001, metadata={"k": "v"}, sha256=digest
    )
    assert put.info is not None
    assert put.info.size == len(data)
    assert put.info.digest == nats_digest(data)

    head, body, count = await get_stream(stub, user, "big", "blob.bin")
    assert head.found
    assert head.info is not None
    assert head.info.size == len(data)
    assert head.info.metadata == {"k": "v"}
    assert head.info.digest == nats_digest(data)
    assert count == 6
    assert hashlib.sha256(body).hexdigest() == digest


async def test_stream_put_with_wrong_digest_stores_nothing(stub: Stub, nc: nats.NATS) -> None:
    user = tenant()
    data = os.urandom(400_000)
    with pytest.raises(GRPCError) as err:
        await put_stream(stub, user, "dg", "x", data, sha256="0" * 64)
    assert err.value.status is Status.DATA_LOSS
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="dg", object_name="x"))
    assert not got.found
    info = await nc.jetstream().stream_info("OBJ_" + obj_bucket(user, "dg"))
    assert info.state.messages == 0  # the chunks were purged


async def test_corrupted_chunk_is_data_loss(stub: Stub, nc: nats.NATS, gateway: Gateway) -> None:
    user = tenant()
    chunk = gateway.settings.object_chunk_size
    size = chunk + chunk // 2
    put = await put_stream(stub, user, "cr", "x", os.urandom(size))
    bucket = obj_bucket(user, "cr")
    js = nc.jetstream()
    # Replace the content behind the gateway's back: same chunk count, different bytes.
    subject = f"$O.{bucket}.C.{put.object_id}"
    await js.purge_stream("OBJ_" + bucket, subject=subject)
    await js.publish(subject, b"\0" * chunk)
    await js.publish(subject, b"\0" * (size - chunk))
    with pytest.raises(GRPCError) as err:
        await get_stream(stub, user, "cr", "x")
    assert err.value.status is Status.DATA_LOSS
    with pytest.raises(GRPCError) as err:
        await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="cr", object_name="x"))
    assert err.value.status is Status.DATA_LOSS


async def test_stream_put_protocol_errors(stub: Stub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.object_put_stream([pb.ObjectPutStreamRequest(chunk=b"no header")])
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "header" in (err.value.message or "")
    header = pb.ObjectPutHeader(user_id=tenant(), bucket="p", object_name="x")
    with pytest.raises(GRPCError) as err:
        await stub.object_put_stream(
            [pb.ObjectPutStreamRequest(header=header), pb.ObjectPutStreamRequest(header=header)]
        )
    assert err.value.status is Status.INVALID_ARGUMENT
    bad = pb.ObjectPutHeader(user_id=tenant(), bucket="p", object_name="x", sha256="xyz")
    with pytest.raises(GRPCError) as err:
        await stub.object_put_stream([pb.ObjectPutStreamRequest(header=bad)])
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_empty_object(stub: Stub) -> None:
    user = tenant()
    await stub.object_put(pb.ObjectPutRequest(user_id=user, bucket="e", object_name="empty"))
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="e", object_name="empty"))
    assert got.found
    assert got.data == b""
    head, body, count = await get_stream(stub, user, "e", "empty")
    assert head.found
    assert body == b""
    assert count == 0


@pytest.mark.parametrize(
    "name",
    ["with space.txt", "ünïcode/路径/ファイル", "a.b.c", "*>", "../../etc/passwd", "x" * 1000],
)
async def test_object_names_are_any_utf8(stub: Stub, name: str) -> None:
    user = tenant()
    await stub.object_put(
        pb.ObjectPutRequest(user_id=user, bucket="n", object_name=name, data=b"1")
    )
    got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="n", object_name=name))
    assert got.found
    assert got.data == b"1"
    listed = await stub.object_list(pb.ObjectListRequest(user_id=user, bucket="n"))
    assert [o.name for o in listed.objects] == [name]


@pytest.mark.parametrize("name", ["", "nul\0inside", "y" * 1025])
async def test_bad_object_names_are_refused(stub: Stub, name: str) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.object_put(
            pb.ObjectPutRequest(user_id=tenant(), bucket="n", object_name=name, data=b"1")
        )
    assert err.value.status is Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("object_name")


async def test_unary_limits_are_resource_exhausted(make_gateway: object) -> None:
    gw: Gateway = await make_gateway(max_message_size=256 * 1024)  # type: ignore[operator]
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        with pytest.raises(GRPCError) as err:
            await stub.object_put(
                pb.ObjectPutRequest(
                    user_id=user, bucket="l", object_name="big", data=b"x" * (300 * 1024)
                )
            )
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        # Streamed, the same object goes in, but a unary get cannot return it.
        await put_stream(stub, user, "l", "big", b"x" * (300 * 1024))
        with pytest.raises(GRPCError) as err:
            await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="l", object_name="big"))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "ObjectGetStream" in (err.value.message or "")
        head, body, _ = await get_stream(stub, user, "l", "big")
        assert head.found
        assert body == b"x" * (300 * 1024)
        # Up to the limit, unary works.
        await stub.object_put(
            pb.ObjectPutRequest(user_id=user, bucket="l", object_name="ok", data=b"y" * 200_000)
        )
        got = await stub.object_get(pb.ObjectGetRequest(user_id=user, bucket="l", object_name="ok"))
        assert got.data == b"y" * 200_000
    finally:
        channel.close()


async def test_bucket_defaults_from_settings(make_gateway: object, nc: nats.NATS) -> None:
    gw: Gateway = await make_gateway(  # type: ignore[operator]
        object_storage=BucketStorageKind.MEMORY,
        object_max_bytes=8 * 1024 * 1024,
        object_chunk_size=64 * 1024,
    )
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        await put_stream(stub, user, "cfg", "o", os.urandom(200_000))
        info = await nc.jetstream().stream_info("OBJ_" + obj_bucket(user, "cfg"))
        assert info.config.storage == nats.js.api.StorageType.MEMORY
        assert info.config.max_bytes == 8 * 1024 * 1024
        assert info.state.messages == 4 + 1  # 64 KiB chunks of 200 000 bytes, plus the meta
    finally:
        channel.close()
