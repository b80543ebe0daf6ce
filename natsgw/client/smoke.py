"""``natsgw smoke``: call every RPC of a running gateway once, one line each, and clean up.

What an operator runs after a deploy. Everything it makes is named ``smoke-<random>`` in the
caller's namespace and removed at the end (also after a failure); the exit status is non-zero
when any RPC failed. Every RPC gets its line whatever happens (no credentials, a wrong token,
nothing listening): a failure is a ``FAIL`` line with the reason, never a traceback. The clean-up
deletes only what this run made and has not deleted yet, so it provokes no refusals (and no
failed audit events) on a run that went well.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.client.client import Client
from natsgw.client.errors import NatsgwError, Unauthenticated, Unavailable, from_status

#: Every RPC of isa.nats.NATSService; the run fails if one of them was not exercised.
ALL_RPCS = (
    "HealthCheck", "Subscribe", "QueueSubscribe", "Publish", "PublishBatch", "Request",
    "Unsubscribe", "CreateStream", "UpdateStream", "GetStreamInfo", "ListStreams",
    "PublishToStream", "PublishToStreamBatch", "GetStreamStats", "CreateConsumer",
    "GetConsumerInfo", "ListConsumers", "PullMessages", "AckMessage", "NakMessage", "Consume",
    "AckMessages",
    # consumer control
    "UpdateConsumer", "PauseConsumer", "ResumeConsumer", "ResetConsumer",
    "PurgeStream", "DeleteConsumer", "DeleteStream", "KVCreateBucket", "KVPut",
    "KVGet", "KVCreate", "KVUpdate", "KVHistory", "KVWatch", "KVKeys", "KVBucketStatus",
    "KVListBuckets", "KVDelete", "KVDeleteBucket", "ObjectPut", "ObjectGet", "ObjectPutStream",
    "ObjectGetStream", "ObjectList", "ObjectDelete", "GetStatistics",
)  # fmt: skip


class SmokeFailure(Exception):
    """A call answered, but not what it should have."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


#: What the run made and has not deleted yet; the clean-up removes exactly these.
Made = dict[str, Callable[[], Awaitable[Any]]]


@dataclass
class Report:
    """Prints one line (or one JSON object) per RPC; an RPC's block never raises out of it."""

    out: TextIO
    as_json: bool = False
    timeout: float = 10.0
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)
    #: The first failure's error, for the summary's hint (credentials, reachability).
    first_error: NatsgwError | None = None

    @contextlib.asynccontextmanager
    async def rpc(self, name: str) -> AsyncIterator[list[str]]:
        """Time one RPC (bounded by ``timeout``); the block may append a detail.

        Failures of any kind are reported, not raised: a smoke run must finish its list.
        """
        detail: list[str] = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                yield detail
        except TimeoutError:
            self._failed(name, started, f"no answer within {self.timeout:g} s")
        except GRPCError as exc:  # a call made through the raw stub
            self._failed(name, started, from_status(exc.status, exc.message))
        except (NatsgwError, SmokeFailure) as exc:
            self._failed(name, started, exc)
        except Exception as exc:  # a smoke run reports whatever broke
            self._failed(name, started, f"{type(exc).__name__}: {exc}")
        else:
            self.line(name, True, (time.perf_counter() - started) * 1000, " ".join(detail))

    def _failed(self, name: str, started: float, error: object) -> None:
        if isinstance(error, NatsgwError) and self.first_error is None:
            self.first_error = error
        reason = str(error) or type(error).__name__
        self.line(name, False, (time.perf_counter() - started) * 1000, reason)

    def line(self, name: str, ok: bool, ms: float | None, text: str) -> None:
        if name in self.results:
            return  # one line per RPC
        self.results[name] = (ok, text)
        if self.as_json:
            record: dict[str, Any] = {"rpc": name, "ok": ok, "detail" if ok else "error": text}
            if ms is not None:
                record["ms"] = round(ms, 1)
            print(json.dumps(record, sort_keys=True), file=self.out, flush=True)
            return
        took = f"{ms:7.1f} ms  " if ms is not None else ""
        mark = "ok  " if ok else "FAIL"
        print(f"{mark}  {name:<22}{took}{text}".rstrip(), file=self.out, flush=True)

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.results.values()) and set(self.results) >= set(ALL_RPCS)

    def hint(self) -> str:
        """What to do about the first failure, when it is about credentials or reachability."""
        error = self.first_error
        if isinstance(error, Unauthenticated) or (
            error is not None and error.status is Status.PERMISSION_DENIED
        ):
            return (
                "check the credentials: --token-file PATH (or NATSGW_TOKEN_FILE), NATSGW_TOKEN, "
                "or --user-id in trusted mode"
            )
        if isinstance(error, Unavailable):
            return "is the gateway running at --target (NATSGW_TARGET)?"
        return ""


