"""Issue 17 rows C and G (and J) measured from outside, against ``natsgw serve`` in a subprocess.

``python -m scripts.attack.authfirst [--repo DIR]`` starts the gateway of ``DIR`` (default: this
checkout) with its embedded nats-server, attacks it over loopback and prints one table:

- C anonymous: token mode; 2 connections x 50 streams of raw HTTP/2 (the ``h2`` library), each
  with HEADERS but no credential, then as much of a 10 MiB request body as flow control lets in,
  never finished. Gateway RSS growth, streams answered, a bystander's latency (an authenticated
  client publishing), and RSS once the attacker went idle.
- C stalled: the same with a valid token (authenticated, the body never completes): what the
  request-body read timeout (NATSGW_REQUEST_READ_TIMEOUT, set to 3 s here) releases.
- G: trusted mode; one Publish with a 10 MiB user_id: how long it takes, what the bystander sees
  meanwhile, the longest log line the gateway wrote (the audit line) and the error text's size.
- J: a debug-level log: how often a valid or guessed bearer token appears in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
VALID_TOKEN = "valid-token-" + "v" * 24
GUESSED_TOKEN = "guessed-token-" + "g" * 22
PUBLISH = "/isa.nats.NATSService/Publish"
_ZEROS = memoryview(bytes(1024 * 1024))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Served:
    pid: int
    port: int
    log: Path


@contextlib.asynccontextmanager
async def serving(repo: Path, workdir: Path, **env: str) -> AsyncIterator[Served]:
    """``natsgw serve`` from ``repo`` on a free port (embedded nats-server), stopped at the end."""
    port = free_port()
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"token": VALID_TOKEN, "user_id": "bystander"}]}))
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NATSGW_", "NATS_", "GRPC_"))},
        "PYTHONPATH": str(repo),
        "NATSGW_DATA_DIR": str(workdir / "data"),
        "NATSGW_AUTH_TOKENS_FILE": str(tokens),
        "NATSGW_LOG_FORMAT": "json",
        "GRPC_PORT": str(port),
        **env,
    }
    log = workdir / "natsgw.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 - once, before the gateway starts
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "natsgw", "serve", cwd=repo, env=run_env, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while b'"natsgw_started"' not in log.read_bytes():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"natsgw did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        yield Served(proc.pid, port, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class RawConnection:
    """An HTTP/2 client that opens gRPC streams and sends bodies it never finishes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection
    #: stream id -> (gRPC message prefix not sent yet, body bytes still to send: zeros)
    pending: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    answered: dict[int, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.increment_flow_control_window(2**30)
        writer.write(conn.data_to_send())
        self = cls(reader, writer, conn)
        self.task = asyncio.create_task(self._pump())
        return self

    def start(self, metadata: list[tuple[str, str]], declared: int, send: int) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", PUBLISH),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
            ("te", "trailers"), *metadata,
        ]  # fmt: skip
        self.conn.send_headers(sid, headers)
        self.pending[sid] = (struct.pack(">?I", False, declared), send)
        self._flush()
        return sid

    def _flush(self) -> None:
        for sid, (prefix, left) in list(self.pending.items()):
            if sid in self.answered:
                self.pending.pop(sid)
                continue
            try:
                window = self.conn.local_flow_control_window(sid)
            except Exception:
                self.pending.pop(sid)
                continue
            if prefix and window >= len(prefix):
                self.conn.send_data(sid, prefix)
                window -= len(prefix)
                prefix = b""
            while not prefix and left and window > 0:
                size = min(window, self.conn.max_outbound_frame_size, left)
                self.conn.send_data(sid, _ZEROS[:size])
                left -= size
                window -= size
            if prefix or left:
                self.pending[sid] = (prefix, left)
            else:
                self.pending.pop(sid)
        self.writer.write(self.conn.data_to_send())

    async def _pump(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    status = dict(event.headers).get(b"grpc-status")
                    if status is not None:
                        self.answered[event.stream_id] = status.decode()
                elif isinstance(event, h2.events.StreamReset):
                    self.answered.setdefault(event.stream_id, "reset")
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            with contextlib.suppress(Exception):
                self._flush()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Bystander:
    """An authenticated (or trusted) client publishing one message after another."""

    def __init__(self, port: int, metadata: dict[str, str], user_id: str = "") -> None:
        self.channel = Channel("127.0.0.1", port)
        self.stub = pb.NatsServiceStub(self.channel)
        self.metadata = metadata
        self.user_id = user_id
        self.latencies: list[float] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        request = pb.PublishRequest(user_id=self.user_id, subject="bystander", data=b"x")
        while True:
            started = time.perf_counter()
            try:
                await self.stub.publish(request, metadata=self.metadata, timeout=30)
            except (GRPCError, OSError, TimeoutError):
                self.failures += 1
            self.latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.latencies.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> tuple[float, float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.channel.close()
        lat = self.latencies or [0.0]
        return statistics.median(lat) * 1000, max(lat) * 1000


async def attack_c(
    served: Served, *, with_token: bool, hold: float, after: float
) -> dict[str, str]:
    metadata = [("authorization", f"Bearer {VALID_TOKEN}")] if with_token else []
    bystander = Bystander(served.port, {"authorization": f"Bearer {VALID_TOKEN}"})
    warm = Bystander(served.port, {"authorization": f"Bearer {VALID_TOKEN}"})
    warm.start()
    await asyncio.sleep(1.0)
    await warm.stop()
    before = rss_mib(served.pid)
    bystander.start()
    conns = [await RawConnection.open(served.port) for _ in range(2)]
    declared = 10 * MIB
    for conn in conns:
        for _ in range(50):
            conn.start(metadata, declared, declared - 64 * 1024)
    peak = before
    loop = asyncio.get_running_loop()
    end = loop.time() + hold
    while loop.time() < end:
        peak = max(peak, rss_mib(served.pid))
        await asyncio.sleep(0.1)
    at_hold = rss_mib(served.pid)
    p50, worst = await bystander.stop()
    answered = sum(len(c.answered) for c in conns)
    statuses = sorted({s for c in conns for s in c.answered.values()})
    await asyncio.sleep(after)  # the attacker stays connected, idle
    idle = rss_mib(served.pid)
    for conn in conns:
        await conn.close()
    await asyncio.sleep(2.0)
    closed = rss_mib(served.pid)
    return {
        "rss before (MiB)": f"{before:.0f}",
        f"rss peak in {hold:g} s (MiB)": f"{peak:.0f}",
        f"rss at {hold:g} s (MiB)": f"{at_hold:.0f}",
        f"rss {after:g} s later, attacker idle (MiB)": f"{idle:.0f}",
        "rss 2 s after attacker closed (MiB)": f"{closed:.0f}",
        "streams answered / 100": f"{answered} {statuses}",
        "bystander p50 / max (ms)": f"{p50:.1f} / {worst:.1f}",
    }


async def attack_g(served: Served) -> dict[str, str]:
    bystander = Bystander(served.port, {}, user_id="bystander")
    warm = Bystander(served.port, {}, user_id="bystander")
    warm.start()
    await asyncio.sleep(1.0)
    await warm.stop()
    log_before = served.log.stat().st_size
    bystander.start()
    await asyncio.sleep(0.3)
    channel = Channel("127.0.0.1", served.port)
    stub = pb.NatsServiceStub(channel)
    request = pb.PublishRequest(user_id="u" * (10 * MIB - 1024), subject="x", data=b"1")
    started = time.perf_counter()
    status, message = "OK", ""
    try:
        await stub.publish(request, timeout=60)
    except GRPCError as exc:
        status, message = exc.status.name, exc.message or ""
    took = time.perf_counter() - started
    await asyncio.sleep(0.5)
    p50, worst = await bystander.stop()
    channel.close()
    written = served.log.read_bytes()[log_before:]
    longest = max((len(line) for line in written.splitlines()), default=0)
    audit = max((len(x) for x in written.splitlines() if b'"audit"' in x), default=0)
    return {
        "refused call took (s)": f"{took:.2f} ({status})",
        "error text (bytes)": f"{len(message)}",
        "bystander p50 / max (ms)": f"{p50:.1f} / {worst:.1f}",
        "longest log line / audit line (bytes)": f"{longest} / {audit}",
        "log written (bytes)": f"{len(written)}",
    }


async def attack_j(served: Served) -> dict[str, str]:
    channel = Channel("127.0.0.1", served.port)
    stub = pb.NatsServiceStub(channel)
    for token in (VALID_TOKEN, GUESSED_TOKEN):
        with contextlib.suppress(GRPCError):
            await stub.publish(
                pb.PublishRequest(subject="j", data=b"1"),
                metadata={"authorization": f"Bearer {token}"},
            )
    # bad header bytes (binary metadata that is not base64), repeatedly
    conn = await RawConnection.open(served.port)
    for _ in range(20):
        conn.start([("x-bad-bin", "a")], 5, 5)
    await asyncio.sleep(1.0)
    await conn.close()
    channel.close()
    await asyncio.sleep(0.5)
    text = served.log.read_text(errors="replace")
    return {
        "valid token in log (times)": str(text.count(VALID_TOKEN)),
        "guessed token in log (times)": str(text.count(GUESSED_TOKEN)),
        "tracebacks in log": str(text.count("Traceback")),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose natsgw to attack")
    parser.add_argument("--hold", type=float, default=3.5, help="seconds the attack runs")
    args = parser.parse_args()
    repo = args.repo.resolve()
    rows: list[tuple[str, dict[str, str]]] = []
    common = {"NATSGW_REQUEST_READ_TIMEOUT": "3"}
    with tempfile.TemporaryDirectory(prefix="natsgw-attack-") as tmp:
        for name, with_token in (
            ("C anonymous (token mode)", False),
            ("C stalled, valid token", True),
        ):
            work = Path(tmp) / name.split()[1].strip(",")
            work.mkdir()
            async with serving(repo, work, NATSGW_AUTH_MODE="token", **common) as served:
                rows.append(
                    (name, await attack_c(served, with_token=with_token, hold=args.hold, after=4.0))
                )
        work = Path(tmp) / "g"
        work.mkdir()
        async with serving(repo, work, NATSGW_AUTH_MODE="trusted", **common) as served:
            rows.append(("G 10 MiB user_id (trusted mode)", await attack_g(served)))
        work = Path(tmp) / "j"
        work.mkdir()
        async with serving(
            repo, work, NATSGW_AUTH_MODE="token", NATSGW_LOG_LEVEL="debug", **common
        ) as served:
            rows.append(("J debug log (token mode)", await attack_j(served)))
    print(f"natsgw at {repo}")
    for name, figures in rows:
        print(f"\n{name}")
        for key, value in figures.items():
            print(f"  {key:<44} {value}")


if __name__ == "__main__":
    asyncio.run(main())
