"""PublishBatch (1000 x 128 B, 4 calls in flight) vs a nats-py publish loop + flush, and
Subscribe delivery while the gateway's own PublishBatch feeds it vs a nats-py subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import time

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.client import USER, StreamEnded, open_stream
from scripts.bench.context import BATCH, IN_FLIGHT, PAYLOAD, Context
from scripts.bench.processes import ceiling_note, cpu_seconds
from scripts.bench.table import Row

#: Nothing may arrive for this long before a subscriber is declared finished.
IDLE = 3.0
ROUNDS = 2


async def feed(ctx: Context, subject: str, messages: int) -> float:
    """PublishBatch ``messages`` (whole batches) on ``subject``; returns the elapsed seconds."""
    request = pb2.PublishBatchRequest(
        user_id=USER, messages=[pb2.NATSMessage(subject=subject, data=PAYLOAD)] * BATCH
    )
    return await ctx.send_batches("PublishBatch", request, messages)


async def publish_batch(ctx: Context) -> Row:
    """Alternates natsgw and nats-py in ROUNDS slices (the nats-py loop is short and swings with
    the machine's load; alternating spreads a swing over both sides)."""
    n = ctx.sizes.publish_msgs // BATCH // ROUNDS * BATCH
    await feed(ctx, "bench.publish", BATCH)  # warm-up
    gateway_seconds = native_seconds = 0.0
    for i in range(ROUNDS):
        async with ctx.profiler.record(f"publish_batch-{i}"):
            gateway_seconds += await feed(ctx, "bench.publish", n)
        started = time.perf_counter()
        for _ in range(n):
            await ctx.nc.publish("bench.native.publish", PAYLOAD)
        await ctx.nc.flush()
        native_seconds += time.perf_counter() - started
    gateway, native = n * ROUNDS / gateway_seconds, n * ROUNDS / native_seconds
    return Row(
        f"PublishBatch {BATCH} x 128 B, {IN_FLIGHT} in flight",
        "msg/s",
        gateway,
        "nats-py publish loop + flush",
        native,
        "≥ 0.5x",
    )


class Counter:
    """Messages received so far, and when the last one came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self, count: int = 1) -> None:
        self.last = time.perf_counter()
        self.count += count
        if self.count >= self.expected:
            self.done.set()

    async def settle(self) -> None:
        """Wait until every message arrived or none arrived for IDLE seconds."""
        seen = -1
        while not self.done.is_set() and seen != self.count:
            seen = self.count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), IDLE)

    def rate(self, started: float) -> float:
        return self.count / (self.last - started) if self.count else 0.0


async def subscribe(ctx: Context) -> Row:
    """One message per response, as every existing client reads a Subscribe stream (grpc.aio)."""
    return await _subscribe(ctx, max_batch=0, client="grpc.aio")


async def subscribe_grpclib(ctx: Context) -> Row:
    """One message per response, read by a grpclib client (the stack of natsgw's own client)."""
    return await _subscribe(ctx, max_batch=0, client="grpclib")


async def subscribe_batched(ctx: Context) -> Row:
    """The opt-in batched delivery (``SubscribeRequest.max_batch``)."""
    return await _subscribe(ctx, max_batch=100, client="grpc.aio")


async def _subscribe(ctx: Context, max_batch: int, client: str) -> Row:
    n = ctx.sizes.subscribe_msgs // BATCH * BATCH
    subject = f"bench.subscribe{max_batch}{client}"
    request = pb2.SubscribeRequest(user_id=USER, subject=subject, max_batch=max_batch)

    # natsgw: a Subscribe stream, read as fast as the client allows.
    counter = Counter(n)
    ended = "stream kept"
    call = await open_stream(ctx.gateway, ctx.gateway_port, client, "Subscribe", request)

    async def read() -> None:
        nonlocal ended
        try:
            async for response in call:
                counter.hit(1 + len(response.batch))
        except StreamEnded as exc:
            ended = f"stream ended {exc.code} after {counter.count:,}"
            counter.done.set()

    reader = asyncio.create_task(read())
    async with ctx.profiler.record("subscribe"):
        cpu_before = cpu_seconds(ctx.gateway_pid)
        started = time.perf_counter()
        fed_seconds = await feed(ctx, subject, n)
        await counter.settle()
        cpu = cpu_seconds(ctx.gateway_pid) - cpu_before
    call.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    gateway = counter.rate(started)
    received = counter.count

    # Baseline: a nats-py subscriber on the same NATS subject, fed the same way.
    native_counter = Counter(n)
    suffix = "." + subject

    async def on_message(msg: object) -> None:
        if msg.subject.endswith(suffix):  # type: ignore[attr-defined]
            native_counter.hit()

    sub = await ctx.nc.subscribe(">", cb=on_message, pending_msgs_limit=10 * n)
    await ctx.nc.flush()
    started = time.perf_counter()
    await feed(ctx, subject, n)
    await native_counter.settle()
    await sub.unsubscribe()
    native = native_counter.rate(started)
    notes = [
        ended,
        f"received {received:,}/{n:,} (nats-py {native_counter.count:,})",
        f"fed at {n / fed_seconds:,.0f} msg/s",
        # The gateway's own cost: accepting the feed and delivering it.
        f"gateway CPU {cpu / n * 1e6:.0f} µs/msg (feed + delivery)",
    ]
    if not max_batch:
        notes.append(await ceiling_note(n, client, native))
    return Row(
        "Subscribe delivery, fed by PublishBatch, "
        + (f"max_batch={max_batch}" if max_batch else "one message per response")
        + f", {client} reader",
        "msg/s",
        gateway,
        "nats-py subscriber, same feed",
        native,
        "≥ 0.3x, stream kept",
        notes,
    )
