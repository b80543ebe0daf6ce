"""Scaling of ``NATSGW_WORKERS``: ``python -m scripts.bench.workers [options]`` (see --help).

The main suite talks to the gateway over one connection, which SO_REUSEPORT gives to one worker,
so it cannot show what more workers do. Here each worker count gets its own ``natsgw serve`` as
deployed by default (its own embedded nats-server, supervisor and workers), optionally pinned
with ``taskset`` (children inherit it); load comes from ``--clients`` load-generator processes,
pinnable too (on a 2-core machine they share the gateway's cores: say so when reporting),
each spreading its callers over its share of ``--connections`` separate TCP connections.
Rounds alternate between the gateways, so a swing of the shared machine hits all alike. Printed:
throughput, and the CPU seconds per second the gateway's processes and the load generators used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from natsgw._generated import nats_service_pb2 as pb2
from scripts.bench.context import BATCH, PAYLOAD
from scripts.bench.processes import ROOT, free_port, stop_process

SERVICE = "/isa.nats.NATSService/"
USER = "bench-workers"
CALLERS = 64  # unary callers in all, as the suite's unary row
BATCH_IN_FLIGHT = 2  # PublishBatch calls in flight per connection
WARM_UP = 1.0
_TICKS = os.sysconf("SC_CLK_TCK")


# -- load generator (a child process) --------------------------------------------------------


async def client(kind: str, port: int, seconds: float, connections: int, callers: int) -> None:
    """Call for WARM_UP + ``seconds``; print what completed in the measured part, as JSON."""
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            # Without a local pool, channels to one target share one connection.
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(connections)
    ]
    request: Any
    reply: Any
    if kind == "unary":
        method, reply, items, per = "Publish", pb2.PublishResponse, 1, callers
        request = pb2.PublishRequest(user_id=USER, subject="b.u", data=PAYLOAD)
    else:
        method, reply, items = "PublishBatch", pb2.PublishBatchResponse, BATCH
        per = BATCH_IN_FLIGHT * connections
        messages = [pb2.NATSMessage(subject="b.b", data=PAYLOAD)] * BATCH
        request = pb2.PublishBatchRequest(user_id=USER, messages=messages)
    payload = request.SerializeToString()
    calls = [
        ch.unary_unary(
            SERVICE + method, request_serializer=bytes, response_deserializer=reply.FromString
        )
        for ch in channels
    ]
    done = 0
    measuring = False
    stop_at = time.perf_counter() + WARM_UP + seconds

    async def caller(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            response = await call(payload)
            if kind == "unary" and not response.success:
                raise RuntimeError("Publish failed")
            if kind == "batch" and response.published_count != BATCH:
                raise RuntimeError(f"PublishBatch published {response.published_count}")
            if measuring:
                done += items

    for call in calls:  # every connection up before the clock starts
        await call(payload)
    tasks = [asyncio.create_task(caller(calls[i % len(calls)])) for i in range(per)]
    await asyncio.sleep(WARM_UP)
    measuring = True
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    print(json.dumps({"items": done, "seconds": elapsed, "cpu": time.process_time() - cpu}))
    for ch in channels:
        await ch.close()


# -- the gateways and the run ----------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every descendant (supervisor, workers, nats)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        stat = stats.get(current)
        if stat is not None:
            total += (int(stat[11]) + int(stat[12])) / _TICKS  # utime, stime
        todo += children.get(current, [])
    return total


@dataclass
class Gateway:
    workers: int
    port: int
    pid: int


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2):
            return True
    except OSError:
        return False


def _taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


@contextlib.asynccontextmanager
async def gateway(workers: int, cpus: str) -> AsyncIterator[Gateway]:
    port, http = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="natsgw-bench-workers-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSGW_", "GRPC_"))}
    env.update(
        GRPC_PORT=str(port),
        NATSGW_HTTP_PORT=str(http),
        NATSGW_WORKERS=str(workers),
        NATSGW_DATA_DIR=str(data_dir),
        NATSGW_LOG_LEVEL="warning",
        NATSGW_LOG_FORMAT="console",
    )
    proc = await asyncio.create_subprocess_exec(
        *_taskset(cpus), sys.executable, "-m", "natsgw", "serve", env=env,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # /readyz: every worker serves and reaches NATS
            if await asyncio.to_thread(_ready, http):
                break
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway with {workers} worker(s) did not become ready")
            await asyncio.sleep(0.2)
        yield Gateway(workers, port, proc.pid)
    finally:
        await stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


async def measure(gw: Gateway, kind: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Items per second, gateway CPU seconds per second, load-generator CPU seconds per second."""
    per_client = max(1, args.connections // args.clients)
    callers = max(1, CALLERS // args.clients)
    command = [
        *_taskset(args.client_cpus), sys.executable, "-m", "scripts.bench.workers",
        "--client", kind, str(gw.port), str(args.seconds), str(per_client), str(callers),
    ]  # fmt: skip
    procs = [
        await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        for _ in range(args.clients)
    ]
    await asyncio.sleep(WARM_UP + 0.3)  # measure the gateway's CPU inside the clients' window
    cpu_before, at = tree_cpu(gw.pid), time.perf_counter()
    outputs = [await p.communicate() for p in procs]
    gateway_cpu = (tree_cpu(gw.pid) - cpu_before) / (time.perf_counter() - at)
    results = [json.loads(out) for out, _ in outputs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a load generator failed")
    seconds = max(r["seconds"] for r in results)
    return (
        sum(r["items"] for r in results) / seconds,
        gateway_cpu,
        sum(r["cpu"] for r in results) / seconds,
    )


async def run(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(gateway(w, args.gateway_cpus)) for w in args.workers
        ]
        for kind in args.kinds:
            totals: dict[int, list[float]] = {gw.workers: [0.0, 0.0, 0.0] for gw in gateways}
            for _ in range(args.rounds):
                for gw in gateways:
                    rate, gw_cpu, load_cpu = await measure(gw, kind, args)
                    for i, value in enumerate((rate, gw_cpu, load_cpu)):
                        totals[gw.workers][i] += value / args.rounds
            base = totals[gateways[0].workers][0]
            unit = "calls/s" if kind == "unary" else "msg/s"
            what = (
                f"unary Publish, {CALLERS} callers"
                if kind == "unary"
                else f"PublishBatch {BATCH} x 128 B, {BATCH_IN_FLIGHT} in flight per connection"
            )
            print(f"{what}, {args.connections} connections, {args.clients} load process(es):")
            for workers, (rate, gw_cpu, load_cpu) in totals.items():
                print(
                    f"  NATSGW_WORKERS={workers}: {rate:>10,.0f} {unit}  ({rate / base:.2f}x)  "
                    f"gateway CPU {gw_cpu:.2f} cores, load generator CPU {load_cpu:.2f} cores"
                )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        kind, port, seconds, connections, callers = sys.argv[2:7]
        asyncio.run(client(kind, int(port), float(seconds), int(connections), int(callers)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.workers", description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gateway-cpus", default="", help="taskset -c list, e.g. 0-1")
    parser.add_argument("--client-cpus", default="", help="taskset -c list of the load")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--kinds", nargs="+", choices=["unary", "batch"], default=["unary", "batch"]
    )
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores; gateway (supervisor, workers, nats-server) pinned to "
        f"{args.gateway_cpus or 'nothing'}, load generators to {args.client_cpus or 'nothing'}; "
        "load average "
        f"{os.getloadavg()[0]:.1f} at start (other work shares the machine)"
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
