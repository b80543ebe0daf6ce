"""JetStream: PublishToStreamBatch (1000 x 128 B, 4 in flight) vs nats-py ``js.publish_async``,
and Consume (window 1000) + AckMessages in batches of 500 vs nats-py pull ``fetch(500)`` + ack:
one message per response (what every existing client reads) and the opt-in ``max_batch=500``."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import StorageType

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.client import USER
from scripts.bench.context import BATCH, IN_FLIGHT, PAYLOAD, Context
from scripts.bench.processes import ceiling_note, cpu_seconds
from scripts.bench.table import Row

WINDOW = 1000
ACK_BATCH = 500


async def create_stream(ctx: Context, name: str) -> None:
    await ctx.gateway.unary("CreateStream")(
        pb2.CreateStreamRequest(
            user_id=USER,
            config=pb2.StreamConfig(name=name, subjects=[f"{name}.>"], storage=pb2.STORAGE_MEMORY),
        )
    )


async def fill(ctx: Context, stream: str, messages: int) -> float:
    """PublishToStreamBatch ``messages`` into ``stream``, 4 batches in flight; elapsed seconds."""
    request = pb2.PublishToStreamBatchRequest(
        user_id=USER,
        stream_name=stream,
        messages=[pb2.StreamMessage(subject=f"{stream}.x", data=PAYLOAD)] * BATCH,
    )
    return await ctx.send_batches("PublishToStreamBatch", request, messages)


async def native_fill(ctx: Context, stream: str, messages: int) -> float:
    """nats-py ``publish_async`` for every message, then wait for all acks; elapsed seconds."""
    started = time.perf_counter()
    futures = [await ctx.js.publish_async(f"{stream}.x", PAYLOAD) for _ in range(messages)]
    await asyncio.gather(*futures)
    return time.perf_counter() - started


async def publish_to_stream_batch(ctx: Context) -> Row:
    n = ctx.sizes.stream_msgs // BATCH * BATCH
    await create_stream(ctx, "benchpub")
    await fill(ctx, "benchpub", BATCH)  # warm-up
    async with ctx.profiler.record("publish_to_stream_batch"):
        gateway = n / await fill(ctx, "benchpub", n)
    await ctx.js.add_stream(name="NATIVEPUB", subjects=["nativepub.>"], storage=StorageType.MEMORY)
    await native_fill(ctx, "nativepub", BATCH)
    native = n / await native_fill(ctx, "nativepub", n)
    await ctx.js.delete_stream("NATIVEPUB")
    await ctx.gateway.unary("DeleteStream")(
        pb2.DeleteStreamRequest(user_id=USER, stream_name="benchpub")
    )
    return Row(
        f"PublishToStreamBatch {BATCH} x 128 B, {IN_FLIGHT} in flight",
        "msg/s",
        gateway,
        "nats-py js.publish_async",
        native,
        "≥ 0.8x",
    )


async def gateway_consume(ctx: Context, n: int, max_batch: int = 0) -> float:
    acks: list[asyncio.Future[pb2.AckMessagesResponse]] = []
    ack = ctx.gateway.unary("AckMessages")
    call = ctx.gateway.stream("Consume")(
        pb2.ConsumeRequest(
            user_id=USER,
            stream_name="benchcons",
            consumer_name="bench",
            max_messages=WINDOW,
            max_batch=max_batch,
        )
    )
    got = 0
    pending: list[str] = []
    started = time.perf_counter()
    async for response in call:
        if not response.HasField("message"):
            continue
        got += 1 + len(response.batch)
        pending.append(response.message.ack_token)
        pending.extend(message.ack_token for message in response.batch)
        if len(pending) >= ACK_BATCH or got >= n:
            acks.append(
                asyncio.ensure_future(ack(pb2.AckMessagesRequest(user_id=USER, ack_tokens=pending)))
            )
            pending = []
        if got >= n:
            break
    for done in await asyncio.gather(*acks):
        if done.succeeded != len(done.results):
            raise RuntimeError("AckMessages refused tokens")
    elapsed = time.perf_counter() - started
    call.cancel()
    return elapsed


async def native_consume(ctx: Context, n: int) -> float:
    psub = await ctx.js.pull_subscribe("nativecons.>", durable="bench", stream="NATIVECONS")
    got = 0
    started = time.perf_counter()
    while got < n:
        for msg in await psub.fetch(ACK_BATCH, timeout=5):
            await msg.ack()
            got += 1
    elapsed = time.perf_counter() - started
    await psub.unsubscribe()
    return elapsed


async def consume(ctx: Context) -> Row:
    """One message per response, as every existing client reads a Consume stream."""
    return await _consume(ctx, max_batch=0)


async def consume_batched(ctx: Context) -> Row:
    """The opt-in batched delivery (``ConsumeRequest.max_batch``): one batch per ack call."""
    return await _consume(ctx, max_batch=ACK_BATCH)


async def _consume(ctx: Context, max_batch: int) -> Row:
    n = ctx.sizes.consume_msgs // BATCH * BATCH
    await create_stream(ctx, "benchcons")
    await fill(ctx, "benchcons", n)
    await ctx.gateway.unary("CreateConsumer")(
        pb2.CreateConsumerRequest(
            user_id=USER, stream_name="benchcons", config=pb2.ConsumerConfig(durable_name="bench")
        )
    )
    async with ctx.profiler.record(f"consume-{max_batch}" if max_batch else "consume"):
        cpu_before = cpu_seconds(ctx.gateway_pid)
        gateway = n / await gateway_consume(ctx, n, max_batch)
        cpu = cpu_seconds(ctx.gateway_pid) - cpu_before
    await ctx.gateway.unary("DeleteStream")(
        pb2.DeleteStreamRequest(user_id=USER, stream_name="benchcons")
    )

    await ctx.js.add_stream(
        name="NATIVECONS", subjects=["nativecons.>"], storage=StorageType.MEMORY
    )
    await native_fill(ctx, "nativecons", n)
    native = n / await native_consume(ctx, n)
    await ctx.js.delete_stream("NATIVECONS")
    window = f"window {WINDOW}" + (f", max_batch={max_batch}" if max_batch else "")
    # The gateway's own cost, whatever the client and the machine's load let through.
    notes = [f"gateway CPU {cpu / n * 1e6:.0f} µs/msg"]
    if not max_batch:
        notes.append(await ceiling_note(n, "grpc.aio", native))
    return Row(
        f"Consume ({window}) + AckMessages x {ACK_BATCH}",
        "msg/s",
        gateway,
        f"nats-py pull fetch({ACK_BATCH}) + ack()",
        native,
        "≥ 0.6x",
        notes,
    )
