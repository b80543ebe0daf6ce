"""Requests a hostile or broken client sends: undecodable bytes, oversized repeated fields.

Every one must be refused with INVALID_ARGUMENT before the gateway expands it, without a
traceback in the logs and without stalling other tenants' calls.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import structlog
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated import nats_service_pb2 as upb
from natsgw._generated.isa import nats as pb
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, tenant

pytestmark = pytest.mark.asyncio

_PUBLISH = "/isa.nats.NATSService/Publish"
_GARBAGE = b"\xff\xff\xff\xff\x0f\x0a\xff"


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def _raw_call(port: int, method: str, body: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)  # no serializers: the bytes go as they are
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(body, timeout=10)
    return info.value


async def test_undecodable_request_is_invalid_argument_logged_once_per_peer(
    gateway: Gateway,
) -> None:
    with structlog.testing.capture_logs() as logs:
        errors = [await _raw_call(gateway.port, _PUBLISH, _GARBAGE) for _ in range(5)]
    for error in errors:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "request is not a valid PublishRequest"
    undecodable = [e for e in logs if e["event"] == "request_undecodable"]
    assert len(undecodable) == 1, logs  # five calls, one log line per peer and interval
    assert undecodable[0]["message_type"] == "PublishRequest"
    assert not any("exc_info" in e for e in logs), "no traceback for a client's bad bytes"
    assert not any(e["event"] == "handler_failed" for e in logs)
    assert not any(e["event"] == "audit" for e in logs), "logged once, not audited per call"


async def test_undecodable_health_request_is_invalid_argument(gateway: Gateway) -> None:
    error = await _raw_call(gateway.port, "/grpc.health.v1.Health/Check", _GARBAGE)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_million_entry_batch_is_refused_before_it_is_expanded(gateway: Gateway) -> None:
    request = upb.PublishBatchRequest(user_id=tenant())
    body = request.SerializeToString() + b"\x1a\x00" * 1_000_000  # messages = 3, each empty
    before = _rss_mib()
    started = time.perf_counter()
    error = await _raw_call(gateway.port, "/isa.nats.NATSService/PublishBatch", body)
    elapsed = time.perf_counter() - started
    grown = _rss_mib() - before
    print(
        f"\n1,000,000-entry PublishBatch refused in {elapsed * 1000:.0f} ms, RSS {grown:+.1f} MiB"
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "above the limit of 1000 " in error.details()
    assert "NATSGW_MAX_BATCH_MESSAGES" in error.details()
    assert grown < 50, f"RSS grew {grown:.1f} MiB"
    assert elapsed < 5


@pytest.mark.parametrize(
    ("method", "request_", "setting"),
    [
        (
            "AckMessages",
            upb.AckMessagesRequest(user_id="u", ack_tokens=["t"] * 2000),
            "NATSGW_MAX_ACK_TOKENS",
        ),
        (
            "PublishToStreamBatch",
            upb.PublishToStreamBatchRequest(
                user_id="u", messages=[upb.StreamMessage(subject="a")] * 2000
            ),
            "NATSGW_MAX_BATCH_MESSAGES",
        ),
        (
            "Publish",
            upb.PublishRequest(
                user_id="u", subject="a", headers={f"h{i}": "v" for i in range(300)}
            ),
            "NATSGW_MAX_HEADERS",
        ),
        (
            "PublishBatch",
            upb.PublishBatchRequest(
                user_id="u",
                messages=[upb.NATSMessage(subject="a", headers={f"h{i}": "" for i in range(300)})],
            ),
            "NATSGW_MAX_HEADERS",
        ),
        (
            "ObjectPut",
            upb.ObjectPutRequest(
                user_id="u", bucket="b", metadata={f"m{i}": "" for i in range(300)}
            ),
            "NATSGW_MAX_HEADERS",
        ),
        (
            "CreateStream",
            upb.CreateStreamRequest(
                user_id="u",
                config=upb.StreamConfig(name="s", subjects=[f"s.{i}" for i in range(2000)]),
            ),
            "NATSGW_MAX_LIST_ITEMS",
        ),
    ],
)
async def test_every_repeated_field_is_bounded(
    gateway: Gateway, method: str, request_: object, setting: str
) -> None:
    body = request_.SerializeToString()  # type: ignore[attr-defined]
    error = await _raw_call(gateway.port, f"/isa.nats.NATSService/{method}", body)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert setting in error.details()
    assert "above the limit" in error.details()


async def test_limits_are_settings(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(max_batch_messages=3)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        user = tenant()
        ok = await stub.publish_batch(
            pb.PublishBatchRequest(user_id=user, messages=[pb.NatsMessage(subject="a")] * 3)
        )
        assert ok.published_count == 3
        with pytest.raises(GRPCError) as info:
            await stub.publish_batch(
                pb.PublishBatchRequest(user_id=user, messages=[pb.NatsMessage(subject="a")] * 4)
            )
        assert info.value.status is Status.INVALID_ARGUMENT
        assert "NATSGW_MAX_BATCH_MESSAGES" in (info.value.message or "")
    finally:
        channel.close()


async def test_batch_answer_is_bounded(gateway: Gateway, stub: pb.NatsServiceStub) -> None:
    bad = [pb.NatsMessage(subject="bad subject")] * 1000
    reply = await stub.publish_batch(pb.PublishBatchRequest(user_id=tenant(), messages=bad))
    assert not reply.success
    assert reply.published_count == 0
    assert len(reply.errors) <= 101
    assert reply.errors[0].startswith("messages[0].subject")
    assert reply.errors[-1] == "… and 900 more refused messages"


async def test_bystander_publish_is_not_stalled_by_a_max_sized_batch(
    gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    limit = gateway.settings.max_batch_messages
    # Encoded up front and sent by grpcio (its own I/O thread), so that what the bystander
    # waits for is the gateway's work, not this test's client encoding a large request.
    body = upb.PublishBatchRequest(
        user_id=tenant(), messages=[upb.NATSMessage(subject="load.x", data=b"x")] * limit
    ).SerializeToString()
    bystander = tenant()
    latencies: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await stub.publish(pb.PublishRequest(user_id=bystander, subject="quiet", data=b"q"))
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        call = channel.unary_unary("/isa.nats.NATSService/PublishBatch")
        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        quiet = max(latencies)
        started = time.perf_counter()
        answers = [await call(body, timeout=30) for _ in range(5)]
        batch_time = (time.perf_counter() - started) / 5
        done.set()
        await prober
    reply = upb.PublishBatchResponse.FromString(answers[-1])
    worst = max(latencies)
    print(
        f"\n{limit}-message PublishBatch: {batch_time * 1000:.0f} ms each (5 in a row); "
        f"bystander Publish: {len(latencies)} calls, worst {worst * 1000:.1f} ms "
        f"(before the batches: {quiet * 1000:.1f} ms)"
    )
    assert reply.published_count == limit
    assert worst < 1.0
