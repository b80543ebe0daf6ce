"""Buckets natsgw makes are nats-py's buckets, and the other way round (issue 8 point 4).

natsgw creates, writes and reads KV and Object buckets through its own JetStream client; here
nats-py's own KeyValue and ObjectStore API (the reference every NATS client follows) works on
what natsgw made, natsgw works on what nats-py made, and the two make identical streams.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js import api
from nats.js import errors as js_errors

from natsgw.adapter.core import NatsAdapter
from natsgw.adapter.kv import KeyValueStore
from natsgw.adapter.objects import ObjectStoreClient
from natsgw.adapter.types import BucketDefaults
from natsgw.errors import AlreadyExists, FailedPrecondition

DEFAULTS = BucketDefaults(history=3, ttl=600.0, max_bytes=1 << 20, storage="memory")


def name(kind: str) -> str:
    return f"interop-{kind}-{uuid.uuid4().hex[:10]}"


def comparable(config: api.StreamConfig) -> dict[str, Any]:
    """A stream's config as the server keeps it, without what names the bucket."""
    out = config.as_dict()
    for key in ("name", "subjects", "metadata"):
        out.pop(key, None)
    return out


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_kv_bucket_made_by_natsgw_works_with_nats_py(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    store, bucket = KeyValueStore(adapter), name("kv")
    first = await store.put(bucket, "a", b"one", DEFAULTS)  # creates the bucket

    kv = await nc.jetstream().key_value(bucket)
    entry = await kv.get("a")
    assert (entry.value, entry.revision) == (b"one", first)
    second = await kv.put("b", b"two")
    got = await store.get(bucket, "b")
    assert got is not None
    assert (got.value, got.revision) == (b"two", second)

    third = await kv.update("a", b"uno", last=first)
    with pytest.raises(FailedPrecondition, match=f"current revision is {third}"):
        await store.update(bucket, "a", b"stale", first)
    fourth = await store.update(bucket, "a", b"eins", third)
    with pytest.raises(js_errors.KeyWrongLastSequenceError):
        await kv.update("a", b"stale", last=third)
    assert (await kv.get("a")).value == b"eins"

    await kv.delete("b")
    assert await store.get(bucket, "b") is None
    assert await store.keys(bucket) == ["a"]
    assert [e.value for e in await store.history(bucket, "a")] == [b"one", b"uno", b"eins"]
    assert [e.revision for e in await kv.history("a")] == [first, third, fourth]

    await store.delete(bucket, "a")
    with pytest.raises(js_errors.KeyNotFoundError):  # nats-py: the key has a delete marker
        await kv.get("a")
    assert (await kv.history("a"))[-1].operation == "DEL"
    with pytest.raises(js_errors.NoKeysError):
        await kv.keys()


async def test_kv_bucket_made_by_nats_py_works_with_natsgw(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    store, bucket = KeyValueStore(adapter), name("kv")
    kv = await nc.jetstream().create_key_value(bucket=bucket, history=2)
    assert (await store.bucket(bucket)).history == 2

    made = await store.create(bucket, "k", b"v", DEFAULTS)
    with pytest.raises(js_errors.KeyWrongLastSequenceError):
        await kv.create("k", b"other")
    with pytest.raises(AlreadyExists):
        await store.create(bucket, "k", b"again", DEFAULTS)
    changed = await kv.update("k", b"w", last=made)
    got = await store.get(bucket, "k")
    assert got is not None
    assert (got.value, got.revision) == (b"w", changed)
    assert (await store.get(bucket, "k", revision=made)) is not None  # history 2 kept it

    await kv.purge("k")
    assert await store.get(bucket, "k") is None
    assert await store.keys(bucket) == []
    recreated = await store.create(bucket, "k", b"back", DEFAULTS)  # after a purge marker
    assert (await kv.get("k")).revision == recreated


async def test_kv_buckets_of_both_are_the_same_stream(adapter: NatsAdapter, nc: nats.NATS) -> None:
    ours, theirs = name("kv"), name("kv")
    await KeyValueStore(adapter).create_bucket(ours, DEFAULTS)
    js = nc.jetstream()
    await js.create_key_value(
        api.KeyValueConfig(
            bucket=theirs,
            history=DEFAULTS.history,
            ttl=DEFAULTS.ttl,
            max_bytes=DEFAULTS.max_bytes,
            storage=api.StorageType.MEMORY,
            direct=True,
        )
    )
    mine = (await js.stream_info(f"KV_{ours}")).config
    reference = (await js.stream_info(f"KV_{theirs}")).config
    assert mine.subjects == [f"$KV.{ours}.>"]
    assert comparable(mine) == comparable(reference)


async def test_object_bucket_made_by_natsgw_works_with_nats_py(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    store, bucket = ObjectStoreClient(adapter), name("obj")
    data = bytes(range(256)) * 300  # 76,800 bytes: several chunks
    stat = await store.put(
        bucket,
        "report.bin",
        chunks(data, 10_000),
        metadata={"owner": "x"},
        defaults=DEFAULTS,
        chunk_size=16 * 1024,
    )
    obs = await nc.jetstream().object_store(bucket)
    result = await obs.get("report.bin")
    assert result.data == data
    assert result.info.digest == stat.digest
    assert result.info.chunks == stat.chunks == 5

    await obs.put("theirs.txt", b"from nats-py" * 5000)
    theirs = await store.stat(bucket, "theirs.txt")
    assert theirs is not None
    read = b"".join([piece async for piece in store.read(bucket, theirs)])
    assert read == b"from nats-py" * 5000
    assert [s.name for s in await store.list(bucket)] == ["report.bin", "theirs.txt"]

    await obs.delete("theirs.txt")
    assert await store.stat(bucket, "theirs.txt") is None
    assert await store.delete(bucket, "report.bin")
    with pytest.raises(js_errors.ObjectNotFoundError):
        await obs.get("report.bin")
    assert (await obs.get_info("report.bin", show_deleted=True)).deleted


async def test_object_buckets_of_both_are_the_same_stream(
    adapter: NatsAdapter, nc: nats.NATS
) -> None:
    ours, theirs = name("obj"), name("obj")
    await ObjectStoreClient(adapter).ensure_bucket(ours, DEFAULTS)
    js = nc.jetstream()
    await js.create_object_store(
        theirs,
        config=api.ObjectStoreConfig(
            ttl=DEFAULTS.ttl, max_bytes=DEFAULTS.max_bytes, storage=api.StorageType.MEMORY
        ),
    )
    mine = (await js.stream_info(f"OBJ_{ours}")).config
    reference = (await js.stream_info(f"OBJ_{theirs}")).config
    assert mine.subjects == [f"$O.{ours}.C.>", f"$O.{ours}.M.>"]
    assert comparable(mine) == comparable(reference)


async def test_a_put_waits_as_long_as_the_call_allows(adapter: NatsAdapter) -> None:
    """Every NATS request of a put gets what is left of the call's time (``timeout``), not a
    fixed wait per step: here the first put to a new bucket (publish, create, publish again)."""
    store, bucket = KeyValueStore(adapter, timeout=5.0), name("kv")
    waits: list[tuple[str, float]] = []
    api_client = store._api

    def spy(method: str) -> None:
        real = getattr(api_client, method)

        async def recording(*args: Any, **kwargs: Any) -> Any:
            waits.append((method, kwargs["timeout"]))
            return await real(*args, **kwargs)

        setattr(api_client, method, recording)

    for method in ("publish", "create_stream", "stream_info"):
        spy(method)
    revision = await store.put(bucket, "k", b"v", DEFAULTS, timeout=30.0)
    assert revision == 1
    assert [m for m, _ in waits] == [
        "publish",
        "stream_info",
        "create_stream",
        "stream_info",
        "publish",
    ]
    assert all(5.0 < wait <= 30.0 for _, wait in waits), waits
    assert [w for _, w in waits] == sorted((w for _, w in waits), reverse=True)  # one budget

    waits.clear()
    await store.put(bucket, "k", b"w", DEFAULTS)  # no deadline: the store's default
    ((method, wait),) = waits
    assert method == "publish"
    assert 4.5 < wait <= 5.0
