"""The HTTP side port: Prometheus metrics scraped over HTTP, liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from tests.conftest import tenant, wait_for

GatewayFactory = Callable[..., Awaitable[Gateway]]


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.json()


async def test_metrics_count_calls_errors_latency_and_subscriptions(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(http_port=0)
    assert gw.http_port > 0
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    for _ in range(3):
        await stub.publish(pb.PublishRequest(user_id=user, subject="m", data=b"x"))
    with pytest.raises(GRPCError):
        await stub.publish(pb.PublishRequest(user_id=user, subject="bad subject"))

    async with channel.request(
        "/isa.nats.NATSService/Subscribe",
        Cardinality.UNARY_STREAM,
        pb.SubscribeRequest,
        pb.MessageResponse,
    ) as stream:
        await stream.send_message(pb.SubscribeRequest(user_id=user, subject="m.>"), end=True)
        await stream.recv_initial_metadata()
        samples = await scrape(gw.http_port)
        assert samples[("natsgw_subscriptions_active", ())] == 1
        assert samples[("natsgw_rpc_in_flight", (("rpc", "Subscribe"),))] == 1
        await stream.cancel()

    await wait_for(lambda: gw.subscriptions.active == 0)
    samples = await scrape(gw.http_port)
    channel.close()
    assert samples[("natsgw_rpc_calls_total", (("rpc", "Publish"), ("status", "OK")))] == 3
    invalid = (("rpc", "Publish"), ("status", "INVALID_ARGUMENT"))
    assert samples[("natsgw_rpc_calls_total", invalid)] == 1
    assert samples[("natsgw_rpc_errors_total", invalid)] == 1
    assert samples[("natsgw_rpc_duration_seconds_count", (("rpc", "Publish"),))] == 4
    assert (
        samples[("natsgw_rpc_duration_seconds_bucket", (("le", "+Inf"), ("rpc", "Publish")))] == 4
    )
    assert samples[("natsgw_rpc_calls_total", (("rpc", "Subscribe"), ("status", "CANCELLED")))] == 1
    assert samples[("natsgw_subscriptions_active", ())] == 0
    assert samples[("natsgw_subscription_dropped_messages_total", ())] == 0
    assert samples[("natsgw_nats_connected", ())] == 1
    assert samples[("natsgw_nats_connection_state", (("state", "CONNECTED"),))] == 1
    assert samples[("natsgw_nats_connection_state", (("state", "RECONNECTING"),))] == 0
    # Successful publishes are not audited by default (README, Audit); the refused one is.
    assert samples[("natsgw_audit_events_total", ())] == 1
    assert samples[("natsgw_audit_queue_depth", ())] == 0
    assert samples[("natsgw_audit_dropped_total", ())] == 0


async def test_subscription_buffer_drops_are_counted(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(http_port=0, subscription_buffer_msgs=2)  # default policy: drop
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    async with channel.request(
        "/isa.nats.NATSService/Subscribe",
        Cardinality.UNARY_STREAM,
        pb.SubscribeRequest,
        pb.MessageResponse,
    ) as stream:
        await stream.send_message(pb.SubscribeRequest(user_id=user, subject="flood"), end=True)
        await stream.recv_initial_metadata()
        await stub.publish_batch(
            pb.PublishBatchRequest(
                user_id=user,
                messages=[pb.NatsMessage(subject="flood", data=b"%d" % i) for i in range(200)],
            )
        )
        await asyncio.sleep(0.3)  # the subscriber reads nothing meanwhile
        samples = await scrape(gw.http_port)
        await stream.cancel()
    channel.close()
    assert samples[("natsgw_subscription_dropped_messages_total", ())] > 0


async def test_healthz_and_readyz(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(http_port=0)
    assert await get(gw.http_port, "/healthz") == (200, {"status": "alive"})
    assert await get(gw.http_port, "/readyz") == (200, {"ready": True})


async def test_readyz_fails_when_nats_goes_away(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    gw = await make_gateway(
        nats_urls=(server.url,), nats_monitor_url=server.monitor_url, http_port=0
    )
    assert (await get(gw.http_port, "/readyz"))[0] == 200
    await server.stop()
    await wait_for(lambda: not gw.adapter.connected if gw.adapter else False)  # type: ignore[union-attr]
    status, body = await get(gw.http_port, "/readyz")
    assert status == 503 and body["ready"] is False
    assert "NATS connection" in str(body["reason"])
    assert (await get(gw.http_port, "/healthz"))[0] == 200  # alive, just not ready
    samples = await scrape(gw.http_port)
    assert samples[("natsgw_nats_connected", ())] == 0


async def test_readyz_fails_without_jetstream(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nojs", jetstream=False)
    await server.start()
    try:
        gw = await make_gateway(nats_urls=(server.url,), nats_monitor_url="", http_port=0)
        status, body = await get(gw.http_port, "/readyz")
        assert status == 503 and "JetStream" in str(body["reason"])
    finally:
        await server.stop()