async def _read(stream: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(anext(stream), timeout)


async def run(
    client: Client, out: TextIO, *, timeout: float = 10.0, as_json: bool = False
) -> Report:
    """Exercise every RPC (each bounded by ``timeout``); ``report.passed`` says if all did well."""
    report = Report(out, as_json, timeout)
    tag = f"smoke-{uuid.uuid4().hex[:8]}"
    made: Made = {}
    reachable = True
    try:
        async with report.rpc("HealthCheck") as d:
            health = await client.health(deep=True)
            expect(health.healthy, f"unhealthy: {health.nats_status} {health.message}")
            d.append(f"{health.nats_status} jetstream={health.jetstream_enabled}")
        # Nothing listening: 43 more connection errors would say nothing new.
        reachable = not isinstance(report.first_error, Unavailable)
        if reachable:
            for phase in (_core, _jetstream, _kv, _objects):
                try:
                    await phase(client, report, tag, made)
                except Exception as exc:  # outside an RPC's block: go on
                    report.first_error = report.first_error or NatsgwError(str(exc))
            async with report.rpc("GetStatistics") as d:
                stats = await client.statistics()
                d.append(f"streams={stats.total_streams} connections={stats.connections}")
    finally:
        await _clean_up(made)
    why = "not run: the gateway did not answer HealthCheck" if not reachable else "not reached"
    for name in ALL_RPCS:
        if name not in report.results:
            report.line(name, False, None, why)
    return report


async def _core(client: Client, report: Report, tag: str, made: Made) -> None:
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


async def _jetstream(client: Client, report: Report, stream: str, made: Made) -> None:
    ids = client.identity()
    stub = client.stub
    async with report.rpc("CreateStream"):
        await client.create_stream(
            stream, [f"{stream}.>"], config=pb.StreamConfig(storage=pb.StorageType.STORAGE_MEMORY)
        )
        made["stream"] = lambda: client.delete_stream(stream)
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
        expect(len(pulled) == 2, "not run: PullMessages did not deliver")
        await stub.ack_message(pb.AckMessageRequest(ack_token=pulled[0].ack_token, **ids))
    async with report.rpc("NakMessage"):
        expect(len(pulled) == 2, "not run: PullMessages did not deliver")
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
    await _consumer_control(report, client, stream)
    async with report.rpc("PurgeStream") as d:
        purged = await client.purge_stream(stream)
        d.append(f"purged={purged}")
    async with report.rpc("DeleteConsumer"):
        await client.delete_consumer(stream, "smoke")
    async with report.rpc("DeleteStream"):
        await client.delete_stream(stream)
        made.pop("stream", None)


async def _kv(client: Client, report: Report, bucket: str, made: Made) -> None:
    async with report.rpc("KVCreateBucket"):
        await client.kv_create_bucket(bucket, history=5)
        made["bucket"] = lambda: client.kv_delete_bucket(bucket)
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
        made.pop("bucket", None)


#: The API has no call that deletes an object bucket, so every run uses this one (left empty).
OBJECT_BUCKET = "natsgw-smoke"


async def _objects(client: Client, report: Report, tag: str, made: Made) -> None:
    ids = client.identity()
    bucket, unary, streamed = OBJECT_BUCKET, f"{tag}-unary", f"{tag}-streamed"
    content = b"natsgw smoke " * 20_000  # 260 kB: more than one chunk
    async with report.rpc("ObjectPut"):
        await client.stub.object_put(
            pb.ObjectPutRequest(bucket=bucket, object_name=unary, data=b"small", **ids)
        )
        made[unary] = lambda: client.delete_object(bucket, unary)
    async with report.rpc("ObjectGet"):
        got = await client.stub.object_get(
            pb.ObjectGetRequest(bucket=bucket, object_name=unary, **ids)
        )
        expect(got.found and got.data == b"small", "ObjectGet content")
    async with report.rpc("ObjectPutStream"):
        sha = hashlib.sha256(content).hexdigest()
        made[streamed] = lambda: client.delete_object(bucket, streamed)  # even if half-stored
        await client.put_object(bucket, streamed, content, sha256=sha, chunk_size=64 * 1024)
    async with report.rpc("ObjectGetStream"):
        expect(await client.get_object_bytes(bucket, streamed) == content, "content differs")
    async with report.rpc("ObjectList"):
        names = {o.name for o in await client.objects(bucket)}
        expect({unary, streamed} <= names, f"listed {sorted(names)}")
    async with report.rpc("ObjectDelete"):
        for name in (unary, streamed):
            made.pop(name, None)
            await client.delete_object(bucket, name)


async def _clean_up(made: Made) -> None:
    """Best effort: delete what a failed step left behind (only what this run made)."""
    for delete in made.values():
        with contextlib.suppress(NatsgwError, GRPCError, TimeoutError, OSError):
            await asyncio.wait_for(delete(), 5)


async def _consumer_control(report: Report, client: Client, stream: str) -> None:
    """UpdateConsumer, PauseConsumer, ResumeConsumer, ResetConsumer on the smoke consumer."""
    async with report.rpc("UpdateConsumer"):
        info = await client.update_consumer(
            stream, pb.ConsumerConfig(durable_name="smoke", description="natsgw smoke")
        )
        expect(info.config is not None and info.config.description == "natsgw smoke", "unchanged")
    async with report.rpc("PauseConsumer"):
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        expect((await client.pause_consumer(stream, "smoke", until)).paused, "not paused")
    async with report.rpc("ResumeConsumer"):
        expect(not (await client.resume_consumer(stream, "smoke")).paused, "still paused")
    async with report.rpc("ResetConsumer") as d:
        reset = await client.reset_consumer(stream, "smoke", sequence=1)
        expect(reset.reset_sequence == 1, f"reset to {reset.reset_sequence}")
        d.append("next=1")
