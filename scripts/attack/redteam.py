# ruff: noqa: ASYNC240, B007, B023, F841, RUF006, RUF015
# mypy: disable-error-code="misc,unused-ignore"
"""Issue 17 re-test from outside: ``natsgw serve`` as a subprocess, attacked over loopback.

``python -m scripts.attack.redteam ROW [ROW ...]`` runs the named attack variations (see ATTACKS)
and prints one JSON line of figures per attack: gateway RSS before/peak/after, the quiet
bystander's (KVGet + Publish, its own connection) p99/max latency and failed calls, NATS
connection events in the gateway's log, and what the attacker was answered.
Every attack is bounded (stops by itself within ~60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.exceptions
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from natsgw._generated.isa import nats as pb

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
TOKEN = "redteam-valid-" + "v" * 24
TOKEN2 = "redteam-other-" + "w" * 24
GUESS = "redteam-guess-" + "g" * 24
SVC = "/isa.nats.NATSService/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return -1.0
    return 0.0


def tree_rss(pid: int) -> float:
    """RSS of the gateway and its python children (workers), not nats-server."""
    total = rss_mib(pid)
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            comm = Path(f"/proc/{child}/comm").read_text().strip()
            if "nats-server" not in comm:
                total += rss_mib(int(child))
    return total


@dataclass
class Served:
    pid: int
    port: int
    http: int
    log: Path
    data: Path
    proc: asyncio.subprocess.Process

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out[json.loads(line).get("event", "?")] += 1
        return out


def _nofile() -> None:
    """REDTEAM_NOFILE=N: the gateway starts with a hard fd limit of N (row F's accept errors)."""
    import resource

    if n := int(os.environ.get("REDTEAM_NOFILE", "0")):
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


@contextlib.asynccontextmanager
async def serving(work: Path, mode: str = "token", **env: str) -> AsyncIterator[Served]:
    port, http = free_port(), free_port()
    tokens = work / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {"token": TOKEN, "user_id": "attacker", "organizations": ["org-a"]},
                    {"token": TOKEN2, "user_id": "bystander", "organizations": ["org-b"]},
                ]
            }
        )
    )
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NATSGW_", "NATS_", "GRPC_"))},
        "PYTHONPATH": os.environ.get("REDTEAM_REPO", str(ROOT)),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NATSGW_DATA_DIR": str(work / "data"),
        "NATSGW_AUTH_MODE": mode,
        "NATSGW_LOG_FORMAT": "json",
        "NATSGW_HTTP_PORT": str(http),
        "GRPC_PORT": str(port),
        **env,
    }
    if mode == "token":
        run_env["NATSGW_AUTH_TOKENS_FILE"] = str(tokens)
    log = work / "natsgw.log"
    with open(log, "wb") as out:  # noqa: ASYNC230
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "natsgw", "serve", cwd=run_env["PYTHONPATH"], env=run_env,
            stderr=out, stdout=asyncio.subprocess.DEVNULL, preexec_fn=_nofile,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b'"natsgw_started"' not in log.read_bytes():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"natsgw did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        yield Served(proc.pid, port, http, log, work / "data", proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def http_status(port: int, path: str) -> int:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return -1


class Bystander:
    """A quiet tenant on its own connection: KVGet and Publish, one after the other."""

    def __init__(self, served: Served, mode: str) -> None:
        self.served = served
        self.mode = mode
        self.md = {"authorization": f"Bearer {TOKEN2}"} if mode == "token" else {}
        self.uid = "" if mode == "token" else "bystander"
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self.channel = Channel("127.0.0.1", served.port)
        self.stub = pb.NatsServiceStub(self.channel)

    async def setup(self) -> None:
        await self.stub.kv_create_bucket(
            pb.KvCreateBucketRequest(user_id=self.uid, bucket="quiet"), metadata=self.md, timeout=10
        )
        await self.stub.kv_put(
            pb.KvPutRequest(user_id=self.uid, bucket="quiet", key="k", value=b"v" * 100),
            metadata=self.md,
            timeout=10,
        )

    async def _run(self) -> None:
        get = pb.KvGetRequest(user_id=self.uid, bucket="quiet", key="k")
        pub = pb.PublishRequest(user_id=self.uid, subject="quiet", data=b"x")
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: self.stub.kv_get(get, metadata=self.md, timeout=10),
            lambda: self.stub.publish(pub, metadata=self.md, timeout=10),
        ]
        i = 0
        while True:
            started = time.perf_counter()
            try:
                await calls[i % 2]()
            except GRPCError as exc:
                self.failures[exc.status.name] += 1
            except (OSError, TimeoutError, StreamTerminatedError) as exc:
                self.failures[type(exc).__name__] += 1
            self.latencies.append(time.perf_counter() - started)
            i += 1
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.latencies.clear()
        self.failures.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        lat = sorted(self.latencies) or [0.0]
        return {
            "by_calls": len(self.latencies),
            "by_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            "by_max_ms": round(lat[-1] * 1000, 1),
            "by_failed": dict(self.failures),
        }

    def close(self) -> None:
        self.channel.close()


# -- raw HTTP/2 ------------------------------------------------------------------------------------


