"""Run the suite: ``python -m scripts.bench [--quick | --smoke] [--markdown FILE] [--json FILE]``.

Process layout (all on the same cores, nothing pinned): this process is the load generator
(grpc.aio clients and the direct nats-py baselines); ``natsgw serve``, the nats-server both use,
and the bare grpclib server each run as their own process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from natsgw.ops.logs import configure
from scripts.bench import client as rpc
from scripts.bench import kv, objects, publish, streams, unary
from scripts.bench.context import FULL, QUICK, SMOKE, Context
from scripts.bench.processes import (
    Profiler,
    bare_grpclib_server,
    nats_server,
    running_gateway,
)
from scripts.bench.table import Row, render_markdown, render_text

Measure = Callable[[Context], Awaitable[Row | list[Row]]]

#: Run order: objects first, so the RSS rows start from a freshly started gateway (streamed
#: first: it should hold a few chunks, and leaves little behind for the unary row to reuse).
ROWS: dict[str, Measure] = {
    "streamed_objects": objects.streamed_objects,
    "objects": objects.objects,
    "publish_batch": publish.publish_batch,
    "subscribe": publish.subscribe,
    "subscribe_batched": publish.subscribe_batched,
    "subscribe_grpclib": publish.subscribe_grpclib,
    "kv": kv.kv,
    "consume": streams.consume,
    "consume_batched": streams.consume_batched,
    "publish_to_stream_batch": streams.publish_to_stream_batch,
    "unary_publish": unary.unary_publish,
}
#: Print order: the issue's table.
ORDER = ["publish_batch", "subscribe", "subscribe_grpclib", "subscribe_batched", "kv", "consume",
         "consume_batched", "publish_to_stream_batch", "objects", "unary_publish",
         "streamed_objects"]  # fmt: skip


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} cores ({model}), {mem_kib / 1024 / 1024:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


async def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    load_before = os.getloadavg()
    started = time.monotonic()
    results: dict[str, list[Row]] = {}
    async with (
        nats_server() as server,
        running_gateway(server) as gateway,
        bare_grpclib_server() as bare,
        rpc.channel(gateway.port) as channel,
    ):
        client = rpc.GatewayClient(channel)
        await rpc.wait_healthy(client)
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            ctx = Context(
                sizes=sizes,
                gateway=client,
                gateway_port=gateway.port,
                gateway_pid=gateway.pid,
                nc=nc,
                js=nc.jetstream(),
                profiler=Profiler(args.profile, gateway.pid),
                bare_port=bare.port,
                bare_pid=bare.pid,
            )
            for name, measure in ROWS.items():
                if args.only and name not in args.only:
                    continue
                print(f"... {name}", file=sys.stderr, flush=True)
                result = await measure(ctx)
                results[name] = result if isinstance(result, list) else [result]
        finally:
            await nc.close()
    rows = [row for name in ORDER for row in results.get(name, [])]
    preamble = [
        f"natsgw benchmark suite, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{'smoke' if args.smoke else 'quick' if args.quick else 'full'} run "
        f"({time.monotonic() - started:.0f} s)",
        f"Machine: {machine()}; load average {load_before[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end (other work shares the machine).",
        "Processes, none pinned, all sharing the cores: load generator (grpc.aio + nats-py "
        "clients), natsgw serve, nats-server (used by natsgw and nats-py alike), bare grpclib "
        "server. Ratios are natsgw / baseline; for latency and RSS lower is better.",
    ]
    return rows, preamble


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (~1 minute)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: proves every row runs")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--profile", type=Path, help="py-spy the gateway per row into this dir")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    args = parser.parse_args()
    configure("warning", "console")  # the suite's own nats-server logs at info
    rows, preamble = asyncio.run(run(args))
    print("\n".join(preamble))
    print()
    print(render_text(rows))
    if args.markdown:
        args.markdown.write_text(render_markdown(rows, preamble))
    if args.json:
        args.json.write_text(json.dumps([row.as_dict() for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
