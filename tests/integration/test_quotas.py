"""Per-tenant quotas: each one hit through the real handlers, checked on NATS where it matters."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import structlog
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import tenant

GatewayFactory = Callable[..., Awaitable[Gateway]]
MIB = 1024 * 1024


@pytest_asyncio.fixture
async def quota_stub(
    make_gateway: GatewayFactory, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[pb.NatsServiceStub, Gateway]]:
    gw = await make_gateway(**request.param)
    channel = Channel("127.0.0.1", gw.port)
    yield pb.NatsServiceStub(channel), gw
    channel.close()


async def exhausted(call: Awaitable[Any], quota: str) -> str:
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status == Status.RESOURCE_EXHAUSTED, info.value.message
    message = info.value.message or ""
    assert f"quota '{quota}'" in message, message
    return message


def stream_request(user: str, name: str, max_bytes: int = 0) -> pb.CreateStreamRequest:
    return pb.CreateStreamRequest(
        user_id=user,
        config=pb.StreamConfig(name=name, subjects=[f"{name}.>"], max_bytes=max_bytes),
    )


@pytest.mark.parametrize("quota_stub", [{"quota_streams": 2}], indirect=True)
async def test_stream_quota(quota_stub: tuple[pb.NatsServiceStub, Gateway]) -> None:
    stub, gw = quota_stub
    user, other = tenant(), tenant()
    assert (await stub.create_stream(stream_request(user, "s1"))).success
    assert (await stub.create_stream(stream_request(user, "s2"))).success
    with structlog.testing.capture_logs() as logs:
        message = await exhausted(stub.create_stream(stream_request(user, "s3")), "streams")
    assert "2 of 2" in message
    [audit] = [e for e in logs if e["event"] == "audit"]
    assert (audit["outcome"], audit["status"], audit["rpc"]) == (
        "refused",
        "RESOURCE_EXHAUSTED",
        "CreateStream",
    )
    assert audit["resource"] == {"config.name": "s3"} and "quota 'streams'" in audit["reason"]
    # The refused stream was not created.
    listed = await stub.list_streams(pb.ListStreamsRequest(user_id=user))
    assert sorted(s.name for s in listed.streams) == ["s1", "s2"]
    # Creating an existing stream again creates nothing, so it is not refused.
    assert (await stub.create_stream(stream_request(user, "s1"))).success
    # Another tenant has its own count.
    assert (await stub.create_stream(stream_request(other, "s1"))).success
    # Deleting one makes room.
    await stub.delete_stream(pb.DeleteStreamRequest(user_id=user, stream_name="s2"))
    assert (await stub.create_stream(stream_request(user, "s3"))).success
    text = gw.metrics.exposition().decode()
    assert 'natsgw_quota_refusals_total{quota="streams"} 1.0' in text


@pytest.mark.parametrize("quota_stub", [{"quota_consumers": 1}], indirect=True)
async def test_consumer_quota(quota_stub: tuple[pb.NatsServiceStub, Gateway]) -> None:
    stub, _ = quota_stub
    user = tenant()
    await stub.create_stream(stream_request(user, "work"))

    def consumer(name: str) -> pb.CreateConsumerRequest:
        return pb.CreateConsumerRequest(
            user_id=user, stream_name="work", config=pb.ConsumerConfig(durable_name=name)
        )

    assert (await stub.create_consumer(consumer("c1"))).success
    assert (await stub.create_consumer(consumer("c1"))).success  # exists: not counted again
    await exhausted(stub.create_consumer(consumer("c2")), "consumers")


@pytest.mark.parametrize("quota_stub", [{"quota_kv_buckets": 1}], indirect=True)
async def test_kv_bucket_quota(
    quota_stub: tuple[pb.NatsServiceStub, Gateway], nc: nats.NATS
) -> None:
    stub, _ = quota_stub
    user = tenant()
    assert (
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="a", key="k", value=b"1"))
    ).success
    assert (
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="a", key="k", value=b"2"))
    ).success
    await exhausted(
        stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key="k", value=b"1")), "kv_buckets"
    )
    await exhausted(
        stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="c")), "kv_buckets"
    )
    # The refused put and create made no bucket: only "a" exists, here and on NATS.
    listed = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=user))
    assert [b.bucket for b in listed.buckets] == ["a"]
    ns = Namespace(Tenant.user(user))
    for refused in ("b", "c"):
        with pytest.raises(nats.js.errors.NotFoundError):
            await nc.jetstream().stream_info("KV_" + ns.kv_bucket(refused))


@pytest.mark.parametrize("quota_stub", [{"quota_object_buckets": 1}], indirect=True)
async def test_object_bucket_quota(
    quota_stub: tuple[pb.NatsServiceStub, Gateway], nc: nats.NATS
) -> None:
    stub, _ = quota_stub
    user = tenant()
    put = pb.ObjectPutRequest(user_id=user, bucket="files", object_name="a.txt", data=b"hello")
    assert (await stub.object_put(put)).success
    put.object_name = "b.txt"
    assert (await stub.object_put(put)).success
    await exhausted(
        stub.object_put(
            pb.ObjectPutRequest(user_id=user, bucket="more", object_name="c", data=b"x")
        ),
        "object_buckets",
    )
    # The refused put made no bucket on NATS; the allowed one is there.
    ns = Namespace(Tenant.user(user))
    js = nc.jetstream()
    assert (await js.stream_info("OBJ_" + ns.object_bucket("files"))).config.name
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info("OBJ_" + ns.object_bucket("more"))


@pytest.mark.parametrize("quota_stub", [{"quota_max_bytes": MIB}], indirect=True)
async def test_max_bytes_quota_refuses_above_and_applies_to_unlimited(
    quota_stub: tuple[pb.NatsServiceStub, Gateway], nc: nats.NATS
) -> None:
    stub, _ = quota_stub
    user = tenant()
    ns = Namespace(Tenant.user(user))
    js = nc.jetstream()
    message = await exhausted(
        stub.create_stream(stream_request(user, "big", max_bytes=2 * MIB)), "max_bytes"
    )
    assert str(MIB) in message
    assert (await stub.create_stream(stream_request(user, "small", max_bytes=MIB // 2))).success
    assert (await js.stream_info(ns.stream("small"))).config.max_bytes == MIB // 2
    # No limit asked for: the tenant's limit is applied.
    assert (await stub.create_stream(stream_request(user, "unbounded"))).success
    assert (await js.stream_info(ns.stream("unbounded"))).config.max_bytes == MIB
    await exhausted(
        stub.update_stream(
            pb.UpdateStreamRequest(
                user_id=user,
                stream_name="small",
                config=pb.StreamConfig(name="small", subjects=["small.>"], max_bytes=4 * MIB),
            )
        ),
        "max_bytes",
    )
    # Buckets made implicitly by a first put are capped before the client hears of them.
    await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="cache", key="k", value=b"v"))
    assert (await js.stream_info("KV_" + ns.kv_bucket("cache"))).config.max_bytes == MIB
    await stub.object_put(
        pb.ObjectPutRequest(user_id=user, bucket="blobs", object_name="o", data=b"v")
    )
    assert (await js.stream_info("OBJ_" + ns.object_bucket("blobs"))).config.max_bytes == MIB
    await exhausted(
        stub.kv_create_bucket(
            pb.KvCreateBucketRequest(user_id=user, bucket="huge", max_bytes=8 * MIB)
        ),
        "max_bytes",
    )
    assert (
        await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="fits"))
    ).success
    assert (await js.stream_info("KV_" + ns.kv_bucket("fits"))).config.max_bytes == MIB


@pytest.mark.parametrize(
    "quota_stub", [{"quota_publish_rate": 5.0, "quota_publish_burst": 5}], indirect=True
)
async def test_publish_rate_quota_is_a_token_bucket(
    quota_stub: tuple[pb.NatsServiceStub, Gateway],
) -> None:
    stub, _ = quota_stub
    user, other = tenant(), tenant()
    for _ in range(5):
        assert (await stub.publish(pb.PublishRequest(user_id=user, subject="x"))).success
    message = await exhausted(
        stub.publish(pb.PublishRequest(user_id=user, subject="x")), "publish_rate"
    )
    refused_at = asyncio.get_running_loop().time()
    retry = re.search(r"retry in ([0-9.]+)s", message)
    assert retry is not None, message
    # Other tenants have their own bucket.
    assert (await stub.publish(pb.PublishRequest(user_id=other, subject="x"))).success
    # A batch draws one token per message.
    await exhausted(
        stub.publish_batch(
            pb.PublishBatchRequest(
                user_id=other,
                messages=[pb.NatsMessage(subject="x") for _ in range(5)],
            )
        ),
        "publish_rate",
    )
    # A batch larger than the burst could never pass: refused outright, not "retry later".
    message = await exhausted(
        stub.publish_batch(
            pb.PublishBatchRequest(
                user_id=tenant(), messages=[pb.NatsMessage(subject="x") for _ in range(6)]
            )
        ),
        "publish_rate",
    )
    assert "smaller batches" in message
    # Tokens come back at 5/s: wait until the user's bucket holds 2.25 (the next token is due
    # after the advertised retry, the second 0.2s later), so two publishes pass and a third not.
    wake = refused_at + float(retry.group(1)) + 0.2 + 0.05
    await asyncio.sleep(max(0.0, wake - asyncio.get_running_loop().time()))
    assert (await stub.publish(pb.PublishRequest(user_id=user, subject="x"))).success
    assert (await stub.publish(pb.PublishRequest(user_id=user, subject="x"))).success
    await exhausted(stub.publish(pb.PublishRequest(user_id=user, subject="x")), "publish_rate")


async def test_per_tenant_overrides_from_the_quotas_file(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    vip, regular = tenant("vip"), tenant("regular")
    path = tmp_path / "quotas.json"
    path.write_text(
        json.dumps({"default": {"kv_buckets": 1}, "tenants": {f"user:{vip}": {"kv_buckets": 3}}})
    )
    gw = await make_gateway(quotas_file=path)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    try:
        for bucket in ("a", "b", "c"):
            put = pb.KvPutRequest(user_id=vip, bucket=bucket, key="k", value=b"1")
            assert (await stub.kv_put(put)).success
        await stub.kv_put(pb.KvPutRequest(user_id=regular, bucket="a", key="k", value=b"1"))
        await exhausted(
            stub.kv_put(pb.KvPutRequest(user_id=regular, bucket="b", key="k", value=b"1")),
            "kv_buckets",
        )
    finally:
        channel.close()


async def test_concurrent_creations_do_not_overshoot(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(quota_streams=3)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    try:
        results = await asyncio.gather(
            *(stub.create_stream(stream_request(user, f"c{i}")) for i in range(8)),
            return_exceptions=True,
        )
    finally:
        channel.close()
    created = [r for r in results if isinstance(r, pb.CreateStreamResponse)]
    refused = [r for r in results if isinstance(r, GRPCError)]
    assert len(created) == 3 and len(refused) == 5
    assert all(r.status == Status.RESOURCE_EXHAUSTED for r in refused)


async def test_an_organization_shares_one_quota_among_its_members(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    org = tenant("org")
    tokens = {
        "tokens": [
            {"token": f"{name}-token-0123456789", "user_id": tenant(name), "organizations": [org]}
            for name in ("ann", "bob")
        ]
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens))
    gw = await make_gateway(auth_mode=AuthMode.TOKEN, auth_tokens_file=path, quota_kv_buckets=1)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    org_scope = pb.NamespaceScope.SCOPE_ORGANIZATION

    def put(bucket: str, scope: pb.NamespaceScope = org_scope) -> pb.KvPutRequest:
        return pb.KvPutRequest(organization_id=org, scope=scope, bucket=bucket, key="k", value=b"v")

    try:
        ann = {"authorization": "Bearer ann-token-0123456789"}
        bob = {"authorization": "Bearer bob-token-0123456789"}
        assert (await stub.kv_put(put("shared"), metadata=ann)).success
        await exhausted(stub.kv_put(put("other"), metadata=bob), "kv_buckets")
        # Bob's own namespace has its own count.
        assert (await stub.kv_put(put("mine", pb.NamespaceScope.SCOPE_USER), metadata=bob)).success
    finally:
        channel.close()
