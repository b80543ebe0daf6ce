"""A caller's W3C traceparent crosses the gateway: into NATS headers, back out on deliveries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from grpclib.client import Channel
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from natsgw._generated.isa import nats as pb
from natsgw.client import Client
from natsgw.ops import tracing
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import settled, tenant

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]


def mapped(user: str, subject: str) -> str:
    return Namespace(Tenant.user(user)).subject(subject)


@pytest_asyncio.fixture
async def traced(gateway: Gateway) -> AsyncIterator[tuple[Client, Client, str]]:
    """Two clients of one tenant: one sending a traceparent on every call, one sending none."""
    user = tenant()
    target = f"127.0.0.1:{gateway.port}"
    with_trace = Client(target, user_id=user, metadata={"traceparent": PARENT})
    plain = Client(target, user_id=user)
    yield with_trace, plain, user
    with_trace.close()
    plain.close()


async def test_core_publish_carries_the_traceparent_to_nats_and_subscribers(
    traced: tuple[Client, Client, str], nc: nats.NATS
) -> None:
    with_trace, plain, user = traced
    native = await nc.subscribe(Namespace(Tenant.user(user)).pattern("t.>"))
    await settled(nc)
    async with plain.subscribe("t.>") as sub:
        await with_trace.publish("t.one", b"1")
        await with_trace.publish_batch([("t.two", b"2"), ("t.three", b"3", {"k": "v"})])
        delivered = [await anext(sub) for _ in range(3)]
        own = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        await with_trace.publish("t.own", b"4", headers={"traceparent": own})
        assert (await anext(sub)).headers["traceparent"] == own  # a message's own one wins
        await plain.publish("t.untraced", b"5", headers={"k": "v"})
        assert (await anext(sub)).headers == {"k": "v"}  # nothing added without a traceparent
    for msg in delivered:
        assert trace_id(msg.headers["traceparent"]) == TRACE_ID
    assert delivered[2].headers["k"] == "v"
    raw = await native.next_msg(timeout=2)
    assert raw.headers is not None and trace_id(raw.headers["traceparent"]) == TRACE_ID


async def test_request_and_reply_both_carry_their_trace(
    traced: tuple[Client, Client, str], gateway: Gateway
) -> None:
    with_trace, plain, user = traced
    responder_parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    responder = Client(
        f"127.0.0.1:{gateway.port}", user_id=user, metadata={"traceparent": responder_parent}
    )
    seen: list[dict[str, str]] = []

    async def respond(ready: asyncio.Event) -> None:
        async with plain.subscribe("svc.traced") as requests:
            ready.set()
            request = await anext(requests)
            seen.append(request.headers)
            await responder.publish(request.reply_to, b"pong")

    ready = asyncio.Event()
    task = asyncio.create_task(respond(ready))
    await ready.wait()
    reply = await with_trace.request("svc.traced", b"ping", timeout=3)
    await task
    responder.close()
    assert trace_id(seen[0]["traceparent"]) == TRACE_ID  # the request carried the caller's trace
    assert trace_id(reply.headers["traceparent"]) == "a" * 32  # the reply carries the responder's


async def test_jetstream_deliveries_carry_the_trace(traced: tuple[Client, Client, str]) -> None:
    with_trace, plain, _ = traced
    await plain.create_stream("traced", ["tr.>"])
    await with_trace.publish_to_stream("tr.a", b"1", stream="traced")
    await with_trace.publish_to_stream_batch("traced", [("tr.b", b"2")])
    await plain.create_consumer("traced", "c")
    async with plain.consume("traced", "c") as messages:
        got = [await anext(messages), await anext(messages)]
        for msg in got:
            msg.ack()
    assert [trace_id(m.headers["traceparent"]) for m in got] == [TRACE_ID, TRACE_ID]


async def test_a_malformed_traceparent_is_ignored(gateway: Gateway, nc: nats.NATS) -> None:
    user = tenant()
    sub = await nc.subscribe(mapped(user, "bad"))
    await settled(nc)
    channel = Channel("127.0.0.1", gateway.port)
    try:
        await pb.NatsServiceStub(channel).publish(
            pb.PublishRequest(user_id=user, subject="bad", data=b"x"),
            metadata={"traceparent": "not-a-trace"},
        )
    finally:
        channel.close()
    msg = await sub.next_msg(timeout=2)
    assert not msg.headers


async def test_spans_around_rpcs_when_opentelemetry_is_there(
    traced: tuple[Client, Client, str], monkeypatch: pytest.MonkeyPatch, nc: nats.NATS
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("natsgw"))
    with_trace, _, user = traced
    native = await nc.subscribe(mapped(user, "span.x"))
    await settled(nc)
    await with_trace.publish("span.x", b"1")
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        await with_trace.publish("bad.>", b"")
    [ok, failed] = exporter.get_finished_spans()
    assert ok.name == "isa.nats.NATSService/Publish"
    assert ok.parent is not None and f"{ok.parent.span_id:016x}" == PARENT.split("-")[2]
    assert f"{ok.context.trace_id:032x}" == TRACE_ID
    header = (await native.next_msg(timeout=2)).headers or {}
    assert header["traceparent"].split("-")[2] == f"{ok.context.span_id:016x}"  # child of the span
    assert failed.status.status_code.name == "ERROR"


def test_without_opentelemetry_nothing_is_imported_and_propagation_still_works() -> None:
    probe = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from natsgw.ops import tracing\n"
        "assert tracing._tracer is None\n"
        "from natsgw._generated.isa import nats as pb\n"
        "request = pb.PublishRequest(subject='a')\n"
        f"tracing.stamp(request, tracing.incoming({{'traceparent': '{PARENT}'}}))\n"
        f"assert request.headers == {{'traceparent': '{PARENT}'}}, request.headers\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules if sys.modules[m])\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_no_span_work_while_opentelemetry_has_no_sdk() -> None:
    """The API alone (no SDK configured) would only make no-op spans: none are started."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    request = pb.PublishRequest(subject="x")
    assert tracing.on_request("Publish", request, {}) is None
    traced = tracing.on_request("Publish", request, {"traceparent": PARENT})
    assert traced is not None and traced.span is None  # propagation goes on without a span
    assert request.headers["traceparent"] == PARENT
