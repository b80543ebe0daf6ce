"""Soak: mixed traffic over many tenants against a `natsgw serve` process; watches for leaks.

Publishes with live subscriptions opening and closing, stream publishes consumed with Consume
and acked with AckMessages, KV puts and gets, object uploads and downloads, by every tenant at
once. The gateway's RSS and open descriptors are sampled from /proc: after warm-up they must stay
flat (generous bounds: this is about leaks, not speed), and every acknowledged message must be
accounted for. It prints its figures.

The normal suite runs it for NATSGW_SOAK_SECONDS (default 30); run longer with e.g.
``NATSGW_SOAK_SECONDS=600 pytest -m soak -s tests/integration/test_soak.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import free_port, tenant
from tests.integration._jetstream import make_consumer, make_stream
from tests.integration.test_cli import NATSGW, listening, run_env
from tests.integration.test_jetstream_consume import consuming
from tests.integration.test_messaging import open_subscription
from tests.integration.test_objects import put_stream

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("NATSGW_SOAK_SECONDS", "30"))
TENANTS = int(os.environ.get("NATSGW_SOAK_TENANTS", "12"))
WARM_UP = 0.4  # of the run
BATCH = 5
OBJECT = os.urandom(96 * 1024)


@dataclasses.dataclass
class Sample:
    at: float
    rss_kib: int
    fds: int


def sample(pid: int, started: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return Sample(time.monotonic() - started, rss, len(os.listdir(f"/proc/{pid}/fd")))


@dataclasses.dataclass
class TenantLog:
    user: str
    published: int = 0  # core Publish confirmed while a subscription was open
    received: int = 0
    stream_acked: dict[bytes, int] = dataclasses.field(default_factory=dict)
    consumed: set[bytes] = dataclasses.field(default_factory=set)
    kv_ops: int = 0
    objects: int = 0
    rounds: int = 0


async def tenant_round(stub: pb.NatsServiceStub, log: TenantLog) -> None:
    user, n = log.user, log.rounds
    # Core pub/sub: a subscription opens, receives what was published, closes.
    request = pb.SubscribeRequest(user_id=user, subject="chat.>")
    async with open_subscription(stub, request) as subscription:
        for i in range(BATCH):
            response = await stub.publish(
                pb.PublishRequest(user_id=user, subject="chat.x", data=b"%d-%d" % (n, i))
            )
            assert response.success
            log.published += 1
        for _ in range(BATCH):
            message = await asyncio.wait_for(subscription.recv_message(), 10)
            assert message is not None
            log.received += 1
    # JetStream: stored, then consumed and acked in a batch.
    for i in range(BATCH):
        data = b"%s-%d-%d" % (user.encode(), n, i)
        stored = await stub.publish_to_stream(
            pb.PublishToStreamRequest(user_id=user, stream_name="soak", subject="soak.x", data=data)
        )
        log.stream_acked[data] = stored.sequence
    tokens = []
    async with consuming(stub, user, "soak", "c", max_messages=BATCH) as consumption:
        for _ in range(BATCH):
            message = (await consumption.message(10)).message
            assert message is not None
            log.consumed.add(message.data)
            tokens.append(message.ack_token)
    acks = await stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=tokens))
    assert all(result.success for result in acks.results), acks
    # KV.
    key = f"k{n % 10}"
    await stub.kv_put(pb.KvPutRequest(user_id=user, bucket="kv", key=key, value=b"%d" % n))
    got = await stub.kv_get(pb.KvGetRequest(user_id=user, bucket="kv", key=key))
    assert got.value == b"%d" % n
    log.kv_ops += 2
    # Objects, streamed both ways.
    name = f"o{n % 3}"
    assert (await put_stream(stub, user, "files", name, OBJECT, piece=32 * 1024)).success
    digest = hashlib.sha256()
    async for part in stub.object_get_stream(
        pb.ObjectGetRequest(user_id=user, bucket="files", object_name=name)
    ):
        digest.update(part.chunk)
    assert digest.digest() == hashlib.sha256(OBJECT).digest()
    log.objects += 2
    log.rounds += 1


async def drain_consumer(stub: pb.NatsServiceStub, log: TenantLog) -> None:
    """Whatever was stored but not yet consumed (none expected) is consumed now."""
    missing = set(log.stream_acked) - log.consumed
    if not missing:
        return
    async with consuming(stub, log.user, "soak", "c") as consumption:
        while missing - log.consumed:
            message = (await consumption.message(15)).message
            assert message is not None
            log.consumed.add(message.data)


@pytest.fixture
def soak_gateway(
    tmp_path: Path, nats_server: EmbeddedNatsServer
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    with (tmp_path / "natsgw.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [*NATSGW, "serve"],
            env=run_env(
                tmp_path,
                GRPC_PORT=str(port),
                NATS_URLS=nats_server.url,
                NATSGW_LOG_LEVEL="warning",  # audit lines would be most of the memory churn
            ),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.monotonic() + 30
    while not listening(port):
        assert proc.poll() is None and time.monotonic() < deadline, "natsgw did not start"
        time.sleep(0.05)
    yield proc, port
    proc.terminate()
    proc.wait(30)


@pytest.mark.timeout(SECONDS + 120)  # the suite's 120 s per test would cut a long soak short
async def test_soak_mixed_traffic_memory_and_fds_flat_everything_accounted(
    soak_gateway: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = soak_gateway
    logs = [TenantLog(tenant("soak")) for _ in range(TENANTS)]
    channels = [Channel("127.0.0.1", port) for _ in logs]
    stubs = [pb.NatsServiceStub(channel) for channel in channels]
    for stub, log in zip(stubs, logs, strict=True):
        await make_stream(stub, log.user, "soak", ["soak.>"])
        await make_consumer(stub, log.user, "soak", "c")
    started = time.monotonic()
    samples: list[Sample] = []
    stop = asyncio.Event()

    async def worker(stub: pb.NatsServiceStub, log: TenantLog) -> None:
        while not stop.is_set():
            await tenant_round(stub, log)

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(sample(proc.pid, started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    workers = [asyncio.create_task(worker(s, log)) for s, log in zip(stubs, logs, strict=True)]
    sampling = asyncio.create_task(sampler())
    try:
        done, _ = await asyncio.wait(workers, timeout=SECONDS)
        for task in done:  # a worker only ends early by failing
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*workers, sampling)
    samples.append(sample(proc.pid, started))
    for stub, log in zip(stubs, logs, strict=True):
        await drain_consumer(stub, log)

    # Accounting: every confirmed publish was delivered to the open subscription; every stored
    # message is in the stream at its sequence, and was consumed and acked.
    for stub, log in zip(stubs, logs, strict=True):
        assert log.received == log.published
        assert log.consumed == set(log.stream_acked)
        info = await stub.get_stream_info(
            pb.GetStreamInfoRequest(user_id=log.user, stream_name="soak")
        )
        assert info.stream is not None and info.stream.state is not None
        assert info.stream.state.messages == len(log.stream_acked)
        assert sorted(log.stream_acked.values()) == list(range(1, len(log.stream_acked) + 1))
        consumer = await stub.get_consumer_info(
            pb.GetConsumerInfoRequest(user_id=log.user, stream_name="soak", consumer_name="c")
        )
        assert consumer.consumer is not None and consumer.consumer.state is not None
        assert consumer.consumer.state.ack_floor_seq == len(log.stream_acked)
    for channel in channels:
        channel.close()

    warm = [s for s in samples if s.at >= SECONDS * WARM_UP]
    assert len(warm) >= 3, "too few samples after warm-up"
    base = warm[0]
    rss_growth = max(s.rss_kib for s in warm) - base.rss_kib
    fd_growth = max(s.fds for s in warm) - base.fds
    rounds = sum(log.rounds for log in logs)
    print(
        f"\nsoak {SECONDS:g}s, {TENANTS} tenants, {rounds} rounds: "
        f"{sum(log.published for log in logs)} publishes, "
        f"{sum(len(log.stream_acked) for log in logs)} stream messages consumed and acked, "
        f"{sum(log.kv_ops for log in logs)} KV ops, {sum(log.objects for log in logs)} object "
        f"transfers, {rounds} subscriptions opened and closed\n"
        f"gateway RSS: start {samples[0].rss_kib / 1024:.1f} MiB, after warm-up "
        f"{base.rss_kib / 1024:.1f} MiB, max after {max(s.rss_kib for s in warm) / 1024:.1f} MiB, "
        f"end {samples[-1].rss_kib / 1024:.1f} MiB; open fds: after warm-up {base.fds}, "
        f"max after {max(s.fds for s in warm)}, end {samples[-1].fds}"
    )
    assert rounds >= TENANTS, "the soak did not get through a round per tenant"
    # Generous: a leak grows with traffic; allocator noise and caches do not.
    assert rss_growth < max(48 * 1024, base.rss_kib // 2), f"RSS grew by {rss_growth} KiB"
    assert fd_growth <= 8, f"open descriptors grew by {fd_growth}"
