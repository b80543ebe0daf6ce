"""Unary Publish throughput: natsgw (embedded NATS) beside a bare grpclib echo server.

Both servers run as their own processes; the load comes from this process through grpc.aio
with N concurrent callers (64 by default), each calling Publish in a loop. Prints calls per
second and latency percentiles for each target, so the gateway's own cost is visible against
grpclib's floor on the same machine.

    python scripts/bench_publish.py [--seconds 10] [--concurrency 64] [--payload 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_echo(port: int) -> None:
    """A grpclib server answering Publish without doing anything: the floor."""
    from grpclib.server import Server

    from natsgw._generated.isa import nats as pb
    from natsgw.server import build_codec

    class Echo(pb.NatsServiceBase):
        async def publish(self, message: pb.PublishRequest) -> pb.PublishResponse:
            return pb.PublishResponse(success=True, message="published")

    server = Server([Echo()], codec=build_codec(10 * 1024 * 1024))
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def grpcio_stubs(out: Path) -> tuple[object, object]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'api'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "api" / "nats_service.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    import nats_service_pb2
    import nats_service_pb2_grpc

    return nats_service_pb2, nats_service_pb2_grpc


async def load(
    port: int, pb2: object, pb2_grpc: object, seconds: float, concurrency: int, payload: int
) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb2_grpc.NATSServiceStub(channel)  # type: ignore[attr-defined]
        request = pb2.PublishRequest(  # type: ignore[attr-defined]
            user_id="bench-user", subject="bench.publish", data=b"x" * payload
        )
        latencies: list[float] = []
        count = 0
        measuring = False
        stop_at = time.monotonic() + 1.0 + seconds

        async def caller() -> None:
            nonlocal count
            while (now := time.monotonic()) < stop_at:
                await stub.Publish(request)
                if measuring:
                    count += 1
                    latencies.append(time.monotonic() - now)

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(1.0)  # warm-up
        measuring = True
        started = time.monotonic()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    return count / elapsed, latencies


def report(name: str, rate: float, latencies: list[float]) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"{name:<28} {rate:>9.0f} calls/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--payload", type=int, default=128)
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        asyncio.run(serve_echo(args.serve_echo))
        return

    tmp = Path(tempfile.mkdtemp(prefix="natsgw-bench-"))
    pb2, pb2_grpc = grpcio_stubs(tmp / "stubs")
    echo_port, gw_port = free_port(), free_port()
    env = os.environ | {
        "GRPC_PORT": str(gw_port),
        "NATSGW_DATA_DIR": str(tmp / "data"),
        "NATSGW_LOG_LEVEL": "warning",
    }
    env.pop("NATS_URLS", None)
    procs = [
        subprocess.Popen([sys.executable, __file__, "--serve-echo", str(echo_port)]),
        subprocess.Popen([sys.executable, "-m", "natsgw", "serve"], env=env),
    ]
    try:
        wait_port(echo_port)
        wait_port(gw_port)
        print(
            f"{args.concurrency} concurrent grpc.aio callers, {args.payload}-byte payloads, "
            f"{args.seconds:g}s each, {os.cpu_count()} cores"
        )
        for name, port in (
            ("bare grpclib echo", echo_port),
            ("natsgw Publish (confirmed)", gw_port),
        ):
            rate, latencies = asyncio.run(
                load(port, pb2, pb2_grpc, args.seconds, args.concurrency, args.payload)
            )
            report(name, rate, latencies)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
