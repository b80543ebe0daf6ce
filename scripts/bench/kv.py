"""KVPut / KVGet, 64 calls in flight, vs nats-py sequential put / get."""

from __future__ import annotations

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.client import USER, in_flight
from scripts.bench.context import PAYLOAD, Context
from scripts.bench.processes import cpu_seconds
from scripts.bench.table import Row

IN_FLIGHT = 64
KEYS = 256


async def kv(ctx: Context) -> list[Row]:
    n = ctx.sizes.kv_ops
    put, get = ctx.gateway.unary("KVPut"), ctx.gateway.unary("KVGet")
    puts = [
        pb2.KVPutRequest(
            user_id=USER, bucket="bench", key=f"k{i}", value=PAYLOAD
        ).SerializeToString()
        for i in range(KEYS)
    ]
    gets = [
        pb2.KVGetRequest(user_id=USER, bucket="bench", key=f"k{i}").SerializeToString()
        for i in range(KEYS)
    ]
    await put(puts[0])  # creates the bucket
    await in_flight(IN_FLIGHT, KEYS, lambda i: put(puts[i]))  # warm-up

    async def get_one(i: int) -> None:
        if not (await get(gets[i % KEYS])).found:
            raise RuntimeError("KVGet did not find a key just put")

    cpu = cpu_seconds(ctx.gateway_pid)
    async with ctx.profiler.record("kv_put"):
        gateway_put = n / await in_flight(IN_FLIGHT, n, lambda i: put(puts[i % KEYS]))
    cpu, put_cpu = cpu_seconds(ctx.gateway_pid), cpu_seconds(ctx.gateway_pid) - cpu
    async with ctx.profiler.record("kv_get"):
        gateway_get = n / await in_flight(IN_FLIGHT, n, get_one)
    get_cpu = cpu_seconds(ctx.gateway_pid) - cpu

    store = await ctx.js.create_key_value(bucket="bench_native")
    for i in range(KEYS):
        await store.put(f"k{i}", PAYLOAD)

    async def native_put(i: int) -> None:
        await store.put(f"k{i % KEYS}", PAYLOAD)

    async def native_get(i: int) -> None:
        await store.get(f"k{i % KEYS}")

    native_put_rate = n / await in_flight(1, n, native_put)
    native_get_rate = n / await in_flight(1, n, native_get)
    await ctx.js.delete_key_value("bench_native")
    return [
        Row(
            f"KVPut, {IN_FLIGHT} in flight", "ops/s", gateway_put,
            "nats-py sequential put", native_put_rate, "≥ 0.55x",
            [f"gateway CPU {put_cpu / n * 1e6:.0f} µs/call"],
        ),
        Row(
            f"KVGet, {IN_FLIGHT} in flight", "ops/s", gateway_get,
            "nats-py sequential get", native_get_rate, "≥ 0.75x",
            [f"gateway CPU {get_cpu / n * 1e6:.0f} µs/call"],
        ),
    ]  # fmt: skip
