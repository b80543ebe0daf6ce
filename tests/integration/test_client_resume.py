"""The typed client across a gateway restart, and streams that end cleanly on both sides.

A gateway is started on a fixed port, stopped while a call or stream runs, and a new one is
started on the same port: streams are opened again (KVWatch from its last revision), unary calls
are repeated by the RPC's idempotency, and nothing ends silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from natsgw.client import Client, NotFound, Unavailable
from natsgw.client._retry import Retry
from natsgw.config import AuthMode
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import free_port, tenant, wait_for

GatewayFactory = Callable[..., Awaitable[Gateway]]

#: Generous for a loaded 2-core CI machine; each attempt is quick when nothing listens.
PATIENT = Retry(attempts=60, first_delay=0.05, max_delay=0.25)


async def _restart(make_gateway: GatewayFactory, old: Gateway, port: int) -> Gateway:
    await old.stop()
    return await make_gateway(grpc_port=port)


async def test_subscribe_is_made_again_after_a_gateway_restart(
    make_gateway: GatewayFactory,
) -> None:
    port = free_port()
    gw = await make_gateway(grpc_port=port)
    client = Client(f"127.0.0.1:{port}", user_id=tenant(), stream_retry=PATIENT)
    try:
        async with client.subscribe("news.*") as sub:
            await client.publish("news.a", b"before")
            assert (await asyncio.wait_for(anext(sub), 5)).data == b"before"
            reading = asyncio.ensure_future(anext(sub))
            gw = await _restart(make_gateway, gw, port)
            await wait_for(lambda: sub.resumed == 1 or reading.done(), timeout=15)
            assert not reading.done() or reading.exception() is None, reading
            await client.publish("news.a", b"after")
            msg = await asyncio.wait_for(reading, 5)
            assert msg.data == b"after"
    finally:
        client.close()


async def test_kv_watch_resumes_after_its_last_revision(
    make_gateway: GatewayFactory, gateway: Gateway
) -> None:
    """Changes made while the gateway was down arrive, each once, in order."""
    user, port = tenant(), free_port()
    gw = await make_gateway(grpc_port=port)
    client = Client(f"127.0.0.1:{port}", user_id=user, stream_retry=PATIENT)
    other = Client(f"127.0.0.1:{gateway.port}", user_id=user)  # a second gateway, same NATS
    try:
        await client.kv_put("cfg", "color", b"red")
        async with client.kv_watch("cfg", "color") as watch:
            first = await asyncio.wait_for(anext(watch), 5)
            assert (first.value, first.revision) == (b"red", 1)
            await gw.stop()
            await other.kv_put("cfg", "color", b"green")  # while the watch's gateway is down
            await other.kv_put("cfg", "color", b"blue")
            gw = await make_gateway(grpc_port=port)
            seen = [await asyncio.wait_for(anext(watch), 15) for _ in range(2)]
            assert [(e.value, e.revision) for e in seen] == [(b"green", 2), (b"blue", 3)]
            assert watch.resumed == 1
    finally:
        client.close()
        other.close()


async def test_consume_goes_on_after_a_gateway_restart(make_gateway: GatewayFactory) -> None:
    port = free_port()
    gw = await make_gateway(grpc_port=port)
    client = Client(f"127.0.0.1:{port}", user_id=tenant(), stream_retry=PATIENT, retry=PATIENT)
    try:
        await client.create_stream("work", ["work.>"])
        await client.create_consumer("work", "w")
        await client.publish_to_stream("work.a", b"1", stream="work")
        async with client.consume("work", "w", ack_interval=0.01) as messages:
            msg = await asyncio.wait_for(anext(messages), 5)
            msg.ack()
            gw = await _restart(make_gateway, gw, port)
            await client.publish_to_stream("work.a", b"2", stream="work")
            again = await asyncio.wait_for(anext(messages), 15)
            assert (again.data, again.sequence) == (b"2", 2)
            again.ack()
        info = await client.consumer_info("work", "w")
        assert info.state is not None and info.state.ack_floor_seq == 2
    finally:
        client.close()


async def test_a_stream_that_cannot_be_made_again_raises(make_gateway: GatewayFactory) -> None:
    port = free_port()
    gw = await make_gateway(grpc_port=port)
    quick = Retry(attempts=3, first_delay=0.05, max_delay=0.1)
    client = Client(f"127.0.0.1:{port}", user_id=tenant(), stream_retry=quick)
    try:
        async with client.subscribe("gone.*") as sub:
            await gw.stop()
            with pytest.raises(Unavailable, match="could not be opened again"):
                await asyncio.wait_for(anext(sub), 10)
    finally:
        client.close()


async def test_unary_calls_are_repeated_by_idempotency_across_a_restart(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    gw = await make_gateway(grpc_port=port)
    client = Client(f"127.0.0.1:{port}", user_id=tenant(), retry=PATIENT)
    try:
        await client.kv_put("b", "k", b"v")
        await gw.stop()
        caplog.set_level(logging.INFO, logger="natsgw.client")
        reading = asyncio.ensure_future(client.kv_get("b", "k"))  # idempotent: retried
        await wait_for(lambda: "KVGet failed" in caplog.text or reading.done(), timeout=10)
        await make_gateway(grpc_port=port)
        entry = await asyncio.wait_for(reading, 20)
        assert entry is not None and entry.value == b"v"
    finally:
        client.close()


async def test_leaving_a_kv_watch_leaves_no_read_behind_on_the_gateway(
    gateway: Gateway,
) -> None:
    """The handler's pending read is cancelled with the call, not left to fail ~3 s later as
    "Task exception was never retrieved ... Unavailable('the reader was closed')"."""

    def orphans() -> list[asyncio.Task[object]]:
        return [
            t
            for t in asyncio.all_tasks()
            if not t.done() and "KVWatch.__anext__" in repr(t.get_coro())
        ]

    async with Client(f"127.0.0.1:{gateway.port}", user_id=tenant()) as client:
        await client.kv_put("w", "k", b"1")
        before = gateway.subscriptions.active
        for _ in range(3):
            async with client.kv_watch("w", "k") as watch:
                assert (await asyncio.wait_for(anext(watch), 5)).value == b"1"
                await wait_for(lambda: bool(orphans()))  # the handler waits for the next change
        await wait_for(lambda: gateway.subscriptions.active == before)
        # Without the fix each read lives on until its heartbeat timeout (3 s).
        await wait_for(lambda: not orphans(), timeout=1.5)


async def test_leaving_consume_releases_what_was_delivered_but_not_settled(
    gateway: Gateway,
) -> None:
    """`consume --count 2` of 5: messages 3-5 are nak'ed at once, not redelivered after
    ack_wait (30 s)."""
    async with Client(f"127.0.0.1:{gateway.port}", user_id=tenant()) as client:
        await client.create_stream("jobs", ["jobs.>"])
        await client.publish_to_stream_batch("jobs", [("jobs.a", b"%d" % i) for i in range(5)])
        await client.create_consumer("jobs", "w")
        async with client.consume("jobs", "w", max_messages=5) as messages:
            taken = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
            for msg in taken:
                msg.ack()
            await wait_for(lambda: messages.batcher.outstanding == 3)  # all 5 are here
            batcher = messages.batcher
        again = await client.pull("jobs", "w", 5, max_wait=2)
        assert [m.sequence for m in again] == [3, 4, 5]
        assert all(m.num_delivered == 2 for m in again)
        assert batcher.released == 3 and batcher.failed == 0
        await client.ack(*again)


async def test_a_call_in_flight_on_a_draining_gateway_still_gets_its_answer(
    make_gateway: GatewayFactory, nc: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """Another call refused by the draining gateway moves the client to a new connection; the
    old one stays open for the Request still running there, which is not idempotent (closing
    the connection under it would leave its outcome unknown)."""
    user, port = tenant(), free_port()
    gw = await make_gateway(grpc_port=port, shutdown_grace=10.0)
    client = Client(f"127.0.0.1:{port}", user_id=user, retry=PATIENT, stream_retry=PATIENT)
    asked, answer_now = asyncio.Event(), asyncio.Event()
    streams = contextlib.AsyncExitStack()

    async def slow_service(msg: Msg) -> None:
        asked.set()
        await answer_now.wait()
        await msg.respond(b"answered")

    service = await nc.subscribe(Namespace(Tenant.user(user)).subject("svc.slow"), cb=slow_service)
    await nc.flush()
    caplog.set_level(logging.INFO, logger="natsgw.client")
    stopping: asyncio.Future[None] | None = None
    refused: asyncio.Future[None] | None = None
    reading: list[asyncio.Future[Any]] = []
    try:
        subs = [  # streams the drain ends: they reopen, refused, all at once
            await streams.enter_async_context(client.subscribe(f"busy.{i}")) for i in range(4)
        ]
        in_flight = asyncio.ensure_future(client.request("svc.slow", b"q", timeout=15))
        await asyncio.wait_for(asked.wait(), 10)
        stopping = asyncio.ensure_future(gw.stop())  # waits for the Request (grace 10 s)
        await wait_for(lambda: gw.pipeline is not None and gw.pipeline.draining, timeout=5)
        reading = [asyncio.ensure_future(anext(sub)) for sub in subs]
        refused = asyncio.ensure_future(client.publish("other", b"x"))
        await wait_for(lambda: "shutting down; retry elsewhere" in caplog.text, timeout=10)
        await asyncio.sleep(1.5)  # a second and more of refused reopenings, every 50-250 ms
        answer_now.set()
        reply = await asyncio.wait_for(in_flight, 10)
        assert reply.data == b"answered"
    finally:
        answer_now.set()
        for waiting in reading:
            waiting.cancel()
        await streams.aclose()
        for task in (refused, stopping):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await service.unsubscribe()
        client.close()


async def test_unsubscribing_in_an_organization_leaves_my_own_stream_resumable(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The organization's Unsubscribe of a subject ends the organization's streams, not the
    caller's own one on the same subject: that one still rides out a restart instead of ending
    silently. And the client keeps no record of subjects once their streams are closed."""
    port, org, token = free_port(), tenant("org"), "tok-" + "r" * 30
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps({"tokens": [{"token": token, "user_id": tenant(), "organizations": [org]}]})
    )
    auth = {"auth_mode": AuthMode.TOKEN, "auth_tokens_file": tokens}
    gw = await make_gateway(grpc_port=port, **auth)
    client = Client(f"127.0.0.1:{port}", token=token, stream_retry=PATIENT)
    team = client.in_organization(org)
    try:
        for i in range(20):  # a service subscribing per session, for hours
            async with client.subscribe(f"session.{i}"):
                pass
            await client.unsubscribe(f"session.{i}")
        assert client._subscribed == {}
        async with client.subscribe("news.*") as sub:
            await team.unsubscribe("news.*")  # the organization's news.*, not mine
            reading = asyncio.ensure_future(anext(sub))
            await gw.stop()
            gw = await make_gateway(grpc_port=port, **auth)
            await wait_for(lambda: sub.resumed == 1 or reading.done(), timeout=15)
            assert not reading.done(), reading  # ended silently before the fix
            await client.publish("news.a", b"after")
            assert (await asyncio.wait_for(reading, 5)).data == b"after"
        assert client._subscribed == {}
    finally:
        team.close()
        client.close()


