"""ObjectPut / ObjectGet of one 8 MiB object in a unary call vs nats-py object store put / get,
and the gateway's resident memory while it does them (run first, on a fresh gateway)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.client import USER
from scripts.bench.context import Context
from scripts.bench.processes import MIB, reset_peak_rss, rss_kib
from scripts.bench.table import Row


class PeakRss:
    """Peak RSS of a process over a block: VmHWM after resetting it, or 10 ms samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.peak = 0
        self._sampler: asyncio.Task[None] | None = None
        self._reset = False

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid)["VmRSS"])
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> PeakRss:
        self._reset = reset_peak_rss(self.pid)
        self.before = self.peak = rss_kib(self.pid)["VmRSS"]
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sampler is not None
        self._sampler.cancel()
        status = rss_kib(self.pid)
        if self._reset:
            self.peak = max(self.peak, status["VmHWM"])


async def objects(ctx: Context) -> list[Row]:
    size, rounds = ctx.sizes.object_bytes, ctx.sizes.object_rounds
    data = os.urandom(size)
    put, get = ctx.gateway.unary("ObjectPut"), ctx.gateway.unary("ObjectGet")
    put_request = pb2.ObjectPutRequest(
        user_id=USER, bucket="bench", object_name="blob", data=data
    ).SerializeToString()
    get_request = pb2.ObjectGetRequest(user_id=USER, bucket="bench", object_name="blob")

    async with PeakRss(ctx.gateway_pid) as rss:
        put_seconds = get_seconds = 0.0
        async with ctx.profiler.record("objects"):
            for _ in range(rounds):
                started = time.perf_counter()
                await put(put_request)
                put_seconds += time.perf_counter() - started
                started = time.perf_counter()
                answer = await get(get_request)
                get_seconds += time.perf_counter() - started
                if len(answer.data) != size:
                    raise RuntimeError(f"ObjectGet returned {len(answer.data)} of {size} bytes")

    store = await ctx.js.create_object_store("bench_native")
    native_put = native_get = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        await store.put("blob", data)
        native_put += time.perf_counter() - started
        started = time.perf_counter()
        result = await store.get("blob")
        native_get += time.perf_counter() - started
        if result.data is None or len(result.data) != size:
            raise RuntimeError("nats-py object get returned the wrong size")
    await ctx.js.delete_object_store("bench_native")

    mib = size / MIB
    growth = (rss.peak - rss.before) * 1024 / size
    label = f"{mib:g} MiB"
    return [
        Row(
            f"ObjectPut {label} unary", "MiB/s", rounds * mib / put_seconds,
            "nats-py object put", rounds * mib / native_put, "≥ 0.8x",
        ),
        Row(
            f"ObjectGet {label} unary", "MiB/s", rounds * mib / get_seconds,
            "nats-py object get", rounds * mib / native_get, "keep (8-11x)",
        ),
        Row(
            f"gateway RSS growth, {rounds} x {label} put + get", "x object", growth,
            "", None, "≤ 4x",
            [f"RSS {rss.before / 1024:.0f} → {rss.peak / 1024:.0f} MiB (peak)"],
            ratio=growth,
        ),
    ]  # fmt: skip


PIECE = 256 * 1024


async def streamed_objects(ctx: Context) -> Row:
    """Issue 12 point 7: ObjectPutStream / ObjectGetStream hold a few chunks whatever the size."""
    size = ctx.sizes.streamed_object_bytes
    block = os.urandom(PIECE)
    pieces = [i.to_bytes(8, "big") + block[8:] for i in range(size // PIECE)]
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()

    def requests() -> Iterator[pb2.ObjectPutStreamRequest]:
        yield pb2.ObjectPutStreamRequest(
            header=pb2.ObjectPutHeader(
                user_id=USER, bucket="bench", object_name="streamed", sha256=digest
            )
        )
        for piece in pieces:
            yield pb2.ObjectPutStreamRequest(chunk=piece)

    async with PeakRss(ctx.gateway_pid) as rss, ctx.profiler.record("streamed_objects"):
        started = time.perf_counter()
        await ctx.gateway.client_stream("ObjectPutStream")(requests())
        put_seconds = time.perf_counter() - started
        got = hashlib.sha256()
        started = time.perf_counter()
        async for response in ctx.gateway.stream("ObjectGetStream")(
            pb2.ObjectGetRequest(user_id=USER, bucket="bench", object_name="streamed")
        ):
            got.update(response.chunk)
        get_seconds = time.perf_counter() - started
    if got.hexdigest() != digest:
        raise RuntimeError("ObjectGetStream returned different content")
    growth = (rss.peak - rss.before) * 1024 / MIB
    mib = size / MIB
    return Row(
        f"gateway RSS growth, ObjectPutStream + GetStream {mib:g} MiB", "MiB", growth,
        "", None, "a few chunks, whatever the size",
        [
            f"put {mib / put_seconds:.0f} MiB/s, get {mib / get_seconds:.0f} MiB/s",
            f"RSS {rss.before / 1024:.0f} → {rss.peak / 1024:.0f} MiB (peak)",
        ],
        ratio=growth / mib,
    )  # fmt: skip