class Raw:
    """A raw h2 client. ``read`` False: never reads the socket (nor acknowledges anything)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.statuses: dict[int, str] = {}
        self.messages: dict[int, str] = {}
        self.goaway: str = ""
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.received = 0

    @classmethod
    async def open(cls, port: int, *, read: bool = True, window: int = 2**30) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        if window:
            self.conn.increment_flow_control_window(window)
        writer.write(self.conn.data_to_send())
        if read:
            self.task = asyncio.create_task(self._pump())
        return self

    def headers(self, method: str, md: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            (":method", "POST"), (":scheme", "http"), (":path", SVC + method),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
            ("te", "trailers"), *md,
        ]  # fmt: skip

    def call(self, method: str, md: list[tuple[str, str]], body: bytes, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(method, md))
        msg = struct.pack(">?I", False, len(body)) + body
        self.conn.send_data(sid, msg, end_stream=end)
        return sid

    def flush(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write(self.conn.data_to_send())

    async def _pump(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.received += len(data)
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        h = dict(event.headers)
                        if b"grpc-status" in h:
                            self.statuses[event.stream_id] = h[b"grpc-status"].decode()
                            self.messages[event.stream_id] = h.get(b"grpc-message", b"").decode()
                    elif isinstance(event, h2.events.StreamReset):
                        self.statuses.setdefault(event.stream_id, f"reset:{event.error_code}")
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.goaway = f"{event.error_code!r} {event.additional_data!r}"[:120]
                    elif isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.flush()
        except (OSError, ConnectionError):
            pass
        self.closed = True

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.writer.transport.abort()


def enc(msg: Any) -> bytes:
    return bytes(msg)


# -- attacks ---------------------------------------------------------------------------------------


@dataclass
class Ctx:
    served: Served
    mode: str
    by: Bystander
    out: dict[str, Any] = field(default_factory=dict)
    peak: float = 0.0

    def md(self, token: str | None = TOKEN) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"} if self.mode == "token" and token else {}

    def uid(self) -> str:
        return "" if self.mode == "token" else "attacker"

    def stub(self) -> tuple[Channel, pb.NatsServiceStub]:
        ch = Channel("127.0.0.1", self.served.port)
        return ch, pb.NatsServiceStub(ch)


async def _sample(ctx: Ctx, stop: asyncio.Event) -> None:
    while not stop.is_set():
        ctx.peak = max(ctx.peak, tree_rss(ctx.served.pid))
        await asyncio.sleep(0.1)


async def run_attack(
    name: str, attack: Callable[[Ctx], Awaitable[None]], mode: str, env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="natsgw-redteam-") as tmp:
        async with serving(Path(tmp), mode, **env) as served:
            by = Bystander(served, mode)
            await by.setup()
            by.start()
            await asyncio.sleep(1.0)
            await by.stop()  # warm-up
            ctx = Ctx(served, mode, by)
            before_events = served.events()
            rss0 = tree_rss(served.pid)
            ctx.peak = rss0
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(ctx, stop))
            by.start()
            started = time.monotonic()
            try:
                await asyncio.wait_for(attack(ctx), 75)
            except TimeoutError:
                ctx.out["attack"] = "timed out (75 s)"
            took = time.monotonic() - started
            figures = await by.stop()
            rss_end = tree_rss(served.pid)
            await asyncio.sleep(3)
            rss_later = tree_rss(served.pid)
            stop.set()
            await sampler
            ev = served.events() - before_events
            nats_ev = {
                k: v
                for k, v in ev.items()
                if k.startswith("nats_") or "slow" in k or "closed" in k or "accept" in k
            }
            after_ok = True
            try:
                await by.stub.kv_get(
                    pb.KvGetRequest(user_id=by.uid, bucket="quiet", key="k"),
                    metadata=by.md,
                    timeout=10,
                )
            except (GRPCError, OSError, TimeoutError, StreamTerminatedError) as exc:
                after_ok = False
                ctx.out["after_error"] = repr(exc)[:200]
            by.close()
            keep = Path(os.environ.get("REDTEAM_LOGS", "/tmp/redteam-logs"))
            keep.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (keep / f"{name}.log").write_bytes(served.log.read_bytes()[-4 * MIB :])
                (keep / f"{name}.nats.log").write_bytes(
                    (served.data / "nats-server.log").read_bytes()[-4 * MIB :]
                )
            result = {
                "attack": name,
                "mode": mode,
                "secs": round(took, 1),
                "rss0": round(rss0),
                "rss_peak": round(ctx.peak),
                "rss_end": round(rss_end),
                "rss_3s_later": round(rss_later),
                **figures,
                "nats_events": nats_ev,
                "log_lines": sum(ev.values()),
                "log_bytes": served.log.stat().st_size,
                "after_ok": after_ok,
                "healthz": await http_status(served.http, "/healthz"),
                "readyz": await http_status(served.http, "/readyz"),
                "alive": served.proc.returncode is None,
                **ctx.out,
            }
            return result


ATTACKS: dict[str, tuple[Callable[[Ctx], Awaitable[None]], str, dict[str, str]]] = {}


def attack(name: str, mode: str = "token", **env: str) -> Callable[..., Any]:
    def deco(fn: Callable[[Ctx], Awaitable[None]]) -> Callable[[Ctx], Awaitable[None]]:
        ATTACKS[name] = (fn, mode, env)
        return fn

    return deco


def _summary(raws: list[Raw]) -> dict[str, Any]:
    st = Counter(s for r in raws for s in r.statuses.values())
    msgs = Counter(m[:100] for r in raws for m in r.messages.values() if m)
    return {
        "att_statuses": dict(st),
        "att_messages": dict(msgs.most_common(3)),
        "att_goaway": Counter(r.goaway for r in raws if r.goaway).most_common(2),
        "att_closed": sum(r.closed for r in raws),
    }


# ---- C: body never finished ---------------------------------------------------------------------


async def _c_streams(ctx: Ctx, conns: int, streams: int, token: str | None, hold: float) -> None:
    from tests.integration._raw_h2 import RawH2, grpc_prefix

    md = [("authorization", f"Bearer {token}")] if token else []
    raws = [await RawH2.open(ctx.served.port) for _ in range(conns)]
    declared = 10 * MIB
    errors: Counter[str] = Counter()
    for r in raws:
        for _ in range(streams):
            try:
                r.start(SVC + "Publish", md, grpc_prefix(declared), declared - 64 * 1024)
            except h2.exceptions.ProtocolError as exc:
                errors[str(exc)[:60]] += 1
        await r.writer.drain()
    await asyncio.sleep(hold)
    st = Counter(v for r in raws for v in r.statuses.values())
    msgs = Counter(m[:100] for r in raws for m in r.messages.values() if m)
    ctx.out.update(
        {
            "att_statuses": dict(st),
            "att_messages": dict(msgs.most_common(3)),
            "att_errors": dict(errors),
            "att_unanswered": conns * streams - sum(st.values()),
            "att_bytes_pending": sum(b + len(p) for r in raws for p, b in r.pending.values()),
        }
    )
    for r in raws:
        await r.close()


@attack("C-anon")
async def c_anon(ctx: Ctx) -> None:
    await _c_streams(ctx, 2, 50, None, 5)


@attack("C-token-2x50")
async def c_token(ctx: Ctx) -> None:
    await _c_streams(ctx, 2, 50, TOKEN, 14)


@attack("C-token-10x100")
async def c_token_many(ctx: Ctx) -> None:
    await _c_streams(ctx, 10, 100, TOKEN, 14)


@attack("C-trusted-10x100", mode="trusted")
async def c_trusted(ctx: Ctx) -> None:
    await _c_streams(ctx, 10, 100, None, 14)


# ---- B: sizes after added headers ---------------------------------------------------------------


async def _b(
    ctx: Ctx, calls: list[tuple[str, Callable[[pb.NatsServiceStub], Awaitable[Any]]]]
) -> None:
    ch, stub = ctx.stub()
    results: dict[str, str] = {}
    for label, fn in calls:
        try:
            resp = await fn(stub)
            results[label] = "OK " + _brief(resp)
        except GRPCError as exc:
            results[label] = f"{exc.status.name}: {(exc.message or '')[:90]}"
        except (OSError, TimeoutError, StreamTerminatedError) as exc:
            results[label] = type(exc).__name__
    ch.close()
    ctx.out["att_results"] = results


def _brief(resp: Any) -> str:
    out = {}
    for name in getattr(resp, "__dataclass_fields__", {}):
        value = getattr(resp, name)
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        elif isinstance(value, list):
            value = [_brief(x) for x in value[:3]]
        elif hasattr(value, "__dataclass_fields__"):
            value = _brief(value)
        out[name] = value
    return str(out)[:220]


async def _kv_update(s: pb.NatsServiceStub, u: str, md: dict[str, str], v: bytes) -> Any:
    got = await s.kv_get(pb.KvGetRequest(user_id=u, bucket="b", key="k"), metadata=md, timeout=20)
    return await s.kv_update(
        pb.KvUpdateRequest(user_id=u, bucket="b", key="k", value=v, expected_revision=got.revision),
        metadata=md,
        timeout=20,
    )


def _mp(ctx: Ctx) -> int:
    return 1024 * 1024  # nats-server default max_payload; the gateway's limit is 10 MiB default


@attack("B-sizes", NATSGW_MAX_MESSAGE_SIZE=str(8 * MIB))
async def b_sizes(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    ch, stub = ctx.stub()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=u, bucket="b"), metadata=md)
    await stub.create_stream(
        pb.CreateStreamRequest(user_id=u, config=pb.StreamConfig(name="S", subjects=["s.>"])),
        metadata=md,
    )
    await stub.object_put(
        pb.ObjectPutRequest(user_id=u, bucket="ob", object_name="seed", data=b"1"), metadata=md
    )
    ch.close()
    sizes = [8 * MIB - 1024, 8 * MIB - 200, 8 * MIB - 64, 8 * MIB - 10]
    calls: list[tuple[str, Callable[[pb.NatsServiceStub], Awaitable[Any]]]] = []
    for n in sizes:
        v = b"x" * n
        calls += [
            (
                f"KVPut {n}",
                lambda s, v=v: s.kv_put(
                    pb.KvPutRequest(user_id=u, bucket="b", key="k", value=v),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"KVCreate {n}",
                lambda s, v=v, n=n: s.kv_create(
                    pb.KvCreateRequest(user_id=u, bucket="b", key=f"c{n}", value=v),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (f"KVUpdate {n}", lambda s, v=v: _kv_update(s, u, md, v)),
            (
                f"unused {n}",
                lambda s, v=v: s.kv_update(
                    pb.KvUpdateRequest(
                        user_id=u, bucket="b", key="k", value=v, expected_revision=0
                    ),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"PublishToStream {n}+hdrs",
                lambda s, v=v: s.publish_to_stream(
                    pb.PublishToStreamRequest(
                        user_id=u,
                        stream_name="S",
                        subject="s.a",
                        data=v,
                        headers={"h" * 100: "v" * 100},
                    ),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"Batch1 {n}",
                lambda s, v=v: s.publish_to_stream_batch(
                    pb.PublishToStreamBatchRequest(
                        user_id=u,
                        stream_name="S",
                        messages=[pb.StreamMessage(subject="s.b", data=v, msg_id="m" * 200)],
                    ),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"Publish {n}+hdrs",
                lambda s, v=v: s.publish(
                    pb.PublishRequest(
                        user_id=u,
                        subject="p",
                        data=v,
                        headers={"a": "b" * 1000},
                        reply_to="r" * 100,
                    ),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"ObjectPut meta {n}",
                lambda s, v=v: s.object_put(
                    pb.ObjectPutRequest(
                        user_id=u,
                        bucket="ob",
                        object_name="o",
                        data=v[:1000],
                        metadata={"m" * 200: "z" * (n // 4)},
                    ),
                    metadata=md,
                    timeout=20,
                ),
            ),
            (
                f"Request {n}",
                lambda s, v=v: s.request(
                    pb.RequestRequest(user_id=u, subject="nobody", data=v), metadata=md, timeout=20
                ),
            ),
        ]
    # many small headers pushing the NATS header block big
    hdrs = {f"h{i:03d}": "y" * 4000 for i in range(250)}
    calls.append(
        (
            "Publish 250x4KB headers",
            lambda s: s.publish(
                pb.PublishRequest(user_id=u, subject="p", data=b"x" * (7 * MIB), headers=hdrs),
                metadata=md,
                timeout=20,
            ),
        )
    )
    calls.append(
        (
            "PTS 250x4KB headers",
            lambda s: s.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=u, stream_name="S", subject="s.c", data=b"x" * (7 * MIB), headers=hdrs
                ),
                metadata=md,
                timeout=20,
            ),
        )
    )
    await _b(ctx, calls)


# ---- D: big concurrent reads --------------------------------------------------------------------


@attack("D-kvhistory-watch", NATSGW_MAX_MESSAGE_SIZE=str(8 * MIB))
async def d_history(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    ch, stub = ctx.stub()
    await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(user_id=u, bucket="h", history=64), metadata=md
    )
    v = b"h" * (7 * MIB)
    for i in range(5):
        await stub.kv_put(
            pb.KvPutRequest(user_id=u, bucket="h", key="k", value=v), metadata=md, timeout=30
        )
    for i in range(3):
        await stub.kv_put(
            pb.KvPutRequest(user_id=u, bucket="h", key=f"w{i}", value=v), metadata=md, timeout=30
        )
    res: Counter[str] = Counter()
    await asyncio.sleep(1)
    ctx.out["events_after_setup"] = {
        k: v for k, v in ctx.served.events().items() if k.startswith("nats_")
    }
    ctx.out["by_failed_after_setup"] = dict(ctx.by.failures)
    t_start = time.monotonic()

    async def hist() -> None:
        try:
            await stub.kv_history(
                pb.KvHistoryRequest(user_id=u, bucket="h", key="k"), metadata=md, timeout=40
            )
            res["hist OK"] += 1
        except GRPCError as exc:
            res[f"hist {exc.status.name} {(exc.message or '')[:60]}"] += 1
        except (OSError, TimeoutError, StreamTerminatedError) as exc:
            res[f"hist {type(exc).__name__}"] += 1

    async def watch() -> None:
        got = 0
        try:
            gen = stub.kv_watch(
                pb.KvWatchRequest(user_id=u, bucket="h", key=">"), metadata=md, timeout=30
            )
            async for _ in gen:
                got += 1
                if got >= 8:
                    break
            await gen.aclose()  # type: ignore[attr-defined]
            res["watch got8"] += 1
        except GRPCError as exc:
            res[f"watch {exc.status.name} {(exc.message or '')[:60]}"] += 1
        except (OSError, TimeoutError, StreamTerminatedError, AttributeError) as exc:
            res[f"watch {type(exc).__name__} {str(exc)[:60]} got={got}"] += 1

    chans = [Channel("127.0.0.1", ctx.served.port) for _ in range(4)]
    stubs = [pb.NatsServiceStub(c) for c in chans]
    jobs = []
    kinds = os.environ.get("D_KINDS", "hist,watch").split(",")
    count = int(os.environ.get("D_COUNT", "24"))
    for i in range(count):
        kind = kinds[i % len(kinds)]
        jobs.append(hist() if kind == "hist" else watch())
    await asyncio.gather(*jobs)
    ctx.out["reads_took_s"] = round(time.monotonic() - t_start, 1)
    for c in chans:
        c.close()
    ch.close()
    ctx.out["att_results"] = dict(res)


@attack("D-objectget-40x8", NATSGW_MAX_MESSAGE_SIZE=str(9 * MIB))
async def d_objget(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    ch, stub = ctx.stub()
    await stub.object_put(
        pb.ObjectPutRequest(user_id=u, bucket="o", object_name="big", data=b"o" * (8 * MIB)),
        metadata=md,
        timeout=30,
    )
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(user_id=u, bucket="g"), metadata=md)
    await stub.kv_put(
        pb.KvPutRequest(user_id=u, bucket="g", key="k", value=b"g" * (8 * MIB)),
        metadata=md,
        timeout=30,
    )
    res: Counter[str] = Counter()

    async def one(s: pb.NatsServiceStub, i: int) -> None:
        try:
            if i % 2:
                await s.object_get(
                    pb.ObjectGetRequest(user_id=u, bucket="o", object_name="big"),
                    metadata=md,
                    timeout=50,
                )
            else:
                await s.kv_get(
                    pb.KvGetRequest(user_id=u, bucket="g", key="k"), metadata=md, timeout=50
                )
            res["OK"] += 1
        except GRPCError as exc:
            res[f"{exc.status.name} {(exc.message or '')[:60]}"] += 1
        except (OSError, TimeoutError, StreamTerminatedError) as exc:
            res[type(exc).__name__] += 1

    chans = [Channel("127.0.0.1", ctx.served.port) for _ in range(4)]
    stubs = [pb.NatsServiceStub(c) for c in chans]
    await asyncio.gather(*(one(stubs[i % 4], i) for i in range(40)))
    for c in chans:
        c.close()
    ch.close()
    ctx.out["att_results"] = dict(res)


# ---- G: oversized ids and names ---------------------------------------------------------------


@attack("G-trusted", mode="trusted")
async def g_trusted(ctx: Ctx) -> None:
    ch, stub = ctx.stub()
    res: dict[str, str] = {}
    big = "u" * (1 * MIB)
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            "org 1MiB",
            lambda: stub.publish(
                pb.PublishRequest(user_id="a", organization_id="o" * MIB, subject="x", data=b"1"),
                timeout=20,
            ),
        ),
        (
            "user 1MiB",
            lambda: stub.publish(
                pb.PublishRequest(user_id=big, subject="x", data=b"1"), timeout=20
            ),
        ),
        (
            "user 300 unicode",
            lambda: stub.publish(
                pb.PublishRequest(user_id="\u00e9" * 200, subject="x", data=b"1"), timeout=20
            ),
        ),
        (
            "subject 60KB",
            lambda: stub.publish(
                pb.PublishRequest(user_id="a", subject="s" * 60000 + " bad", data=b"1"), timeout=20
            ),
        ),
        (
            "bucket 60KB",
            lambda: stub.kv_get(
                pb.KvGetRequest(user_id="a", bucket="b" * 60000 + "!", key="k"), timeout=20
            ),
        ),
        (
            "key 60KB",
            lambda: stub.kv_get(
                pb.KvGetRequest(user_id="a", bucket="quiet", key="k" * 60000 + "*"), timeout=20
            ),
        ),
        (
            "stream 60KB",
            lambda: stub.get_stream_info(
                pb.GetStreamInfoRequest(user_id="a", stream_name="S" * 60000 + "."), timeout=20
            ),
        ),
        (
            "object 60KB",
            lambda: stub.object_get(
                pb.ObjectGetRequest(user_id="a", bucket="ob", object_name="n" * 60000), timeout=20
            ),
        ),
        (
            "hdr key 60KB",
            lambda: stub.publish(
                pb.PublishRequest(
                    user_id="a", subject="x", data=b"1", headers={"k" * 60000 + ":": "v"}
                ),
                timeout=20,
            ),
        ),
        (
            "org in other org",
            lambda: stub.publish(
                pb.PublishRequest(user_id="a", organization_id="x" * 300, subject="x", data=b"1"),
                timeout=20,
            ),
        ),
    ]
    for label, fn in cases:
        t0 = time.perf_counter()
        try:
            await fn()
            res[label] = f"OK {time.perf_counter() - t0:.2f}s"
        except GRPCError as exc:
            m = exc.message or ""
            res[label] = f"{exc.status.name} len={len(m)} {time.perf_counter() - t0:.2f}s: {m[:80]}"
        except (OSError, TimeoutError, StreamTerminatedError) as exc:
            res[label] = type(exc).__name__
    ch.close()
    await asyncio.sleep(1)
    lines = ctx.served.log_text().splitlines()
    ctx.out["att_results"] = res
    ctx.out["longest_log_line"] = max(len(x) for x in lines)
    ctx.out["longest_audit_line"] = max((len(x) for x in lines if '"audit"' in x), default=0)
    ctx.out["log_has_60k_run"] = any(
        "s" * 1000 in x or "b" * 1000 in x or "k" * 1000 in x for x in lines
    )


@attack("G-token")
async def g_token(ctx: Ctx) -> None:
    ch, stub = ctx.stub()
    md = ctx.md()
    res: dict[str, str] = {}
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            "org 1MiB",
            lambda: stub.publish(
                pb.PublishRequest(organization_id="o" * MIB, subject="x", data=b"1"),
                metadata=md,
                timeout=20,
            ),
        ),
        (
            "user 1MiB",
            lambda: stub.publish(
                pb.PublishRequest(user_id="u" * MIB, subject="x", data=b"1"),
                metadata=md,
                timeout=20,
            ),
        ),
        (
            "subject 60KB",
            lambda: stub.publish(
                pb.PublishRequest(subject="s" * 60000 + " bad", data=b"1"), metadata=md, timeout=20
            ),
        ),
        (
            "bucket 60KB",
            lambda: stub.kv_get(
                pb.KvGetRequest(bucket="b" * 60000 + "!", key="k"), metadata=md, timeout=20
            ),
        ),
        (
            "bad token 8KB",
            lambda: stub.publish(
                pb.PublishRequest(subject="x", data=b"1"),
                metadata={"authorization": "Bearer " + "t" * 8000},
                timeout=20,
            ),
        ),
    ]
    for label, fn in cases:
        t0 = time.perf_counter()
        try:
            await fn()
            res[label] = f"OK {time.perf_counter() - t0:.2f}s"
        except GRPCError as exc:
            m = exc.message or ""
            res[label] = f"{exc.status.name} len={len(m)} {time.perf_counter() - t0:.2f}s: {m[:80]}"
        except (OSError, TimeoutError, StreamTerminatedError) as exc:
            res[label] = type(exc).__name__
    ch.close()
    await asyncio.sleep(1)
    lines = ctx.served.log_text().splitlines()
    ctx.out["att_results"] = res
    ctx.out["longest_log_line"] = max(len(x) for x in lines)


# ---- J: secrets in the debug log ----------------------------------------------------------------


@attack("J-debug", NATSGW_LOG_LEVEL="debug")
async def j_debug(ctx: Ctx) -> None:
    ch, stub = ctx.stub()
    for tok in (TOKEN, GUESS, TOKEN + "x"):
        for md in ({"authorization": f"Bearer {tok}"}, {"authorization": tok}, {"x-api-key": tok},
                   {"authorization": f"bearer {tok}"}, {"token": tok}):  # fmt: skip
            with contextlib.suppress(GRPCError, OSError, StreamTerminatedError):
                await stub.publish(
                    pb.PublishRequest(subject="j", data=b"1"), metadata=md, timeout=5
                )
    # bad bytes in headers, 200 times
    r = await Raw.open(ctx.served.port)
    for _ in range(200):
        sid = r.conn.get_next_available_stream_id()
        r.conn.send_headers(
            sid,
            r.headers("Publish", [("x-bad-bin", "!!!"), ("authorization", f"Bearer {GUESS}")]),
            end_stream=True,
        )
    r.flush()
    # cancelled KVWatch, 50 times
    md = ctx.md()
    await stub.kv_create_bucket(pb.KvCreateBucketRequest(bucket="w"), metadata=md)
    for _ in range(50):
        gen = stub.kv_watch(pb.KvWatchRequest(bucket="w", key=">"), metadata=md, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gen.__anext__(), 0.05)  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await gen.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(2)
    await r.close()
    ch.close()
    # the embedded server's token
    creds = ctx.served.data / "nats-credentials.json"
    secret = ""
    with contextlib.suppress(Exception):
        secret = json.loads(creds.read_text()).get("token", "")
    text = ctx.served.log_text()
    nats_log = ""
    for p in ctx.served.data.rglob("*.log"):
        nats_log += p.read_text(errors="replace")
    ctx.out.update(
        {
            "valid_token_in_log": text.count(TOKEN),
            "valid_token_prefix20_in_log": text.count(TOKEN[:20]),
            "guess_in_log": text.count(GUESS),
            "guess_prefix12_in_log": text.count(GUESS[:12]),
            "embedded_secret_in_log": text.count(secret) if secret else "no secret read",
            "embedded_secret_in_nats_log": nats_log.count(secret) if secret else "-",
            "tracebacks": text.count("Traceback"),
            "never_retrieved": text.count("never retrieved"),
            "log_lines": len(text.splitlines()),
            "cmdline_token": _cmdline_has(ctx.served.pid, secret),
        }
    )


def _cmdline_has(pid: int, secret: str) -> bool:
    if not secret:
        return False
    found = False
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if secret.encode() in (proc / "cmdline").read_bytes():
                    found = True
    return found


# ---- I: the embedded nats-server ---------------------------------------------------------------


@attack("I-embedded")
async def i_embedded(ctx: Ctx) -> None:
    import stat

    import nats

    data = ctx.served.data
    modes = {}
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.stat().st_size < 10 * MIB and "jetstream" not in str(p):
            modes[str(p.relative_to(data))] = oct(stat.S_IMODE(p.stat().st_mode))
    modes["<dir>"] = oct(stat.S_IMODE(data.stat().st_mode))
    ctx.out["file_modes"] = modes
    # find nats-server's ports from /proc/net/tcp listening sockets of the nats-server child
    ports = _listen_ports_of_children(ctx.served.pid)
    ctx.out["nats_server_listen_ports"] = ports
    results = {}
    for port in ports:
        for label, kw in (("anon", {}), ("wrong token", {"token": "nope"}),
                          ("user/pass", {"user": "natsgw", "password": "natsgw"})):  # fmt: skip
            try:
                nc = await asyncio.wait_for(
                    nats.connect(
                        f"nats://127.0.0.1:{port}",
                        connect_timeout=2,
                        max_reconnect_attempts=0,
                        allow_reconnect=False,
                        **kw,
                    ),
                    5,
                )
                results[f"{port} {label}"] = "CONNECTED"
                await nc.close()
            except Exception as exc:
                results[f"{port} {label}"] = f"{type(exc).__name__} {str(exc)[:60]}"
        # HTTP monitor?
        results[f"{port} http /varz"] = str(await http_status(port, "/varz"))
    ctx.out["att_results"] = results
    # the supervisor /status page / side port: anything leaking a token?
    async with aiohttp.ClientSession() as session:
        bodies = ""
        for path in ("/status", "/status.json", "/metrics", "/readyz", "/healthz", "/varz"):
            with contextlib.suppress(Exception):
                async with session.get(f"http://127.0.0.1:{ctx.served.http}{path}") as resp:
                    bodies += await resp.text()
    creds = data / "nats-credentials.json"
    with contextlib.suppress(Exception):
        secret = json.loads(creds.read_text()).get("token", "")
        ctx.out["secret_on_side_port"] = bool(secret) and secret in bodies


def _listen_ports_of_children(pid: int) -> list[int]:
    inodes: set[str] = set()
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids[1:]:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    ports.append(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


# ---- K: workers crash ---------------------------------------------------------------------------


@attack("K-workers", NATSGW_WORKERS="2")
async def k_workers(ctx: Ctx) -> None:
    kills = 0
    protected: int | None = None
    worker_pids_seen: set[int] = set()
    t_end = time.monotonic() + 40
    while time.monotonic() < t_end:
        kids = []
        with contextlib.suppress(FileNotFoundError):
            for c in (
                Path(f"/proc/{ctx.served.pid}/task/{ctx.served.pid}/children").read_text().split()
            ):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{c}/cmdline").read_bytes()
                    if b"nats-server" not in cmd:
                        kids.append(int(c))
        worker_pids_seen.update(kids)
        if protected is None and len(kids) == 2:
            protected = max(kids)
        if protected is not None and protected not in kids:
            ctx.out["protected_worker_died"] = True
        victims = [k for k in kids if k != protected]
        if protected is not None and victims:
            victim = victims[0]
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                kills += 1
        if ctx.served.proc.returncode is not None:
            break
        await asyncio.sleep(1.5)
    ctx.out["kills"] = kills
    ctx.out["worker_pids_seen"] = len(worker_pids_seen)
    ev = ctx.served.events()
    ctx.out["worker_events"] = {k: v for k, v in ev.items() if "worker" in k}


# ---- A/E/F/H: the HTTP/2 edge -----------------------------------------------------------------


@attack("A-rapid-reset-anon")
async def a_reset(ctx: Ctx) -> None:
    await _rapid_reset(ctx, None, 100_000)


@attack("A-rapid-reset-token")
async def a_reset_tok(ctx: Ctx) -> None:
    await _rapid_reset(ctx, TOKEN, 100_000)


@attack("A-rapid-reset-trusted", mode="trusted")
async def a_reset_trusted(ctx: Ctx) -> None:
    await _rapid_reset(ctx, None, 100_000)


async def _rapid_reset(ctx: Ctx, token: str | None, total: int) -> None:
    md = [("authorization", f"Bearer {token}")] if token else []
    sent = 0
    conns = 0
    end = time.monotonic() + 45
    raws: list[Raw] = []
    body = enc(pb.PublishRequest(user_id=ctx.uid(), subject="r", data=b"1"))
    while sent < total and time.monotonic() < end:
        try:
            r = await Raw.open(ctx.served.port)
        except OSError as exc:
            ctx.out["att_connect_error"] = str(exc)[:80]
            await asyncio.sleep(0.2)
            continue
        conns += 1
        raws.append(r)
        try:
            for _ in range(10_000):
                if r.closed:
                    break
                sid = r.conn.get_next_available_stream_id()
                r.conn.send_headers(sid, r.headers("Publish", md))
                r.conn.send_data(sid, struct.pack(">?I", False, len(body)) + body)
                r.conn.reset_stream(sid)
                sent += 1
                if sent % 100 == 0:
                    r.flush()
                    await r.writer.drain()
        except (h2.exceptions.ProtocolError, OSError, ConnectionError) as exc:
            ctx.out["att_error"] = f"{type(exc).__name__} {str(exc)[:60]}"
        r.flush()
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    ctx.out["resets_sent"] = sent
    ctx.out["att_conns"] = conns
    ctx.out.update(_summary(raws))
    for r in raws:
        await r.close()


@attack("E-unread-objectget", NATSGW_MAX_MESSAGE_SIZE=str(9 * MIB))
async def e_unread(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    ch, stub = ctx.stub()
    await stub.object_put(
        pb.ObjectPutRequest(user_id=u, bucket="o", object_name="big", data=b"o" * (8 * MIB)),
        metadata=md,
        timeout=30,
    )
    ch.close()
    raws = []
    for _ in range(3):
        r = await Raw.open(ctx.served.port, read=False)
        for _ in range(20):
            r.call(
                "ObjectGet",
                list(md.items()),
                enc(pb.ObjectGetRequest(user_id=u, bucket="o", object_name="big")),
            )
        r.flush()
        raws.append(r)
    await asyncio.sleep(20)
    ctx.out["rss_while_unread"] = round(tree_rss(ctx.served.pid))
    for r in raws:
        await r.close()
    await asyncio.sleep(8)
    ctx.out["rss_8s_after_close"] = round(tree_rss(ctx.served.pid))


@attack("F-idle-1100")
async def f_idle(ctx: Ctx) -> None:
    socks: list[socket.socket] = []
    errors: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    for i in range(1100):
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", ctx.served.port)), 2)
            socks.append(s)
        except (OSError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            s.close()
    ctx.out["idle_opened"] = len(socks)
    await asyncio.sleep(2)
    ctx.out["readyz_during"] = await http_status(ctx.served.http, "/readyz")
    # a new legitimate client while they are held
    ch = Channel("127.0.0.1", ctx.served.port)
    stub = pb.NatsServiceStub(ch)
    t0 = time.perf_counter()
    try:
        await stub.kv_get(
            pb.KvGetRequest(user_id=ctx.by.uid, bucket="quiet", key="k"),
            metadata=ctx.by.md,
            timeout=10,
        )
        ctx.out["new_client_during"] = f"OK {time.perf_counter() - t0:.2f}s"
    except (GRPCError, OSError, TimeoutError, StreamTerminatedError) as exc:
        ctx.out["new_client_during"] = f"{type(exc).__name__} {str(exc)[:80]}"
    ch.close()
    # how many of the idle sockets did the gateway close (idle timeout) within 40 s?
    end = time.monotonic() + 40
    closed = 0
    while time.monotonic() < end:
        closed = 0
        for s in socks:
            try:
                data = s.recv(65536)
                if data == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        if closed == len(socks):
            break
        await asyncio.sleep(1)
    ctx.out["idle_closed_by_gateway"] = closed
    ctx.out["idle_wait_s"] = round(40 - (end - time.monotonic()), 1)
    ctx.out["connect_errors"] = dict(errors)
    for s in socks:
        s.close()
    fds = len(list(Path(f"/proc/{ctx.served.pid}/fd").iterdir()))
    ctx.out["gateway_fds_after"] = fds
    limits = Path(f"/proc/{ctx.served.pid}/limits").read_text()
    ctx.out["nofile"] = [x for x in limits.splitlines() if "open files" in x][0].split()[3:5]


@attack("F-per-peer-1100-h2")
async def f_h2_conns(ctx: Ctx) -> None:
    raws: list[Raw] = []
    errs: Counter[str] = Counter()
    for _ in range(1100):
        try:
            raws.append(await asyncio.wait_for(Raw.open(ctx.served.port), 2))
        except (OSError, TimeoutError) as exc:
            errs[type(exc).__name__] += 1
    await asyncio.sleep(3)
    ctx.out["opened"] = len(raws)
    ctx.out["refused_closed"] = sum(r.closed for r in raws)
    ctx.out["goaways"] = Counter(r.goaway for r in raws if r.goaway).most_common(3)
    ctx.out["errs"] = dict(errs)
    for r in raws:
        await r.close()


async def _flood(ctx: Ctx, kind: str) -> None:
    r = await Raw.open(ctx.served.port, read=False)
    end = time.monotonic() + 20
    n = 0
    err = ""
    while time.monotonic() < end:
        try:
            for _ in range(500):
                if kind == "ping":
                    r.conn.ping(n.to_bytes(8, "big"))
                else:
                    r.conn.update_settings(
                        {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + n % 7}
                    )
                n += 1
            r.writer.write(r.conn.data_to_send())
            await asyncio.wait_for(r.writer.drain(), 2)
        except (OSError, ConnectionError, TimeoutError, h2.exceptions.ProtocolError) as exc:
            err = f"{type(exc).__name__} {str(exc)[:60]}"
            break
        await asyncio.sleep(0)
    ctx.out["frames_sent"] = n
    ctx.out["stopped_by"] = err
    # did the gateway send GOAWAY / close? read what is buffered now
    with contextlib.suppress(Exception):
        data = await asyncio.wait_for(r.reader.read(1 << 20), 2)
        ctx.out["first_read_bytes"] = len(data)
        evs = r.conn.receive_data(data)
        ctx.out["goaway"] = [
            f"{e.error_code!r}" for e in evs if isinstance(e, h2.events.ConnectionTerminated)
        ]
    await r.close()


@attack("H-ping-flood")
async def h_ping(ctx: Ctx) -> None:
    await _flood(ctx, "ping")


@attack("H-settings-flood")
async def h_settings(ctx: Ctx) -> None:
    await _flood(ctx, "settings")


async def main() -> None:
    import h2.settings  # noqa: F401

    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="+", choices=[*ATTACKS, "all"])
    args = parser.parse_args()
    names = list(ATTACKS) if "all" in args.rows else args.rows
    for name in names:
        fn, mode, env = ATTACKS[name]
        try:
            result = await run_attack(name, fn, mode, env)
        except Exception as exc:
            result = {"attack": name, "harness_error": repr(exc)[:500]}
        print(json.dumps(result, default=str), flush=True)


@attack("B-objmeta", NATSGW_MAX_MESSAGE_SIZE=str(8 * MIB))
async def b_objmeta(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    calls: list[tuple[str, Callable[[pb.NatsServiceStub], Awaitable[Any]]]] = []
    for total in (8 * MIB - 4096, 8 * MIB - 200, 8 * MIB + 4096):
        meta = {"m": "z" * (total - 1000)}
        calls.append(
            (
                f"ObjectPut meta {total}",
                lambda s, meta=meta: s.object_put(
                    pb.ObjectPutRequest(
                        user_id=u, bucket="ob", object_name="o", data=b"d" * 100, metadata=meta
                    ),
                    metadata=md,
                    timeout=20,
                ),
            )
        )
        many = {f"k{i:05d}": "q" * 1000 for i in range(total // 1010)}
        calls.append(
            (
                f"ObjectPut many meta {total}",
                lambda s, meta=many: s.object_put(
                    pb.ObjectPutRequest(
                        user_id=u, bucket="ob", object_name="o2", data=b"d" * 100, metadata=meta
                    ),
                    metadata=md,
                    timeout=20,
                ),
            )
        )
        calls.append(
            (
                f"ObjectPut name+meta escapes {total}",
                lambda s, total=total: s.object_put(
                    pb.ObjectPutRequest(
                        user_id=u,
                        bucket="ob",
                        object_name="o3",
                        data=b"d",
                        metadata={"m": "\x01" * (total // 6)},
                    ),
                    metadata=md,
                    timeout=20,
                ),
            )
        )
    await _b(ctx, calls)


@attack("D-subscribe-fanout", NATSGW_MAX_MESSAGE_SIZE=str(8 * MIB))
async def d_fanout(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    raws = []
    for i in range(4):
        r = await Raw.open(ctx.served.port, read=False)
        for j in range(5):
            r.call(
                "Subscribe",
                list(md.items()),
                enc(pb.SubscribeRequest(user_id=u, subject=f"fan.{j % 2}")),
            )
        r.flush()
        raws.append(r)
    readers = []
    for i in range(2):
        ch, stub = ctx.stub()
        readers.append(ch)

        async def read(stub: pb.NatsServiceStub = stub, i: int = i) -> None:
            with contextlib.suppress(Exception):
                async for _ in stub.subscribe(
                    pb.SubscribeRequest(user_id=u, subject=f"fan.{i}"), metadata=md, timeout=40
                ):
                    await asyncio.sleep(0.5)  # slow reader

        asyncio.create_task(read())
    await asyncio.sleep(1)
    res: Counter[str] = Counter()
    data = b"f" * (8 * MIB - 4096)
    end = time.monotonic() + 25

    async def pub(k: int) -> None:
        ch, stub = ctx.stub()
        while time.monotonic() < end:
            try:
                await stub.publish(
                    pb.PublishRequest(user_id=u, subject=f"fan.{k % 2}", data=data),
                    metadata=md,
                    timeout=10,
                )
                res["OK"] += 1
            except GRPCError as exc:
                res[f"{exc.status.name} {(exc.message or '')[:60]}"] += 1
            except (OSError, TimeoutError, StreamTerminatedError) as exc:
                res[type(exc).__name__] += 1
        ch.close()

    by_md, by_uid = ctx.by.md, ctx.by.uid
    got: list[int] = []
    sent = 0
    bch = Channel("127.0.0.1", ctx.served.port)
    bstub = pb.NatsServiceStub(bch)

    async def by_sub() -> None:
        with contextlib.suppress(Exception):
            async for m in bstub.subscribe(
                pb.SubscribeRequest(user_id=by_uid, subject="mine"), metadata=by_md, timeout=40
            ):
                got.append(int(m.data))

    async def by_pub() -> None:
        nonlocal sent
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                await bstub.publish(
                    pb.PublishRequest(user_id=by_uid, subject="mine", data=str(sent).encode()),
                    metadata=by_md,
                    timeout=10,
                )
                sent += 1
            await asyncio.sleep(0.02)

    sub_task = asyncio.create_task(by_sub())
    await asyncio.sleep(0.5)
    await asyncio.gather(by_pub(), *(pub(k) for k in range(4)))
    await asyncio.sleep(2)
    sub_task.cancel()
    bch.close()
    ctx.out["bystander_sub_sent"] = sent
    ctx.out["bystander_sub_received"] = len(got)
    ctx.out["bystander_sub_lost"] = sent - len(set(got))
    ctx.out["att_results"] = dict(res)
    for r in raws:
        await r.close()
    for ch in readers:
        ch.close()


@attack("A-under-budget")
async def a_under_budget(ctx: Ctx) -> None:
    """Resets paced just under a per-connection budget, on many connections at once."""
    md = [("authorization", f"Bearer {TOKEN}")]
    rate = int(os.environ.get("A_RATE", "150"))
    nconn = int(os.environ.get("A_CONNS", "40"))
    body = enc(pb.PublishRequest(subject="r", data=b"1"))
    sent = 0
    end = time.monotonic() + 30
    raws: list[Raw] = []

    async def one() -> None:
        nonlocal sent
        r = await Raw.open(ctx.served.port)
        raws.append(r)
        while time.monotonic() < end and not r.closed:
            t0 = time.monotonic()
            try:
                for _ in range(rate // 10):
                    sid = r.conn.get_next_available_stream_id()
                    r.conn.send_headers(sid, r.headers("Publish", md))
                    r.conn.send_data(
                        sid, struct.pack(">?I", False, len(body)) + body, end_stream=True
                    )
                    r.conn.reset_stream(sid)
                    sent += 1
                r.flush()
            except (h2.exceptions.ProtocolError, OSError) as exc:
                ctx.out["att_error"] = str(exc)[:80]
                return
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))

    await asyncio.gather(*(one() for _ in range(nconn)))
    ctx.out["resets_sent"] = sent
    ctx.out.update(_summary(raws))
    for r in raws:
        await r.close()


@attack("F-keepalive-tricks")
async def f_keepalive(ctx: Ctx) -> None:
    """Connections that try to stay open without a real call: PINGs only, WINDOW_UPDATEs only,
    a HEADERS-only stream (body never sent), a stream opened on an unknown method."""
    kinds = ["ping", "window", "headers-only", "unknown-method", "anon-request"]
    raws: dict[str, list[Raw]] = {k: [] for k in kinds}
    for kind in kinds:
        for _ in range(5):
            raws[kind].append(await Raw.open(ctx.served.port))
    md = [("authorization", f"Bearer {TOKEN}")]
    for r in raws["headers-only"]:
        sid = r.conn.get_next_available_stream_id()
        r.conn.send_headers(sid, r.headers("Publish", md))
        r.flush()
    for r in raws["unknown-method"]:
        sid = r.conn.get_next_available_stream_id()
        r.conn.send_headers(sid, r.headers("NoSuchMethod", md), end_stream=True)
        r.flush()
    for r in raws["anon-request"]:
        r.call("Publish", [], enc(pb.PublishRequest(subject="x", data=b"1")))
        r.flush()
    closed_at: dict[str, float] = {}
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 40:
        n += 1
        for r in raws["ping"]:
            with contextlib.suppress(Exception):
                r.conn.ping(n.to_bytes(8, "big"))
                r.flush()
        for r in raws["window"]:
            with contextlib.suppress(Exception):
                r.conn.increment_flow_control_window(1)
                r.flush()
        for kind in kinds:
            if kind not in closed_at and all(r.closed for r in raws[kind]):
                closed_at[kind] = round(time.monotonic() - t0, 1)
        if len(closed_at) == len(kinds):
            break
        await asyncio.sleep(1)
    ctx.out["all_closed_after_s"] = closed_at
    ctx.out["still_open"] = {k: sum(not r.closed for r in v) for k, v in raws.items()}
    ctx.out["goaways"] = {k: [r.goaway[:60] for r in v][:1] for k, v in raws.items()}
    ctx.out["stream_statuses"] = {
        k: dict(Counter(st for r in v for st in r.statuses.values())) for k, v in raws.items()
    }
    for v in raws.values():
        for r in v:
            await r.close()


@attack("B-publishbatch", NATSGW_MAX_MESSAGE_SIZE=str(4 * MIB))
async def b_publishbatch(ctx: Ctx) -> None:
    u, md = ctx.uid(), ctx.md()
    calls: list[tuple[str, Callable[[pb.NatsServiceStub], Awaitable[Any]]]] = []
    for n in (4 * MIB - 300, 4 * MIB - 30, 4 * MIB):
        msgs = [
            pb.NatsMessage(
                subject="pb.x", data=b"p" * n, headers={"k": "v" * 200}, reply_to="r" * 50
            )
        ]
        calls.append(
            (
                f"PublishBatch 1x{n}+hdrs",
                lambda s, msgs=msgs: s.publish_batch(
                    pb.PublishBatchRequest(user_id=u, messages=msgs), metadata=md, timeout=20
                ),
            )
        )
        calls.append(
            (
                f"Publish {n} reply_to",
                lambda s, n=n: s.publish(
                    pb.PublishRequest(user_id=u, subject="pb.y", data=b"p" * n, reply_to="r" * 200),
                    metadata=md,
                    timeout=20,
                ),
            )
        )
    await _b(ctx, calls)


@attack("E-many-conns", NATSGW_MAX_MESSAGE_SIZE=str(9 * MIB))
async def e_many(ctx: Ctx) -> None:
    """Many connections, each within its outbound budget, none ever reading."""
    u, md = ctx.uid(), ctx.md()
    nconn = int(os.environ.get("E_CONNS", "40"))
    per = int(os.environ.get("E_PER", "2"))
    ch, stub = ctx.stub()
    await stub.object_put(
        pb.ObjectPutRequest(user_id=u, bucket="o", object_name="big", data=b"o" * (8 * MIB)),
        metadata=md,
        timeout=30,
    )
    ch.close()
    raws = []
    for _ in range(nconn):
        r = await Raw.open(ctx.served.port, read=False)
        for _ in range(per):
            r.call(
                "ObjectGet",
                list(md.items()),
                enc(pb.ObjectGetRequest(user_id=u, bucket="o", object_name="big")),
            )
        r.flush()
        raws.append(r)
    samples = []
    for _ in range(20):
        await asyncio.sleep(1)
        samples.append(round(tree_rss(ctx.served.pid)))
    ctx.out["rss_each_s"] = samples
    for r in raws:
        await r.close()
    await asyncio.sleep(5)
    ctx.out["rss_5s_after_close"] = round(tree_rss(ctx.served.pid))


@attack("F-other-address")
async def f_other(ctx: Ctx) -> None:
    """Idle connections from 127.0.0.2..; a new client from 127.0.0.1 meanwhile."""
    socks: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    naddr = int(os.environ.get("F_ADDRS", "1"))
    for i in range(int(os.environ.get("F_COUNT", "1100"))):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % naddr}", 0))
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", ctx.served.port)), 2)
            socks.append(s)
        except (OSError, TimeoutError):
            s.close()
    await asyncio.sleep(1)
    ch = Channel("127.0.0.1", ctx.served.port)
    stub = pb.NatsServiceStub(ch)
    t0 = time.perf_counter()
    try:
        await stub.kv_get(pb.KvGetRequest(bucket="quiet", key="k"), metadata=ctx.by.md, timeout=10)
        ctx.out["new_client_during"] = f"OK {time.perf_counter() - t0:.2f}s"
    except (GRPCError, OSError, TimeoutError, StreamTerminatedError) as exc:
        ctx.out["new_client_during"] = f"{type(exc).__name__} {str(exc)[:80]}"
    ch.close()
    ctx.out["opened"] = len(socks)
    for s in socks:
        s.close()


@attack("F-anon-hold-cap")
async def f_anon_hold(ctx: Ctx) -> None:
    """Anonymous connections from many loopback addresses, each sending one refused request,
    then idle: do they fill the total cap and lock everyone out?"""
    naddr = int(os.environ.get("F_ADDRS", "17"))
    per = int(os.environ.get("F_PER", "250"))
    raws: list[Raw] = []
    body = enc(pb.PublishRequest(subject="x", data=b"1"))
    t0 = time.monotonic()
    for a in range(naddr):
        for _ in range(per):
            if time.monotonic() - t0 > 40:
                break
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", ctx.served.port, local_addr=(f"127.0.0.{2 + a}", 0)
                    ),
                    2,
                )
            except (OSError, TimeoutError):
                continue
            r = Raw(reader, writer)
            r.conn.initiate_connection()
            r.task = asyncio.create_task(r._pump())
            r.call("Publish", [], body)
            r.flush()
            raws.append(r)
    ctx.out["open_secs"] = round(time.monotonic() - t0, 1)
    await asyncio.sleep(3)
    ctx.out["attacker_open"] = sum(not r.closed for r in raws)
    ch = Channel("127.0.0.1", ctx.served.port)
    stub = pb.NatsServiceStub(ch)
    try:
        await stub.kv_get(pb.KvGetRequest(bucket="quiet", key="k"), metadata=ctx.by.md, timeout=10)
        ctx.out["new_client_during"] = "OK"
    except (GRPCError, OSError, TimeoutError, StreamTerminatedError) as exc:
        ctx.out["new_client_during"] = f"{type(exc).__name__} {str(exc)[:80]}"
    ch.close()
    ctx.out["att_statuses"] = dict(Counter(s for r in raws for s in r.statuses.values()))
    for r in raws:
        await r.close()


if __name__ == "__main__":
    asyncio.run(main())
