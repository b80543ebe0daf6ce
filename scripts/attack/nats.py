"""Issue 17 rows B and D: the back door, the gateway's shared NATS connection.

``python -m scripts.attack.nats`` starts its own nats-servers and gateways (loopback, in this
process) and prints, per row, what a quiet tenant saw while another tenant attacked:

- B: PublishToStream of exactly the server's max_payload (the gateway's added header puts it over).
- D: many large reads at once (8 MiB KVGet and ObjectGet, 40 concurrent each).
- DJ: JetStream reads of an 8 MiB backlog (PullMessages, Consume), 32 MiB ObjectGetStream,
  and a Consume with max_bytes=2**40.

Figures: slow-consumer events (nats-server's /varz), connections lost/replaced by the gateway, the
quiet tenant's KVGet p99 and failed calls, and /healthz, /readyz afterwards. Run it from a
checkout at main's HEAD too (``PYTHONPATH=<that checkout> python <this file>``) for "before".
It only uses public constructors, so it runs against the code before and after the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

import natsgw
from natsgw._generated.isa import nats as pb
from natsgw.config import Settings
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway

MIB = 1024 * 1024


@dataclasses.dataclass
class Figures:
    row: str
    attack_ok: int = 0
    attack_failed: int = 0
    attack_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    slow_consumers: int = 0
    reconnects: int = 0
    replacements: int = 0
    quiet_calls: int = 0
    quiet_failed: int = 0
    quiet_p99_ms: float = 0.0
    quiet_max_ms: float = 0.0
    after_ok: bool = False
    healthz: int = 0
    readyz: int = 0

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _varz(server: EmbeddedNatsServer) -> dict[str, Any]:
    url = f"{server.monitor_url}/varz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return dict(await response.json())


async def _status(port: int, path: str) -> int:
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


class Quiet:
    """A quiet tenant reading one small key in a loop; latencies and failures."""

    def __init__(self, stub: pb.NatsServiceStub) -> None:
        self.stub = stub
        self.user = _user("quiet")
        self.latencies: list[float] = []
        self.failed = 0
        self._stop = asyncio.Event()

    async def prepare(self) -> None:
        await self.stub.kv_put(
            pb.KvPutRequest(user_id=self.user, bucket="q", key="k", value=b"small")
        )

    async def ok(self, timeout: float = 5.0) -> bool:
        try:
            got = await self.stub.kv_get(
                pb.KvGetRequest(user_id=self.user, bucket="q", key="k"), timeout=timeout
            )
        except (GRPCError, TimeoutError):
            return False
        return bool(got.found and got.value == b"small")

    async def run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            good = await self.ok(timeout=10.0)
            self.latencies.append(time.perf_counter() - start)
            if not good:
                self.failed += 1
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    def fill(self, figures: Figures) -> None:
        figures.quiet_calls = len(self.latencies)
        figures.quiet_failed = self.failed
        if self.latencies:
            ordered = sorted(self.latencies)
            figures.quiet_p99_ms = round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1)
            figures.quiet_max_ms = round(max(ordered) * 1000, 1)


async def _attack(figures: Figures, calls: list[Callable[[], Awaitable[Any]]]) -> None:
    results = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            figures.attack_failed += 1
            name = result.status.name if isinstance(result, GRPCError) else type(result).__name__
            figures.attack_errors[name] = figures.attack_errors.get(name, 0) + 1
        else:
            figures.attack_ok += 1


async def _finish(
    figures: Figures, gw: Gateway, server: EmbeddedNatsServer, quiet: Quiet, before: int
) -> Figures:
    # Give a cut connection a chance to come back, as a client retrying would.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not await quiet.ok(timeout=2.0):  # noqa: ASYNC110
        await asyncio.sleep(0.25)
    figures.after_ok = await quiet.ok()
    figures.slow_consumers = int((await _varz(server)).get("slow_consumers", 0)) - before
    adapter = gw.adapter
    assert adapter is not None
    figures.reconnects = adapter.state().reconnects
    figures.replacements = int(getattr(adapter, "replacements", 0))
    http = gw.http
    assert http is not None
    figures.healthz = await _status(http.port, "/healthz")
    figures.readyz = await _status(http.port, "/readyz")
    return figures


def _settings(server: EmbeddedNatsServer, **overrides: Any) -> Settings:
    base = Settings(
        nats_urls=(server.url,),
        nats_monitor_url=server.monitor_url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        http_host="127.0.0.1",
        http_port=0,
        shutdown_grace=2.0,
    )
    return dataclasses.replace(base, **overrides)


async def row_b(workdir: Path) -> Figures:
    """PublishToStream of exactly max_payload bytes, once; then the quiet tenant."""
    figures = Figures("B")
    max_payload = 64 * 1024
    server = EmbeddedNatsServer(workdir / "b", max_payload=max_payload)
    await server.start()
    gw = Gateway(_settings(server, max_message_size=max_payload))
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    quiet_channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        quiet = Quiet(pb.NatsServiceStub(quiet_channel))  # its own connection
        await quiet.prepare()
        attacker = _user("noisy")
        await stub.create_stream(
            pb.CreateStreamRequest(
                user_id=attacker, config=pb.StreamConfig(name="s", subjects=["s.>"])
            )
        )
        before = int((await _varz(server)).get("slow_consumers", 0))
        task = asyncio.create_task(quiet.run())
        await asyncio.sleep(0.3)
        data = b"x" * max_payload
        await _attack(
            figures,
            [
                lambda: stub.publish_to_stream(
                    pb.PublishToStreamRequest(
                        user_id=attacker, stream_name="s", subject="s.a", data=data
                    ),
                    timeout=10.0,
                )
            ],
        )
        await asyncio.sleep(2.0)
        quiet.stop()
        await task
        quiet.fill(figures)
        return await _finish(figures, gw, server, quiet, before)
    finally:
        channel.close()
        quiet_channel.close()
        await gw.stop()
        await server.stop()


async def row_d(workdir: Path, concurrency: int = 40, size: int = 8 * MIB) -> Figures:
    """``concurrency`` KVGet and as many ObjectGet of ``size`` bytes at once, twice."""
    figures = Figures("D")
    server = EmbeddedNatsServer(workdir / "d", max_payload=10 * MIB)
    await server.start()
    gw = Gateway(_settings(server))
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    quiet_channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        quiet = Quiet(pb.NatsServiceStub(quiet_channel))  # its own connection
        await quiet.prepare()
        attacker = _user("noisy")
        value = b"v" * size
        await stub.kv_put(pb.KvPutRequest(user_id=attacker, bucket="big", key="k", value=value))
        await stub.object_put(
            pb.ObjectPutRequest(user_id=attacker, bucket="big", object_name="o", data=value)
        )
        before = int((await _varz(server)).get("slow_consumers", 0))
        task = asyncio.create_task(quiet.run())
        await asyncio.sleep(0.3)
        calls: list[Callable[[], Awaitable[Any]]] = []
        for _ in range(concurrency):
            calls.append(
                lambda: stub.kv_get(
                    pb.KvGetRequest(user_id=attacker, bucket="big", key="k"), timeout=30.0
                )
            )
            calls.append(
                lambda: stub.object_get(
                    pb.ObjectGetRequest(user_id=attacker, bucket="big", object_name="o"),
                    timeout=30.0,
                )
            )
        await _attack(figures, calls)
        quiet.stop()
        await task
        quiet.fill(figures)
        return await _finish(figures, gw, server, quiet, before)
    finally:
        channel.close()
        quiet_channel.close()
        await gw.stop()
        await server.stop()


async def row_d_jetstream(workdir: Path, concurrency: int = 20, size: int = 8 * MIB) -> Figures:
    """JetStream reads of a backlog of ``size`` messages: ``concurrency`` PullMessages and as many
    Consume streams (max_bytes 16 MiB, what the fix allows) at once, plus 4 ObjectGetStream of a
    32 MiB object; and one Consume with max_bytes=2**40 (counted in attack_errors)."""
    figures = Figures("D-jetstream")
    server = EmbeddedNatsServer(workdir / "dj", max_payload=10 * MIB)
    await server.start()
    gw = Gateway(_settings(server))
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    quiet_channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        quiet = Quiet(pb.NatsServiceStub(quiet_channel))  # its own connection
        await quiet.prepare()
        attacker = _user("noisy")
        await stub.create_stream(
            pb.CreateStreamRequest(
                user_id=attacker, config=pb.StreamConfig(name="big", subjects=["big.>"])
            )
        )
        for _ in range(concurrency):
            await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=attacker, stream_name="big", subject="big.a", data=b"m" * size
                )
            )
        names = [f"c{i}" for i in range(2 * concurrency)]
        for name in names:
            await stub.create_consumer(
                pb.CreateConsumerRequest(
                    user_id=attacker,
                    stream_name="big",
                    config=pb.ConsumerConfig(durable_name=name, ack_wait=_seconds(60)),
                )
            )
        blob = b"o" * (32 * MIB)
        await stub.object_put_stream(
            [
                pb.ObjectPutStreamRequest(
                    header=pb.ObjectPutHeader(user_id=attacker, bucket="ob", object_name="o")
                ),
                *(
                    pb.ObjectPutStreamRequest(chunk=blob[i : i + MIB])
                    for i in range(0, len(blob), MIB)
                ),
            ]
        )
        before = int((await _varz(server)).get("slow_consumers", 0))
        task = asyncio.create_task(quiet.run())
        await asyncio.sleep(0.3)

        async def consume(name: str, max_bytes: int) -> None:
            request = pb.ConsumeRequest(
                user_id=attacker, stream_name="big", consumer_name=name, max_bytes=max_bytes
            )
            async for response in stub.consume(request, timeout=30.0):
                if response.message is not None:
                    return

        async def get_stream() -> None:
            request = pb.ObjectGetRequest(user_id=attacker, bucket="ob", object_name="o")
            async for _ in stub.object_get_stream(request, timeout=30.0):
                pass

        calls: list[Callable[[], Awaitable[Any]]] = []
        for name in names[:concurrency]:
            calls.append(
                lambda name=name: stub.pull_messages(  # type: ignore[misc]
                    pb.PullMessagesRequest(
                        user_id=attacker, stream_name="big", consumer_name=name, batch_size=10
                    ),
                    timeout=30.0,
                )
            )
        for name in names[concurrency:]:
            calls.append(lambda name=name: consume(name, 16 * MIB))  # type: ignore[misc]
        calls += [get_stream for _ in range(4)]
        calls.append(lambda: consume(names[0], 2**40))
        await _attack(figures, calls)
        quiet.stop()
        await task
        quiet.fill(figures)
        return await _finish(figures, gw, server, quiet, before)
    finally:
        channel.close()
        quiet_channel.close()
        await gw.stop()
        await server.stop()


def _seconds(value: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=value)


async def main(rows: list[str], concurrency: int) -> None:
    print(f"natsgw from {Path(natsgw.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="natsgw-attack-") as tmp:
        for row in rows:
            if row == "B":
                print((await row_b(Path(tmp))).line())
            elif row == "D":
                print((await row_d(Path(tmp), concurrency)).line())
            elif row == "DJ":
                print((await row_d_jetstream(Path(tmp), concurrency // 2)).line())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="B,D,DJ", help="comma-separated rows (B, D, DJ)")
    parser.add_argument("--concurrency", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main([r.strip().upper() for r in args.rows.split(",")], args.concurrency))
