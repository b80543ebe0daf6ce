"""Attack natsgw's HTTP/2 edge (issue 17 rows A, E, F, H) and print, per row, what it did.

``python -m scripts.attack.edge [--tree DIR] [--rows A,E,F,H]`` starts ``natsgw serve`` (its
own embedded nats-server, loopback, a fresh data dir) from the source tree ``DIR`` (default:
this one) once per row, attacks it with a raw h2 client (scripts.attack.h2raw, in a process of
its own) while a quiet tenant keeps calling, and prints one table: the gateway's RSS growth,
the quiet tenant's latency and what the attacker saw. Run it once against a tree before the
edge defences and once after to compare. Everything is bounded and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from scripts.attack import h2raw

HERE = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Gateway:
    """A ``natsgw serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size


#: ``natsgw`` from the tree given as argv[1] (an editable install would otherwise win over
#: PYTHONPATH): ``python -c _RUN_FROM_TREE TREE serve``.
_RUN_FROM_TREE = (
    "import runpy, sys; tree = sys.argv.pop(1); sys.path.insert(0, tree); "
    "runpy.run_module('natsgw', run_name='__main__', alter_sys=True)"
)


def _lower_fd_limit(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


@contextlib.contextmanager
def serve(
    tree: Path, directory: Path, env: dict[str, str] | None = None, *, fd_soft_limit: int = 0
) -> Iterator[Gateway]:
    """Run ``natsgw serve`` from ``tree`` until the block ends (SIGTERM, then SIGKILL)."""
    port, http_port = free_port(), free_port()
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NATSGW_", "NATS_", "GRPC_"))},
        "NATSGW_DATA_DIR": str(directory / "data"),
        "GRPC_PORT": str(port),
        "NATSGW_HTTP_PORT": str(http_port),
        "NATSGW_LOG_FORMAT": "json",
        **(env or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "natsgw.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUN_FROM_TREE, str(tree), "serve"],
            env=run_env,
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=(lambda: _lower_fd_limit(fd_soft_limit)) if fd_soft_limit else None,
        )
    try:
        deadline = time.monotonic() + 30
        while "natsgw_started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"natsgw did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield Gateway(proc, port, http_port, log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def attacker(kind: str, port: int, count: int) -> subprocess.Popen[bytes]:
    """One h2raw attack in a process of its own (see scripts.attack.h2raw.main)."""
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.attack.h2raw", kind, str(port), str(count)],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdout=subprocess.PIPE,
    )


def attacker_result(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> dict[str, object]:
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    return dict(json.loads(lines[-1])) if lines else {}


@contextlib.asynccontextmanager
async def quiet_tenant(port: int) -> AsyncIterator[list[float]]:
    """A tenant publishing one message after another while the block runs: its latencies."""
    latencies: list[float] = []
    channel = Channel("127.0.0.1", port)
    stub = pb.NatsServiceStub(channel)
    stop = asyncio.Event()

    async def call_loop() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                await asyncio.wait_for(
                    stub.publish(
                        pb.PublishRequest(user_id="quiet", subject="quiet.ping", data=b"x"),
                        timeout=30,
                    ),
                    30,
                )
            except Exception:
                latencies.append(max(30.0, time.perf_counter() - began))
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(call_loop())
    try:
        yield latencies
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 35)
        finally:
            channel.close()


def p99(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return max(latencies, default=0.0)
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


async def wait_settled(gateway: Gateway, seconds: float) -> float:
    """The gateway's RSS after ``seconds`` of quiet (the lowest of a few samples)."""
    samples = []
    for _ in range(max(1, int(seconds / 0.5))):
        await asyncio.sleep(0.5)
        samples.append(gateway.rss())
    return min(samples[-3:])


def readyz(http_port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
            return str(r.status)
    except Exception as exc:
        return type(exc).__name__


Row = tuple[str, str, str]


async def row_a(tree: Path, directory: Path, streams: int, env: dict[str, str]) -> list[Row]:
    with serve(tree, directory, env) as gw:
        await asyncio.sleep(1.0)
        before = gw.rss()
        async with quiet_tenant(gw.port) as latencies:
            await asyncio.sleep(0.5)
            seen = await asyncio.to_thread(attacker_result, attacker("reset", gw.port, streams))
            await asyncio.sleep(0.5)
        after = await wait_settled(gw, 3.0)
        return [
            (
                "A",
                f"RSS growth after {streams} rapid resets (settled 3 s)",
                f"{after - before:+.0f} MiB ({before:.0f} -> {after:.0f})",
            ),
            ("A", "quiet tenant p99 / max during the resets", _lat(latencies)),
            ("A", "attacker saw", _seen(seen)),
        ]


async def row_e(tree: Path, directory: Path, streams: int, env: dict[str, str]) -> list[Row]:
    size = 8 * MIB
    with serve(tree, directory, env) as gw:
        channel = Channel("127.0.0.1", gw.port)
        stub = pb.NatsServiceStub(channel)
        await stub.object_put(
            pb.ObjectPutRequest(
                user_id="mallory", bucket="big", object_name="o", data=os.urandom(size)
            )
        )
        channel.close()
        await asyncio.sleep(1.0)
        before = gw.rss()
        body = bytes(pb.ObjectGetRequest(user_id="mallory", bucket="big", object_name="o"))
        client = await asyncio.to_thread(
            h2raw.unread_answers, gw.port, "/isa.nats.NATSService/ObjectGet", body, streams
        )
        async with quiet_tenant(gw.port) as latencies:
            await asyncio.sleep(4.0)
            held = gw.rss()
            await asyncio.sleep(4.0)  # still not reading (an edge cuts it after its stall timeout)
            closed = await asyncio.to_thread(client.wait_closed, 3.0)  # reads: EOF if cut
        cut_after = "closed by the gateway" if closed else "still open after 8 s"
        client.close()
        after = await wait_settled(gw, 5.0)
        return [
            (
                "E",
                f"RSS held, {streams} unread 8 MiB ObjectGet, 4 s in",
                f"{held - before:+.0f} MiB",
            ),
            ("E", "the non-reading connection", cut_after),
            ("E", "RSS 5 s after the client closed", f"{after - before:+.0f} MiB"),
            ("E", "quiet tenant p99 / max meanwhile", _lat(latencies)),
        ]


async def row_f(tree: Path, directory: Path, count: int, env: dict[str, str]) -> list[Row]:
    with serve(tree, directory, env, fd_soft_limit=1024) as gw:
        await asyncio.sleep(0.5)
        log_before = gw.log_bytes()
        clients, seen = await asyncio.to_thread(
            h2raw.idle_connections, gw.port, count, source="127.0.0.2", preface=False
        )
        await asyncio.sleep(1.0)
        for client in clients:
            client.drain()
        refused_at_once = sum(c.closed for c in clients) + seen.refused
        accepted = len(clients) - sum(c.closed for c in clients)
        async with quiet_tenant(gw.port) as latencies:
            await asyncio.sleep(2.0)
        probe = await asyncio.to_thread(readyz, gw.http_port)
        await asyncio.sleep(10.0)  # past the default handshake timeout (10 s)
        for client in clients:
            client.drain()
        still_open = sum(not c.closed for c in clients)
        for client in clients:
            client.close()
        failed = sum(1 for lat in latencies if lat >= 30.0)
        return [
            ("F", f"{count} idle connections (fd soft limit 1024): held open", f"{accepted}"),
            ("F", "refused or closed at once", f"{refused_at_once}"),
            (
                "F",
                "quiet tenant calls ok / failed meanwhile",
                f"{len(latencies) - failed} / {failed}",
            ),
            ("F", "/readyz meanwhile", probe),
            ("F", "idle connections still open 12 s later", f"{still_open}"),
            ("F", "log written meanwhile", f"{(gw.log_bytes() - log_before) / 1024:.0f} KiB"),
        ]


async def row_h(tree: Path, directory: Path, count: int, env: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    for kind in ("ping", "settings"):
        with serve(tree, directory / kind, env) as gw:
            await asyncio.sleep(1.0)
            before = gw.rss()
            async with quiet_tenant(gw.port) as latencies:
                await asyncio.sleep(0.3)
                seen = await asyncio.to_thread(attacker_result, attacker(kind, gw.port, count))
                peak = gw.rss()
            rows += [
                (
                    "H",
                    f"RSS growth, {count} {kind.upper()} frames never read",
                    f"{peak - before:+.0f} MiB",
                ),
                ("H", f"quiet tenant p99 / max during the {kind} flood", _lat(latencies)),
                ("H", "attacker saw", _seen(seen)),
            ]
    return rows


def _lat(latencies: list[float]) -> str:
    if not latencies:
        return "no call completed"
    return f"{p99(latencies) * 1000:.0f} / {max(latencies) * 1000:.0f} ms ({len(latencies)} calls)"


def _seen(seen: dict[str, object]) -> str:
    goaways = seen.get("goaways") or {}
    assert isinstance(goaways, dict)
    codes = ",".join(f"{k} x{v}" for k, v in goaways.items()) or "none"
    return (
        f"sent {seen.get('sent')} on {seen.get('connections')} connection(s); "
        f"GOAWAY {codes}; closed by server {seen.get('closed_by_server')}"
    )


async def run(args: argparse.Namespace, tree: Path) -> list[Row]:
    rows: list[Row] = []
    env = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory(prefix="natsgw-edge-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        wanted = set(args.rows.split(","))
        if "A" in wanted:
            rows += await row_a(tree, base / "a", args.resets, env)
        if "E" in wanted:
            rows += await row_e(tree, base / "e", args.objects, env)
        if "F" in wanted:
            rows += await row_f(tree, base / "f", args.connections, env)
        if "H" in wanted:
            rows += await row_h(tree, base / "h", args.frames, env)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(HERE), help="natsgw source tree to attack")
    parser.add_argument("--rows", default="A,E,F,H")
    parser.add_argument("--resets", type=int, default=50_000)
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--keep", default="", help="directory for the gateways' data and logs")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    args = parser.parse_args()
    rows = asyncio.run(run(args, Path(args.tree).resolve()))
    width = max(len(r[1]) for r in rows)
    print(f"natsgw edge attack against {Path(args.tree).resolve()}")
    for row, what, figure in rows:
        print(f"{row}  {what:<{width}}  {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