async def test_a_failed_stream_is_released_even_without_async_with(gateway: Gateway) -> None:
    """``async for`` over a watch whose bucket is deleted raises NotFound; the call is released
    then, not left on the connection until the client closes (grpclib keeps a stream's entry
    until its context is left)."""
    client = Client(f"127.0.0.1:{gateway.port}", user_id=tenant())
    try:
        await client.kv_put("doomed", "k", b"v")
        watch = client.kv_watch("doomed")
        assert (await asyncio.wait_for(anext(watch), 5)).value == b"v"
        await client.kv_delete_bucket("doomed")
        with pytest.raises(NotFound):
            async for _entry in watch:
                pass
        protocol = client._channel._protocol
        assert protocol is not None
        assert protocol.processor.streams == {}
    finally:
        client.close()


async def test_a_call_that_is_not_idempotent_is_sent_once(gateway: Gateway) -> None:
    """A Request nobody answers is UNAVAILABLE after it reached the gateway: repeating it could
    deliver it twice, so the client does not (the gateway counts one call), however patient
    its retry setting."""
    user = tenant()
    client = Client(f"127.0.0.1:{gateway.port}", user_id=user, retry=PATIENT)
    try:
        with pytest.raises(Unavailable, match="no responder"):
            await client.request("nobody.listens", b"q", timeout=1)
    finally:
        client.close()
    counted = gateway.metrics.tenants.find(Namespace(Tenant.user(user)).key)
    assert counted is not None and counted.calls == 1
