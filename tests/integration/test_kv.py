"""Key-Value through the gateway, against a real nats-server (grpclib client)."""

from __future__ import annotations

import asyncio
import datetime

import nats
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import tenant

Stub = pb.NatsServiceStub


def kv_stream(user: str, bucket: str) -> str:
    return "KV_" + Namespace(Tenant.user(user)).kv_bucket(bucket)


async def put(stub: Stub, user: str, bucket: str, key: str, value: bytes) -> int:
    reply = await stub.kv_put(pb.KvPutRequest(user_id=user, bucket=bucket, key=key, value=value))
    assert reply.success
    return reply.revision


async def test_put_get_round_trip_with_nats_revision_and_stored_time(
    stub: Stub, nc: nats.NATS
) -> None:
    user = tenant()
    before = datetime.datetime.now(datetime.UTC)
    rev1 = await put(stub, user, "cache", "greeting", b"hello")
    rev2 = await put(stub, user, "cache", "greeting", b"hello again")
    assert rev2 > rev1 >= 1

    got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="cache", key="greeting"))
    assert got.found
    assert got.value == b"hello again"
    assert got.revision == rev2
    assert got.created is not None
    assert before - datetime.timedelta(seconds=1) <= got.created
    assert got.created <= datetime.datetime.now(datetime.UTC)

    # It is a real NATS KV bucket in the tenant's namespace, created on first put.
    kv = await nc.jetstream().key_value(kv_stream(user, "cache")[3:])
    entry = await kv.get("greeting")
    assert entry.value == b"hello again"
    assert entry.revision == rev2
    # KVGetResponse.created is the stored time, not the time of the read.
    await asyncio.sleep(0.05)
    again = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="cache", key="greeting"))
    assert again.created == got.created


async def test_bucket_created_on_first_put_uses_settings_defaults(
    stub: Stub, nc: nats.NATS, gateway: Gateway
) -> None:
    user = tenant()
    await put(stub, user, "defaults", "k", b"v")
    info = await nc.jetstream().stream_info(kv_stream(user, "defaults"))
    assert info.config.max_msgs_per_subject == gateway.settings.kv_history
    assert info.config.allow_direct


async def test_get_of_a_specific_revision(stub: Stub) -> None:
    user = tenant()
    rev1 = await put(stub, user, "b", "k", b"one")
    await put(stub, user, "b", "k", b"two")
    old = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="b", key="k", revision=rev1))
    assert old.found
    assert old.value == b"one"
    assert old.revision == rev1
    other = await put(stub, user, "b", "other", b"x")
    wrong_key = await stub.kv_get(
        pb.KvGetRequest(user_id=user, bucket="b", key="k", revision=other)
    )
    assert not wrong_key.found


async def test_missing_key_and_missing_bucket_are_not_found(stub: Stub) -> None:
    user = tenant()
    missing_bucket = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="nope", key="k"))
    assert not missing_bucket.found
    assert missing_bucket.value == b""
    await put(stub, user, "there", "a", b"1")
    missing_key = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="there", key="b"))
    assert not missing_key.found


async def test_delete_then_get_is_not_found_and_keys_skip_it(stub: Stub) -> None:
    user = tenant()
    await put(stub, user, "d", "a", b"1")
    await put(stub, user, "d", "b", b"2")
    await put(stub, user, "d", "c.x", b"3")
    keys = await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="d"))
    assert keys.keys == ["a", "b", "c.x"]
    deleted = await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="d", key="b"))
    assert deleted.success
    assert not (await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="d", key="b"))).found
    keys = await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="d"))
    assert keys.keys == ["a", "c.x"]


async def test_keys_of_missing_or_emptied_bucket_is_empty(stub: Stub) -> None:
    user = tenant()
    assert (await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="none"))).keys == []
    await put(stub, user, "e", "only", b"1")
    await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="e", key="only"))
    assert (await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="e"))).keys == []


async def test_delete_in_missing_bucket_succeeds_without_creating_it(
    stub: Stub, nc: nats.NATS
) -> None:
    user = tenant()
    reply = await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="ghost", key="k"))
    assert reply.success
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().stream_info(kv_stream(user, "ghost"))


@pytest.mark.parametrize(
    "key", ["", ".lead", "trail.", "a..b", "sp ace", "star*", "gt>", "uni\u00e9", "a\nb"]
)
async def test_invalid_keys_are_refused_naming_the_key(stub: Stub, key: str) -> None:
    user = tenant()
    with pytest.raises(GRPCError) as err:
        await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="b", key=key, value=b"v"))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message is not None
    assert err.value.message.startswith("key")
    if key:
        assert repr(key) in err.value.message


async def test_invalid_bucket_is_refused(stub: Stub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.kv_get(pb.KvGetRequest(user_id=tenant(), bucket="a.b", key="k"))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "bucket" in (err.value.message or "")


async def test_missing_user_is_unauthenticated(stub: Stub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.kv_get(pb.KvGetRequest(bucket="b", key="k"))
    assert err.value.status is Status.UNAUTHENTICATED


async def test_create_if_absent(stub: Stub) -> None:
    user = tenant()
    created = await stub.kv_create(
        pb.KvCreateRequest(user_id=user, bucket="c", key="lock", value=b"me")
    )
    assert created.success
    assert created.revision >= 1
    with pytest.raises(GRPCError) as err:
        await stub.kv_create(pb.KvCreateRequest(user_id=user, bucket="c", key="lock", value=b"x"))
    assert err.value.status is Status.ALREADY_EXISTS
    assert f"revision {created.revision}" in (err.value.message or "")
    value = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="c", key="lock"))
    assert value.value == b"me"
    # After a delete the key may be created again.
    await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="c", key="lock"))
    again = await stub.kv_create(
        pb.KvCreateRequest(user_id=user, bucket="c", key="lock", value=b"you")
    )
    assert again.revision > created.revision


