"""The audit trail: structured events for state-changing and refused calls, shipped to Loki.

A fake Loki (the real push API, in the test) receives what the gateway sends; a dead or failing
Loki must never slow or fail a client call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.config import AuthMode
from natsgw.ops.audit import LokiShipper
from natsgw.server import Gateway
from tests.conftest import tenant, wait_for
from tests.integration._security import FakeLoki, free_port

GatewayFactory = Callable[..., Awaitable[Gateway]]


def audit_of(loki: FakeLoki, request_id: str) -> list[dict[str, Any]]:
    return [e for e in loki.events if e.get("request_id") == request_id]


async def test_allowed_and_refused_calls_reach_loki_as_structured_events(
    make_gateway: GatewayFactory,
) -> None:
    loki = FakeLoki()
    await loki.start()
    try:
        gw = await make_gateway(
            loki_url=loki.url,
            loki_flush_interval=0.05,
            service_hostname="gw-audit-1",
            audit_data_plane=True,  # successful publishes are audited only when asked for
        )
        channel = Channel("127.0.0.1", gw.port)
        stub = pb.NatsServiceStub(channel)
        user = tenant("audited")
        await stub.publish(
            pb.PublishRequest(user_id=user, subject="orders.created", data=b"1"),
            metadata={"x-request-id": "req-allowed-1"},
        )
        with pytest.raises(GRPCError):
            await stub.publish(
                pb.PublishRequest(user_id="", subject="orders.created"),
                metadata={"x-request-id": "req-refused-1"},
            )
        with pytest.raises(GRPCError):
            await stub.publish(
                pb.PublishRequest(user_id=user, subject="bad subject"),
                metadata={"x-request-id": "req-invalid-1"},
            )
        # A successful read is not audited; the audited call after it shows the read's turn has
        # passed (events ship in order), so req-read-1 would have reached Loki by then.
        listed = await stub.list_streams(
            pb.ListStreamsRequest(user_id=user), metadata={"x-request-id": "req-read-1"}
        )
        assert list(listed.streams) == []
        await stub.publish(
            pb.PublishRequest(user_id=user, subject="orders.created", data=b"2"),
            metadata={"x-request-id": "req-after-read-1"},
        )
        await wait_for(lambda: len(audit_of(loki, "req-after-read-1")) == 1, timeout=5)
        channel.close()
        assert audit_of(loki, "req-read-1") == []

        [allowed] = audit_of(loki, "req-allowed-1")
        assert allowed["event"] == "audit"
        assert allowed["rpc"] == "Publish"
        assert allowed["outcome"] == "ok" and allowed["status"] == "OK"
        assert allowed["who"] == user
        assert allowed["tenant"] == f"user:{user}"
        assert allowed["resource"] == {"subject": "orders.created"}  # the tenant's name
        assert isinstance(allowed["latency_ms"], float) and allowed["latency_ms"] >= 0
        assert allowed["peer"].startswith("127.0.0.1")

        [refused] = audit_of(loki, "req-refused-1")
        assert (refused["outcome"], refused["status"]) == ("refused", "UNAUTHENTICATED")
        assert refused["who"] == "" and "user_id" in refused["reason"]

        [invalid] = audit_of(loki, "req-invalid-1")
        assert (invalid["outcome"], invalid["status"]) == ("refused", "INVALID_ARGUMENT")
        assert invalid["resource"] == {"subject": "bad subject"}
        assert invalid["who"] == user

        labels = loki.labels[0]
        assert labels["service_name"] == "nats-grpc-service"
        assert labels["instance"] == "gw-audit-1"
        assert labels["job"] == "natsgw-audit"
    finally:
        await loki.stop()


async def test_acting_for_another_user_is_recorded(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    loki = FakeLoki()
    await loki.start()
    path = tmp_path / "tokens.json"
    admin_token = "svc-" + "z" * 40
    path.write_text(
        json.dumps(
            {"tokens": [{"token": admin_token, "user_id": "svc-ops", "roles": ["natsgw:act-as"]}]}
        )
    )
    try:
        gw = await make_gateway(
            loki_url=loki.url,
            loki_flush_interval=0.05,
            auth_mode=AuthMode.TOKEN,
            auth_tokens_file=path,
            audit_data_plane=True,
        )
        channel = Channel("127.0.0.1", gw.port)
        stub = pb.NatsServiceStub(channel)
        customer = tenant("customer")
        await stub.publish(
            pb.PublishRequest(user_id=customer, subject="x", data=b"1"),
            metadata={"authorization": f"Bearer {admin_token}", "x-request-id": "act-1"},
        )
        channel.close()
        await wait_for(lambda: len(audit_of(loki, "act-1")) == 1, timeout=5)
        [event] = audit_of(loki, "act-1")
        assert event["who"] == "svc-ops"
        assert event["acting_as"] is True and event["on_behalf_of"] == customer
        assert event["tenant"] == f"user:{customer}"
        assert event["auth"] == "token"
    finally:
        await loki.stop()


async def test_loki_failures_are_retried_with_backoff(make_gateway: GatewayFactory) -> None:
    loki = FakeLoki(fail_first=2)
    await loki.start()
    try:
        gw = await make_gateway(loki_url=loki.url, loki_flush_interval=0.05, audit_data_plane=True)
        channel = Channel("127.0.0.1", gw.port)
        stub = pb.NatsServiceStub(channel)
        await stub.publish(
            pb.PublishRequest(user_id=tenant(), subject="x"), metadata={"x-request-id": "retry-1"}
        )
        channel.close()
        await wait_for(lambda: len(audit_of(loki, "retry-1")) == 1, timeout=10)
        assert loki.failed == 2
        shipper = gw.audit.shipper
        assert shipper is not None and shipper.failed_pushes == 2 and shipper.dropped == 0
    finally:
        await loki.stop()


async def test_a_dead_loki_never_slows_or_fails_calls(make_gateway: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = await make_gateway(
        loki_url=dead, audit_queue_size=5, loki_flush_interval=0.05, audit_data_plane=True
    )
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant()
    started = time.perf_counter()
    for i in range(40):
        response = await stub.publish(pb.PublishRequest(user_id=user, subject="x", data=b"%d" % i))
        assert response.success
    elapsed = time.perf_counter() - started
    channel.close()
    # 40 calls through a dead Loki take what 40 calls take (well under a second here).
    assert elapsed < 2.0, elapsed
    audit = gw.audit
    assert audit.recorded >= 40
    assert audit.queue_depth <= 5
    # Every event is accounted for: queued, in the batch being retried, or dropped and counted.
    shipper = audit.shipper
    assert shipper is not None
    assert audit.dropped + audit.queue_depth + shipper._in_flight == audit.recorded
    assert audit.dropped >= 40 - 2 * 5


async def test_by_default_the_data_plane_is_audited_only_when_refused(
    make_gateway: GatewayFactory,
) -> None:
    """Successful publishes cost no audit event; control-plane changes and refusals always do."""
    import structlog

    gw = await make_gateway()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    user = tenant("quiet")
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                assert (await stub.publish(pb.PublishRequest(user_id=user, subject="x"))).success
            with pytest.raises(GRPCError):
                await stub.publish(pb.PublishRequest(user_id=user, subject="bad subject"))
            await stub.create_stream(
                pb.CreateStreamRequest(
                    user_id=user, config=pb.StreamConfig(name="audited", subjects=["a.>"])
                )
            )
            await stub.delete_stream(pb.DeleteStreamRequest(user_id=user, stream_name="audited"))
    finally:
        channel.close()
    events = [(e["rpc"], e["outcome"]) for e in logs if e["event"] == "audit"]
    assert events == [("Publish", "refused"), ("CreateStream", "ok"), ("DeleteStream", "ok")]


async def test_shipper_queue_is_bounded_and_counts_drops() -> None:
    shipper = LokiShipper("http://127.0.0.1:9", {"job": "t"}, queue_size=3, batch_size=2)
    accepted = [shipper.offer(i, f"line {i}") for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert (shipper.depth, shipper.dropped) == (3, 2)
    shipper.start()
    await shipper.close(timeout=0.2)  # nothing can be delivered: the rest counts as dropped
    assert shipper.depth == 0 and shipper.dropped == 5 and shipper.sent == 0


async def test_loki_refusal_drops_the_batch_without_retrying() -> None:
    from aiohttp import web

    from tests.integration._security import HttpFake

    class Refusing(HttpFake):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.app.router.add_post("/loki/api/v1/push", self._push)

        async def _push(self, _request: web.Request) -> web.Response:
            self.calls += 1
            return web.Response(status=400, text="entry too far behind")

    fake = Refusing()
    await fake.start()
    shipper = LokiShipper(fake.url, {"job": "t"}, batch_size=10, flush_interval=0.01)
    shipper.start()
    try:
        for i in range(3):
            shipper.offer(time.time_ns(), f"line {i}")
        await wait_for(lambda: shipper.dropped == 3)
        await asyncio.sleep(0.1)
        assert fake.calls == 1 and shipper.sent == 0
    finally:
        await shipper.close()
        await fake.stop()


async def test_audit_without_loki_still_logs_through_structlog(
    make_gateway: GatewayFactory,
) -> None:
    import structlog

    gw = await make_gateway()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    with structlog.testing.capture_logs() as logs, pytest.raises(GRPCError) as info:
        await stub.publish(pb.PublishRequest(subject="x"))
    channel.close()
    assert info.value.status == Status.UNAUTHENTICATED
    events = [e for e in logs if e["event"] == "audit"]
    assert len(events) == 1 and events[0]["status"] == "UNAUTHENTICATED"


async def test_request_id_is_echoed_in_response_headers(make_gateway: GatewayFactory) -> None:
    from grpclib.const import Cardinality

    gw = await make_gateway()
    channel = Channel("127.0.0.1", gw.port)
    try:
        for sent in ("trace-abc-123", None):
            async with channel.request(
                "/isa.nats.NATSService/Publish",
                Cardinality.UNARY_UNARY,
                pb.PublishRequest,
                pb.PublishResponse,
                metadata={"x-request-id": sent} if sent else None,
            ) as stream:
                await stream.send_message(
                    pb.PublishRequest(user_id=tenant(), subject="x"), end=True
                )
                await stream.recv_initial_metadata()
                assert (await stream.recv_message()).success
                assert stream.initial_metadata is not None
                echoed = stream.initial_metadata["x-request-id"]
            if sent:
                assert echoed == sent
            else:
                assert len(echoed) == 32  # one made up for the call
    finally:
        channel.close()
