"""``natsgw smoke``: call every RPC of a running gateway once, one line each, and clean up.

What an operator runs after a deploy. Everything it makes is named ``smoke-<random>`` in the
caller's namespace and removed at the end (also after a failure); the exit status is non-zero
when any RPC failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from natsgw._generated.isa import nats as pb
from natsgw.client.client import Client
from natsgw.client.errors import NatsgwError

#: Every RPC of isa.nats.NATSService; the run fails if one of them was not exercised.
ALL_RPCS = (
    "HealthCheck", "Subscribe", "QueueSubscribe", "Publish", "PublishBatch", "Request",
    "Unsubscribe", "CreateStream", "UpdateStream", "GetStreamInfo", "ListStreams",
    "PublishToStream", "PublishToStreamBatch", "GetStreamStats", "CreateConsumer",
    "GetConsumerInfo", "ListConsumers", "PullMessages", "AckMessage", "NakMessage", "Consume",
    "AckMessages", "PurgeStream", "DeleteConsumer", "DeleteStream", "KVCreateBucket", "KVPut",
    "KVGet", "KVCreate", "KVUpdate", "KVHistory", "KVWatch", "KVKeys", "KVBucketStatus",
    "KVListBuckets", "KVDelete", "KVDeleteBucket", "ObjectPut", "ObjectGet", "ObjectPutStream",
    "ObjectGetStream", "ObjectList", "ObjectDelete", "GetStatistics",
)  # fmt: skip


class SmokeFailure(Exception):
    """A call answered, but not what it should have."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


@dataclass
class Report:
    out: TextIO
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def rpc(self, name: str) -> AsyncIterator[list[str]]:
        """Time one RPC; the block may append a detail. Failures are reported, not raised."""
        detail: list[str] = []
        started = time.perf_counter()
        try:
            yield detail
        except (NatsgwError, SmokeFailure, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            self.line(name, False, f"{(time.perf_counter() - started) * 1000:7.1f} ms  {reason}")
            return
        self.line(
            name, True, f"{(time.perf_counter() - started) * 1000:7.1f} ms  {' '.join(detail)}"
        )

    def line(self, name: str, ok: bool, text: str) -> None:
        self.results[name] = (ok, text)
        print(f"{'ok  ' if ok else 'FAIL'}  {name:<22}{text}".rstrip(), file=self.out, flush=True)

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.results.values()) and set(self.results) >= set(ALL_RPCS)


