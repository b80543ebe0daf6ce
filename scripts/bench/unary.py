"""Issue 8 point 8: unary Publish (server-confirmed) with 64 concurrent grpc.aio callers,
natsgw vs a bare grpclib server answering a fixed response; same client, one run."""

from __future__ import annotations

import asyncio
import time

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench import client as rpc
from scripts.bench.context import PAYLOAD, Context
from scripts.bench.table import Row

CALLERS = 64
WARM_UP = 1.0
ROUNDS = 2


async def hammer(port: int, seconds: float) -> tuple[float, list[float]]:
    """CALLERS tasks calling Publish in a loop; after a warm-up, the seconds measured and the
    latency of every call completed in them."""
    request = pb2.PublishRequest(
        user_id=rpc.USER, subject="bench.unary", data=PAYLOAD
    ).SerializeToString()
    async with rpc.channel(port) as channel:
        publish = rpc.GatewayClient(channel).unary("Publish")
        await publish(request)
        latencies: list[float] = []
        measuring = False
        stop_at = time.perf_counter() + WARM_UP + seconds

        async def caller() -> None:
            while (now := time.perf_counter()) < stop_at:
                await publish(request)
                if measuring:
                    latencies.append(time.perf_counter() - now)

        tasks = [asyncio.create_task(caller()) for _ in range(CALLERS)]
        await asyncio.sleep(WARM_UP)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return elapsed, latencies


async def unary_publish(ctx: Context) -> list[Row]:
    """Alternates bare and natsgw in ROUNDS slices, so a load swing on the shared machine hits
    both sides alike."""
    seconds = ctx.sizes.unary_seconds / ROUNDS
    bare_time, gateway_time, bare, ours = 0.0, 0.0, [], []
    for i in range(ROUNDS):
        async with ctx.profiler.record(f"unary_publish_bare-{i}", ctx.bare_pid):
            elapsed, latencies = await hammer(ctx.bare_port, seconds)
        bare_time += elapsed
        bare += latencies
        async with ctx.profiler.record(f"unary_publish-{i}"):
            elapsed, latencies = await hammer(ctx.gateway_port, seconds)
        gateway_time += elapsed
        ours += latencies
    bare_rate, rate = len(bare) / bare_time, len(ours) / gateway_time
    bare.sort()
    ours.sort()
    p50, p99 = rpc.percentile(ours, 0.5) * 1e3, rpc.percentile(ours, 0.99) * 1e3
    bare_p50, bare_p99 = rpc.percentile(bare, 0.5) * 1e3, rpc.percentile(bare, 0.99) * 1e3
    return [
        Row(
            f"unary Publish (confirmed), {CALLERS} grpc.aio callers", "calls/s", rate,
            "bare grpclib, fixed answer", bare_rate, "≥ 0.85x",
            [f"p50 {p50:.1f} ms vs {bare_p50:.1f} ms"],
        ),
        Row(
            "unary Publish p99 latency (lower is better)", "ms", p99,
            "bare grpclib", bare_p99, "≤ 1.5x",
        ),
    ]  # fmt: skip
