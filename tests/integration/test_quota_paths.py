"""Quotas hold whichever way a resource comes to exist: unnamed consumers, buckets made by a
first put (also one that fails), updates, and buckets made before the quota was set."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import nats
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, tenant

pytestmark = pytest.mark.asyncio
MIB = 1024 * 1024


async def _status(call: Awaitable[Any]) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await call
    return info.value


async def _stub(make_gateway: GatewayFactory, **settings: Any) -> pb.NatsServiceStub:
    gw = await make_gateway(**settings)
    return pb.NatsServiceStub(Channel("127.0.0.1", gw.port))


async def test_unnamed_consumers_count_against_the_quota(make_gateway: GatewayFactory) -> None:
    stub = await _stub(make_gateway, quota_consumers=2)
    user = tenant()
    await stub.create_stream(
        pb.CreateStreamRequest(user_id=user, config=pb.StreamConfig(name="w", subjects=["w.>"]))
    )
    unnamed = pb.CreateConsumerRequest(user_id=user, stream_name="w", config=pb.ConsumerConfig())
    assert (await stub.create_consumer(unnamed)).success
    assert (await stub.create_consumer(unnamed)).success
    error = await _status(stub.create_consumer(unnamed))
    assert error.status is Status.RESOURCE_EXHAUSTED and "quota 'consumers'" in (
        error.message or ""
    )
    named = pb.CreateConsumerRequest(
        user_id=user, stream_name="w", config=pb.ConsumerConfig(durable_name="d")
    )
    assert (await _status(stub.create_consumer(named))).status is Status.RESOURCE_EXHAUSTED


async def _put_stream(
    stub: pb.NatsServiceStub, user: str, bucket: str, data: bytes, sha256: str = ""
) -> pb.ObjectPutResponse:
    async def requests() -> AsyncIterator[pb.ObjectPutStreamRequest]:
        header = pb.ObjectPutHeader(user_id=user, bucket=bucket, object_name="o", sha256=sha256)
        yield pb.ObjectPutStreamRequest(header=header)
        for offset in range(0, len(data), 256 * 1024):
            yield pb.ObjectPutStreamRequest(chunk=data[offset : offset + 256 * 1024])

    return await stub.object_put_stream(requests())


async def test_bucket_of_a_failed_first_upload_has_the_byte_cap(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    stub = await _stub(make_gateway, quota_max_bytes=MIB)
    user = tenant()
    stream = "OBJ_" + Namespace(Tenant.user(user), "natsgw").object_bucket("up")
    wrong = hashlib.sha256(b"something else").hexdigest()
    error = await _status(_put_stream(stub, user, "up", b"x" * 1000, sha256=wrong))
    assert error.status is not Status.OK
    assert (await nc.jetstream().stream_info(stream)).config.max_bytes == MIB
    # ...so a later upload cannot go beyond the quota.
    big = await _status(_put_stream(stub, user, "up", os.urandom(2 * MIB)))
    assert big.status in (Status.RESOURCE_EXHAUSTED, Status.FAILED_PRECONDITION), big


async def test_first_upload_cannot_exceed_the_quota(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    """The bucket is made with the cap, not capped after the upload filled it."""
    stub = await _stub(make_gateway, quota_max_bytes=MIB)
    user = tenant()
    error = await _status(_put_stream(stub, user, "first", os.urandom(2 * MIB)))
    assert error.status in (Status.RESOURCE_EXHAUSTED, Status.FAILED_PRECONDITION), error
    stream = "OBJ_" + Namespace(Tenant.user(user), "natsgw").object_bucket("first")
    info = await nc.jetstream().stream_info(stream)
    assert info.config.max_bytes == MIB and info.state.bytes <= MIB


async def test_kv_bucket_made_by_first_put_has_the_byte_cap(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    stub = await _stub(make_gateway, quota_max_bytes=MIB, kv_max_bytes=64 * MIB)
    user = tenant()
    put = pb.KvPutRequest(user_id=user, bucket="cfg", key="k", value=b"v")
    assert (await stub.kv_put(put)).success
    stream = "KV_" + Namespace(Tenant.user(user), "natsgw").kv_bucket("cfg")
    assert (await nc.jetstream().stream_info(stream)).config.max_bytes == MIB


async def test_bucket_made_before_the_quota_is_capped_on_next_use(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    user = tenant()
    free = await _stub(make_gateway)
    await free.kv_put(pb.KvPutRequest(user_id=user, bucket="old", key="k", value=b"v"))
    stream = "KV_" + Namespace(Tenant.user(user), "natsgw").kv_bucket("old")
    assert (await nc.jetstream().stream_info(stream)).config.max_bytes in (-1, 0)
    limited = await _stub(make_gateway, quota_max_bytes=MIB)
    await limited.kv_put(pb.KvPutRequest(user_id=user, bucket="old", key="k", value=b"w"))
    assert (await nc.jetstream().stream_info(stream)).config.max_bytes == MIB


async def test_update_stream_cannot_raise_max_bytes_beyond_the_quota(
    make_gateway: GatewayFactory, nc: nats.NATS
) -> None:
    stub = await _stub(make_gateway, quota_max_bytes=MIB)
    user = tenant()
    name = Namespace(Tenant.user(user), "natsgw").stream("s")
    config = pb.StreamConfig(name="s", subjects=["s.>"])
    assert (await stub.create_stream(pb.CreateStreamRequest(user_id=user, config=config))).success
    assert (await nc.jetstream().stream_info(name)).config.max_bytes == MIB
    above = pb.StreamConfig(name="s", subjects=["s.>"], max_bytes=2 * MIB)
    error = await _status(
        stub.update_stream(pb.UpdateStreamRequest(user_id=user, stream_name="s", config=above))
    )
    assert error.status is Status.RESOURCE_EXHAUSTED and "max_bytes" in (error.message or "")
    for update in (
        pb.UpdateStreamRequest(user_id=user, stream_name="s", config=pb.StreamConfig()),
        pb.UpdateStreamRequest(user_id=user, stream_name="s", config=pb.StreamConfig(max_bytes=-1)),
        pb.UpdateStreamRequest(user_id=user, stream_name="s"),  # no config at all
    ):
        await stub.update_stream(update)
        assert (await nc.jetstream().stream_info(name)).config.max_bytes == MIB, update