async def test_update_compare_and_set(stub: Stub) -> None:
    user = tenant()
    rev = await put(stub, user, "cas", "n", b"1")
    updated = await stub.kv_update(
        pb.KvUpdateRequest(user_id=user, bucket="cas", key="n", value=b"2", expected_revision=rev)
    )
    assert updated.success
    assert updated.revision > rev
    # A writer holding the old revision loses, and is told the current one.
    with pytest.raises(GRPCError) as err:
        await stub.kv_update(
            pb.KvUpdateRequest(
                user_id=user, bucket="cas", key="n", value=b"3", expected_revision=rev
            )
        )
    assert err.value.status is Status.FAILED_PRECONDITION
    assert f"current revision is {updated.revision}" in (err.value.message or "")
    current = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="cas", key="n"))
    assert current.value == b"2"
    assert current.revision == updated.revision


async def test_update_of_missing_key_or_bucket_fails_precondition(stub: Stub) -> None:
    user = tenant()
    for bucket in ("nobucket", "cas2"):
        if bucket == "cas2":
            await put(stub, user, bucket, "other", b"x")
        with pytest.raises(GRPCError) as err:
            await stub.kv_update(
                pb.KvUpdateRequest(
                    user_id=user, bucket=bucket, key="k", value=b"v", expected_revision=1
                )
            )
        assert err.value.status is Status.FAILED_PRECONDITION


async def test_update_needs_a_revision(stub: Stub) -> None:
    with pytest.raises(GRPCError) as err:
        await stub.kv_update(pb.KvUpdateRequest(user_id=tenant(), bucket="b", key="k", value=b""))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "expected_revision" in (err.value.message or "")


async def test_conditional_delete(stub: Stub) -> None:
    user = tenant()
    rev = await put(stub, user, "cd", "k", b"1")
    await put(stub, user, "cd", "k", b"2")
    with pytest.raises(GRPCError) as err:
        await stub.kv_delete(
            pb.KvDeleteRequest(user_id=user, bucket="cd", key="k", expected_revision=rev)
        )
    assert err.value.status is Status.FAILED_PRECONDITION
    assert (await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="cd", key="k"))).found


async def test_history_lists_puts_and_deletes_oldest_first(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="h", history=10))
    revs = [await put(stub, user, "h", "k", f"v{i}".encode()) for i in range(3)]
    await put(stub, user, "h", "other", b"x")
    await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="h", key="k"))
    history = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="h", key="k"))
    assert [e.value for e in history.entries] == [b"v0", b"v1", b"v2", b""]
    assert [e.revision for e in history.entries][:3] == revs
    assert [e.operation for e in history.entries] == [
        pb.KvOperation.PUT,
        pb.KvOperation.PUT,
        pb.KvOperation.PUT,
        pb.KvOperation.DELETE,
    ]
    assert all(e.key == "k" and e.created is not None for e in history.entries)
    empty = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="h", key="never"))
    assert empty.entries == []


async def test_history_is_bounded_by_bucket_history(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="h2", history=2))
    for i in range(5):
        await put(stub, user, "h2", "k", f"v{i}".encode())
    history = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="h2", key="k"))
    assert [e.value for e in history.entries] == [b"v3", b"v4"]


async def test_purge_drops_history(stub: Stub) -> None:
    user = tenant()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=user, bucket="p", history=10))
    for i in range(3):
        await put(stub, user, "p", "k", f"v{i}".encode())
    await stub.kv_delete(pb.KvDeleteRequest(user_id=user, bucket="p", key="k", purge=True))
    history = await stub.kv_history(pb.KvHistoryRequest(user_id=user, bucket="p", key="k"))
    assert [e.operation for e in history.entries] == [pb.KvOperation.PURGE]


async def test_value_larger_than_nats_max_payload_is_resource_exhausted(
    stub: Stub, gateway: Gateway
) -> None:
    assert gateway.adapter is not None
    limit = gateway.adapter.facts().max_payload
    with pytest.raises(GRPCError) as err:
        await stub.kv_put(
            pb.KvPutRequest(user_id=tenant(), bucket="big", key="k", value=b"x" * (limit + 1))
        )
    assert err.value.status is Status.RESOURCE_EXHAUSTED


async def test_concurrent_first_puts_all_land(stub: Stub) -> None:
    user = tenant()
    revisions = await asyncio.gather(
        *(put(stub, user, "fresh", f"k{i}", str(i).encode()) for i in range(10))
    )
    assert len(set(revisions)) == 10
    keys = await stub.kv_keys(pb.KvKeysRequest(user_id=user, bucket="fresh"))
    assert keys.keys == sorted(f"k{i}" for i in range(10))
