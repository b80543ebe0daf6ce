"""Tenancy: no tenant reads, lists, watches, overwrites or deletes another's KV or objects."""

from __future__ import annotations

import asyncio

import nats
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration.test_kv import kv_stream, put
from tests.integration.test_objects import get_stream, obj_bucket, put_stream

Stub = pb.NatsServiceStub


def spellings(nats_name: str, bucket: str) -> tuple[list[str], list[str]]:
    """Bucket names an attacker might send to reach a victim's bucket: (valid, refused)."""
    prefix = nats_name[: nats_name.index("-", len("natsgw-")) + 1]
    valid = [bucket, nats_name, f"KV_{nats_name}", f"OBJ_{nats_name}", prefix + bucket]
    refused = ["../" + bucket, bucket + ".>", "*", ">", f"{bucket}.x", ""]
    return valid, refused


async def test_kv_is_private_to_its_tenant(stub: Stub, nc: nats.NATS) -> None:
    alice, mallory = tenant("alice"), tenant("mallory")
    rev = await put(stub, alice, "secrets", "pin", b"1234")
    js = nc.jetstream()
    before = await js.stream_info(kv_stream(alice, "secrets"))
    valid, refused = spellings(kv_stream(alice, "secrets")[3:], "secrets")

    for bucket in valid:
        # Real attempts inside mallory's namespace: they find nothing and change nothing.
        got = await stub.kv_get(pb.KvGetRequest(user_id=mallory, bucket=bucket, key="pin"))
        assert not got.found
        keys = await stub.kv_keys(pb.KvKeysRequest(user_id=mallory, bucket=bucket))
        assert keys.keys == []
        history = await stub.kv_history(
            pb.KvHistoryRequest(user_id=mallory, bucket=bucket, key="pin")
        )
        assert history.entries == []
        await stub.kv_delete(pb.KvDeleteRequest(user_id=mallory, bucket=bucket, key="pin"))
        await stub.kv_delete(
            pb.KvDeleteRequest(user_id=mallory, bucket=bucket, key="pin", purge=True)
        )
        with pytest.raises(GRPCError) as err:
            await stub.kv_update(
                pb.KvUpdateRequest(
                    user_id=mallory, bucket=bucket, key="pin", value=b"0", expected_revision=rev
                )
            )
        assert err.value.status is Status.FAILED_PRECONDITION
        for call in (
            stub.kv_delete_bucket(pb.KvDeleteBucketRequest(user_id=mallory, bucket=bucket)),
            stub.kv_bucket_status(pb.KvBucketStatusRequest(user_id=mallory, bucket=bucket)),
        ):
            with pytest.raises(GRPCError) as err:
                await call
            assert err.value.status is Status.NOT_FOUND
        with pytest.raises(GRPCError) as err:
            async for _ in stub.kv_watch(pb.KvWatchRequest(user_id=mallory, bucket=bucket)):
                pass
        assert err.value.status is Status.NOT_FOUND

    for bucket in refused:
        with pytest.raises(GRPCError) as err:
            await stub.kv_get(pb.KvGetRequest(user_id=mallory, bucket=bucket, key="pin"))
        assert err.value.status is Status.INVALID_ARGUMENT
        with pytest.raises(GRPCError) as err:
            await stub.kv_delete(pb.KvDeleteRequest(user_id=mallory, bucket=bucket, key="pin"))
        assert err.value.status is Status.INVALID_ARGUMENT

    # Mallory writing "the same" bucket and key writes her own.
    await put(stub, mallory, "secrets", "pin", b"0000")
    listed = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=mallory))
    assert [b.bucket for b in listed.buckets] == ["secrets"]

    # Alice's bucket in NATS is exactly as it was.
    after = await js.stream_info(kv_stream(alice, "secrets"))
    assert after.state.messages == before.state.messages
    assert after.state.last_seq == before.state.last_seq
    kv = await js.key_value(kv_stream(alice, "secrets")[3:])
    assert (await kv.get("pin")).value == b"1234"
    mine = await stub.kv_get(pb.KvGetRequest(user_id=alice, bucket="secrets", key="pin"))
    assert mine.value == b"1234"


async def test_kv_watch_never_sees_another_tenants_changes(stub: Stub) -> None:
    alice, bob = tenant("alice"), tenant("bob")
    await put(stub, alice, "shared-name", "k", b"alice-0")
    await put(stub, bob, "shared-name", "k", b"bob-0")
    seen: list[bytes] = []

    async def watch() -> None:
        async for entry in stub.kv_watch(pb.KvWatchRequest(user_id=bob, bucket="shared-name")):
            seen.append(entry.value)

    task = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.3)
        await put(stub, alice, "shared-name", "k", b"alice-1")
        await put(stub, bob, "shared-name", "k", b"bob-1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(seen) < 2 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [b"bob-0", b"bob-1"]


async def test_kv_bucket_listing_shows_only_own_buckets(stub: Stub) -> None:
    alice, alice_lookalike = tenant("alice"), None
    alice_lookalike = alice + "-x"  # a prefix-sharing user id must not see alice's buckets
    await put(stub, alice, "one", "k", b"1")
    await put(stub, alice_lookalike, "two", "k", b"2")
    mine = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=alice))
    theirs = await stub.kv_list_buckets(pb.KvListBucketsRequest(user_id=alice_lookalike))
    assert [b.bucket for b in mine.buckets] == ["one"]
    assert [b.bucket for b in theirs.buckets] == ["two"]


async def test_objects_are_private_to_their_tenant(stub: Stub, nc: nats.NATS) -> None:
    alice, mallory = tenant("alice"), tenant("mallory")
    await put_stream(stub, alice, "files", "report.pdf", b"alice's report" * 1000)
    js = nc.jetstream()
    stream = "OBJ_" + obj_bucket(alice, "files")
    before = await js.stream_info(stream)

    nats_name = obj_bucket(alice, "files")
    valid, refused = spellings(nats_name, "files")
    for bucket in valid:
        got = await stub.object_get(
            pb.ObjectGetRequest(user_id=mallory, bucket=bucket, object_name="report.pdf")
        )
        assert not got.found
        head, body, _ = await get_stream(stub, mallory, bucket, "report.pdf")
        assert not head.found
        assert body == b""
        with pytest.raises(GRPCError) as listed:  # mallory's own namespace has no such bucket
            await stub.object_list(pb.ObjectListRequest(user_id=mallory, bucket=bucket))
        assert listed.value.status is Status.NOT_FOUND
        deleted = await stub.object_delete(
            pb.ObjectDeleteRequest(user_id=mallory, bucket=bucket, object_name="report.pdf")
        )
        assert deleted.success  # idempotent: nothing of mallory's was there
    for bucket in refused:
        with pytest.raises(GRPCError) as err:
            await stub.object_get(
                pb.ObjectGetRequest(user_id=mallory, bucket=bucket, object_name="report.pdf")
            )
        assert err.value.status is Status.INVALID_ARGUMENT

    # Mallory's "files/report.pdf" is her own object.
    await stub.object_put(
        pb.ObjectPutRequest(
            user_id=mallory, bucket="files", object_name="report.pdf", data=b"forged"
        )
    )
    after = await js.stream_info(stream)
    assert after.state.messages == before.state.messages
    assert after.state.last_seq == before.state.last_seq
    store = await js.object_store(nats_name)
    assert (await store.get("report.pdf")).data == b"alice's report" * 1000
    got = await stub.object_get(
        pb.ObjectGetRequest(user_id=alice, bucket="files", object_name="report.pdf")
    )
    assert got.data == b"alice's report" * 1000