async def _read(stream: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(anext(stream), timeout)


async def run(client: Client, out: TextIO, *, timeout: float = 10.0) -> bool:
    """Exercise every RPC; True when all of them did what they should."""
    report = Report(out)
    tag = f"smoke-{uuid.uuid4().hex[:8]}"
    stream, bucket = tag, tag
    try:
        await asyncio.wait_for(_core(client, report, tag), 6 * timeout)
        await asyncio.wait_for(_jetstream(client, report, stream), 10 * timeout)
        await asyncio.wait_for(_kv(client, report, bucket), 6 * timeout)
        await asyncio.wait_for(_objects(client, report, tag), 6 * timeout)
        async with report.rpc("GetStatistics") as d:
            stats = await client.statistics()
            d.append(f"streams={stats.total_streams} connections={stats.connections}")
    finally:
        await _clean_up(client, stream, bucket, tag)
    missing = [name for name in ALL_RPCS if name not in report.results]
    for name in missing:
        report.line(name, False, "not reached")
    return report.passed


async def _core(client: Client, report: Report, tag: str) -> None:
    async with report.rpc("HealthCheck") as d:
        health = await client.health(deep=True)
        expect(health.healthy, f"unhealthy: {health.nats_status} {health.message}")
        d.append(f"{health.nats_status} jetstream={health.jetstream_enabled}")
    subject = f"{tag}.core"
    sub = client.subscribe(f"{tag}.*")
    queue = client.subscribe(f"{tag}.*", queue_group="smoke")
    try:
        async with report.rpc("Subscribe"):
            await sub.open()
        async with report.rpc("QueueSubscribe"):
            await queue.open()
        async with report.rpc("Publish"):
            await client.publish(subject, b"one", headers={"smoke": "1"})
            got = await _read(sub)
            expect(
                got.data == b"one" and got.headers.get("smoke") == "1", "Subscribe got " + repr(got)
            )
            expect((await _read(queue)).data == b"one", "QueueSubscribe did not deliver")
        async with report.rpc("PublishBatch"):
            result = await client.publish_batch([(subject, b"two"), (subject, b"three")])
            expect(result.published == 2 and result.ok, f"batch: {result}")
            expect([(await _read(sub)).data for _ in range(2)] == [b"two", b"three"], "order")
        async with report.rpc("Request") as d:
            responder = client.subscribe(f"{tag}.svc.echo")
            await responder.open()

            async def answer() -> None:
                request = await _read(responder)
                await client.publish(request.reply_to, request.data[::-1])

            task = asyncio.create_task(answer())
            try:
                reply = await client.request(f"{tag}.svc.echo", b"ping", timeout=5)
                expect(reply.data == b"gnip", f"reply {reply.data!r}")
                d.append("round trip through a gateway responder")
            finally:
                task.cancel()
                await responder.aclose()
        async with report.rpc("Unsubscribe"):
            expect(await client.unsubscribe(f"{tag}.*"), "no subscription was ended")
    finally:
        await sub.aclose()
        await queue.aclose()


async def _jetstream(client: Client, report: Report, stream: str) -> None:
    ids = client.identity()
    stub = client.stub
    async with report.rpc("CreateStream"):
        await client.create_stream(
            stream, [f"{stream}.>"], config=pb.StreamConfig(storage=pb.StorageType.STORAGE_MEMORY)
        )
    async with report.rpc("UpdateStream"):
        info = await client.update_stream(
            stream,
            pb.StreamConfig(
                subjects=[f"{stream}.>"], storage=pb.StorageType.STORAGE_MEMORY, max_msgs=1000
            ),
        )
        expect(info.config is not None and info.config.max_msgs == 1000, "max_msgs not applied")
    async with report.rpc("GetStreamInfo"):
        await client.stream_info(stream)
    async with report.rpc("ListStreams"):
        expect(stream in [s.name for s in await client.streams()], "stream not listed")
    async with report.rpc("PublishToStream") as d:
        ack = await client.publish_to_stream(f"{stream}.a", b"1", stream=stream)
        d.append(f"sequence={ack.sequence}")
    async with report.rpc("PublishToStreamBatch"):
        acks = await client.publish_to_stream_batch(
            stream, [(f"{stream}.a", b"%d" % i) for i in range(2, 6)]
        )
        expect([a.sequence for a in acks] == [2, 3, 4, 5], f"sequences {acks}")
    async with report.rpc("GetStreamStats") as d:
        stats = await client.stream_stats(stream)
        expect(stats.messages == 5, f"{stats.messages} messages")
        d.append(f"messages={stats.messages}")
    async with report.rpc("CreateConsumer"):
        await client.create_consumer(stream, "smoke")
    async with report.rpc("GetConsumerInfo"):
        await client.consumer_info(stream, "smoke")
    async with report.rpc("ListConsumers"):
        expect([c.name for c in await client.consumers(stream)] == ["smoke"], "not listed")
    pulled: list[Any] = []
    async with report.rpc("PullMessages"):
        pulled = await client.pull(stream, "smoke", 2, max_wait=5)
        expect([m.sequence for m in pulled] == [1, 2], f"pulled {[m.sequence for m in pulled]}")
    async with report.rpc("AckMessage"):
        expect(len(pulled) == 2, "nothing pulled")
        await stub.ack_message(pb.AckMessageRequest(ack_token=pulled[0].ack_token, **ids))
    async with report.rpc("NakMessage"):
        expect(len(pulled) == 2, "nothing pulled")
        await stub.nak_message(pb.NakMessageRequest(ack_token=pulled[1].ack_token, **ids))
    tokens: list[str] = []
    async with report.rpc("Consume") as d:
        # The raw stream, not client.consume(): this run acks through AckMessages itself.
        consume = client._stream(
            "Consume",
            pb.ConsumeRequest(stream_name=stream, consumer_name="smoke", max_messages=10, **ids),
            pb.ConsumeResponse,
            lambda r: r.message,
        )
        try:
            while len(tokens) < 4:  # 2 (the nak'ed one again), 3, 4, 5
                tokens.append((await _read(consume)).ack_token)
        finally:
            await consume.aclose()
        d.append(f"{len(tokens)} delivered")
    async with report.rpc("AckMessages"):
        done = await stub.ack_messages(pb.AckMessagesRequest(ack_tokens=tokens, **ids))
        expect(done.succeeded == 4, f"{done.succeeded} of 4 acked")
    async with report.rpc("PurgeStream") as d:
        purged = await client.purge_stream(stream)
        d.append(f"purged={purged}")
    async with report.rpc("DeleteConsumer"):
        await client.delete_consumer(stream, "smoke")
    async with report.rpc("DeleteStream"):
        await client.delete_stream(stream)


async def _kv(client: Client, report: Report, bucket: str) -> None:
    async with report.rpc("KVCreateBucket"):
        await client.kv_create_bucket(bucket, history=5)
    revision = 0
    async with report.rpc("KVPut"):
        revision = await client.kv_put(bucket, "k", b"v1")
    async with report.rpc("KVGet"):
        entry = await client.kv_get(bucket, "k")
        expect(entry is not None and entry.value == b"v1", f"got {entry}")
    async with report.rpc("KVCreate"):
        await client.kv_create(bucket, "fresh", b"new")
    async with report.rpc("KVUpdate"):
        revision = await client.kv_update(bucket, "k", b"v2", revision)
    async with report.rpc("KVHistory"):
        history = await client.kv_history(bucket, "k")
        expect([e.value for e in history] == [b"v1", b"v2"], f"history {history}")
    async with report.rpc("KVWatch"), client.kv_watch(bucket, "k") as watch:
        current = await _read(watch)
        expect(current.value == b"v2", f"watch saw {current.value!r}")
    async with report.rpc("KVKeys"):
        expect(sorted(await client.kv_keys(bucket)) == ["fresh", "k"], "keys")
    async with report.rpc("KVBucketStatus"):
        await client.kv_bucket_status(bucket)
    async with report.rpc("KVListBuckets"):
        expect(bucket in [b.bucket for b in await client.kv_buckets()], "bucket not listed")
    async with report.rpc("KVDelete"):
        await client.kv_delete(bucket, "k", revision=revision)
    async with report.rpc("KVDeleteBucket"):
        await client.kv_delete_bucket(bucket)


#: The API has no call that deletes an object bucket, so every run uses this one (left empty).
OBJECT_BUCKET = "natsgw-smoke"


async def _objects(client: Client, report: Report, tag: str) -> None:
    ids = client.identity()
    bucket, unary, streamed = OBJECT_BUCKET, f"{tag}-unary", f"{tag}-streamed"
    content = b"natsgw smoke " * 20_000  # 260 kB: more than one chunk
    async with report.rpc("ObjectPut"):
        await client.stub.object_put(
            pb.ObjectPutRequest(bucket=bucket, object_name=unary, data=b"small", **ids)
        )
    async with report.rpc("ObjectGet"):
        got = await client.stub.object_get(
            pb.ObjectGetRequest(bucket=bucket, object_name=unary, **ids)
        )
        expect(got.found and got.data == b"small", "ObjectGet content")
    async with report.rpc("ObjectPutStream"):
        sha = hashlib.sha256(content).hexdigest()
        await client.put_object(bucket, streamed, content, sha256=sha, chunk_size=64 * 1024)
    async with report.rpc("ObjectGetStream"):
        expect(await client.get_object_bytes(bucket, streamed) == content, "content differs")
    async with report.rpc("ObjectList"):
        names = {o.name for o in await client.objects(bucket)}
        expect({unary, streamed} <= names, f"listed {sorted(names)}")
    async with report.rpc("ObjectDelete"):
        await client.delete_object(bucket, unary)
        await client.delete_object(bucket, streamed)


async def _clean_up(client: Client, stream: str, bucket: str, tag: str) -> None:
    """Best effort: whatever a failed step left behind."""
    attempts: list[Callable[[], Any]] = [
        lambda: client.delete_stream(stream),
        lambda: client.kv_delete_bucket(bucket),
        lambda: client.delete_object(OBJECT_BUCKET, f"{tag}-unary"),
        lambda: client.delete_object(OBJECT_BUCKET, f"{tag}-streamed"),
    ]
    for attempt in attempts:
        with contextlib.suppress(NatsgwError, TimeoutError):
            await asyncio.wait_for(attempt(), 5)
