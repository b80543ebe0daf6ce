"""The processes under test: nats-server, ``natsgw serve`` and the bare grpclib server.

Each runs as its own process so the load generator's CPU does not count against it; the suite
talks to all of them over loopback. The gateway is pointed at the suite's nats-server, which the
direct nats-py baselines use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from natsgw.ops.embedded import EmbeddedNatsServer
from scripts.bench import stream_floor
from scripts.bench.profile import summarise

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@dataclass(frozen=True)
class Served:
    port: int
    pid: int


@contextlib.asynccontextmanager
async def nats_server(max_payload: int = 10 * MIB) -> AsyncIterator[EmbeddedNatsServer]:
    """The nats-server natsgw starts by default (same class, same settings), owned by the suite."""
    data_dir = Path(tempfile.mkdtemp(prefix="natsgw-bench-nats-"))
    server = EmbeddedNatsServer(data_dir, max_payload=max_payload)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_gateway(nats: EmbeddedNatsServer) -> AsyncIterator[Served]:
    """``natsgw serve`` with its default settings, on a free port, using ``nats``."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="natsgw-bench-gw-"))
    env = dict(os.environ)
    env.update(
        GRPC_HOST="127.0.0.1",
        GRPC_PORT=str(port),
        NATS_URLS=nats.url,
        NATSGW_NATS_MONITOR_URL=nats.monitor_url,
        NATSGW_DATA_DIR=str(data_dir),
        NATSGW_LOG_LEVEL=os.environ.get("NATSGW_LOG_LEVEL", "warning"),
        NATSGW_LOG_FORMAT="console",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natsgw", "serve", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_listening(port, proc)
        yield Served(port, proc.pid)
    finally:
        await stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def bare_grpclib_server() -> AsyncIterator[Served]:
    """scripts/bench/bare.py in its own process."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.bench.bare", str(port), cwd=ROOT
    )
    try:
        await wait_listening(port, proc)
        yield Served(port, proc.pid)
    finally:
        await stop_process(proc)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``5 > clear_refs``); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Profiler:
    """py-spy recording the gateway process while one row's natsgw phase runs (``--profile``)."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory = directory
        self.pid = pid

    @contextlib.asynccontextmanager
    async def record(self, name: str, pid: int = 0) -> AsyncIterator[None]:
        """Record ``pid`` (default: the gateway) into ``<name>.folded`` and ``<name>.txt``."""
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{name}.folded"
        beside = Path(sys.executable).with_name("py-spy")
        py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(pid or self.pid), "--rate", "500", "--format", "raw",
            "--nonblocking", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            await asyncio.wait_for(spy.wait(), 30)
            if out.exists():
                (self.directory / f"{name}.txt").write_text(summarise(out))


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client_ceiling(messages: int, reader: str) -> float:
    """Responses/s the load generator's ``reader`` ("grpc.aio" or "grpclib") reads from a bare
    grpclib stream (one message per response, several per write): the most any gateway can
    deliver to that client."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.bench.stream_floor", str(port), cwd=ROOT
    )
    try:
        await wait_listening(port, proc)
        return await stream_floor.read_rate(port, messages, reader)
    finally:
        with contextlib.suppress(ProcessLookupError):
            await stop_process(proc)


async def ceiling_note(messages: int, reader: str, baseline: float) -> str:
    """The row note: how fast ``reader`` reads any server stream (:func:`client_ceiling`)."""
    ceiling = await client_ceiling(messages, reader)
    return (
        f"client ceiling: {reader} reads {ceiling:,.0f} responses/s from a bare grpclib stream "
        f"({ceiling / baseline:.2f}x of the baseline)"
    )
