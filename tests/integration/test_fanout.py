"""Issue 9.3: identical subscriptions share one NATS subscription; a tenant's streams are capped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import GatewayFactory, tenant
from tests.integration.test_messaging import mapped, open_subscription, subsz
from tests.integration.test_metrics import scrape

NOISY = Path(__file__).with_name("_noisy_tenant.py")
ROOT = Path(__file__).resolve().parents[2]


async def test_identical_subscriptions_share_one_nats_subscription(
    stub: pb.NatsServiceStub, nats_server: EmbeddedNatsServer
) -> None:
    user = tenant()
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="news.*"))
            )
            for _ in range(5)
        ]
        assert await subsz(nats_server, mapped(user, "news.*")) == 1
        await stub.publish(pb.PublishRequest(user_id=user, subject="news.a", data=b"one"))
        for s in streams:  # every stream gets every message
            got = await asyncio.wait_for(s.recv_message(), 5)
            assert (got.subject, got.data, got.sequence) == ("news.a", b"one", 1)
    for _ in range(50):  # the last one out unsubscribes
        if await subsz(nats_server, mapped(user, "news.*")) == 0:
            break
        await asyncio.sleep(0.05)
    assert await subsz(nats_server, mapped(user, "news.*")) == 0


async def test_queue_group_is_one_interest_and_each_message_goes_to_one_member(
    stub: pb.NatsServiceStub, nats_server: EmbeddedNatsServer
) -> None:
    user = tenant()
    async with contextlib.AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(
                open_subscription(
                    stub, pb.QueueSubscribeRequest(user_id=user, subject="jobs", queue_group="w")
                )
            )
            for _ in range(4)
        ]
        # A plain subscriber and another group on the same subject are other interests.
        plain = await stack.enter_async_context(
            open_subscription(stub, pb.SubscribeRequest(user_id=user, subject="jobs"))
        )
        await stack.enter_async_context(
            open_subscription(
                stub, pb.QueueSubscribeRequest(user_id=user, subject="jobs", queue_group="other")
            )
        )
        assert await subsz(nats_server, mapped(user, "jobs")) == 3
        await stub.publish_batch(
            pb.PublishBatchRequest(
                user_id=user,
                messages=[pb.NatsMessage(subject="jobs", data=b"%d" % i) for i in range(40)],
            )
        )
        seen: Counter[bytes] = Counter()
        per_member = []

        async def drain(s: object, into: list[bytes]) -> None:
            with contextlib.suppress(TimeoutError):
                while True:
                    got = await asyncio.wait_for(s.recv_message(), 0.5)  # type: ignore[attr-defined]
                    into.append(got.data)

        for s in members:
            got: list[bytes] = []
            await drain(s, got)
            per_member.append(len(got))
            seen.update(got)
        everything: list[bytes] = []
        await drain(plain, everything)
    assert sorted(seen) == sorted(b"%d" % i for i in range(40))
    assert set(seen.values()) == {1}  # each job went to exactly one member of group "w"
    assert sum(1 for n in per_member if n) > 1  # ... and the group shared the work
    assert len(everything) == 40  # the plain subscriber saw all of them


async def test_streams_per_tenant_are_capped_naming_the_setting(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(quota_streaming_calls=3, http_port=0)
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    noisy, quiet = tenant(), tenant()
    try:
        async with contextlib.AsyncExitStack() as stack:
            held = [
                await stack.enter_async_context(
                    open_subscription(stub, pb.SubscribeRequest(user_id=noisy, subject=f"s{i}"))
                )
                for i in range(3)
            ]
            for request in (
                pb.SubscribeRequest(user_id=noisy, subject="more"),
                pb.KvWatchRequest(user_id=noisy, bucket="b"),
            ):
                with pytest.raises(GRPCError) as info:
                    call = (
                        stub.subscribe(request)
                        if isinstance(request, pb.SubscribeRequest)
                        else stub.kv_watch(request)
                    )
                    async for _ in call:
                        pass
                assert info.value.status is Status.RESOURCE_EXHAUSTED
                assert "NATSGW_QUOTA_STREAMING_CALLS" in (info.value.message or "")
            # Another tenant is not affected.
            async with open_subscription(stub, pb.SubscribeRequest(user_id=quiet, subject="x")):
                pass
            await held[0].cancel()
            for _ in range(50):
                if gw.subscriptions.open_streams(Namespace(Tenant.user(noisy)).key) < 3:
                    break
                await asyncio.sleep(0.02)
            async with open_subscription(stub, pb.SubscribeRequest(user_id=noisy, subject="again")):
                samples = await scrape(gw.http_port)
    finally:
        channel.close()
    # Counted: the two refusals, and the NATS subscriptions behind the open streams (s1, s2,
    # again: one each; the cancelled s0 is gone).
    assert samples[("natsgw_streaming_calls_refused_total", ())] == 2
    assert samples[("natsgw_subscription_nats_subscriptions", ())] == 3


async def _slow_consumers(server: EmbeddedNatsServer) -> int:
    """How often nats-server has cut a client as a slow consumer (monitoring /varz)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.monitor_url}/varz") as resp,
    ):
        return int((await resp.json()).get("slow_consumers", 0))


async def test_noisy_tenant_beside_a_quiet_one(
    make_gateway: GatewayFactory, nats_server: EmbeddedNatsServer
) -> None:
    """60 streams on one subject fed 2 MiB messages as fast as the gateway takes them, beside a
    tenant publishing and subscribing small messages: the quiet one loses nothing and no call of
    its fails, and nats-server never cuts the gateway as a slow consumer. Prints the figures."""
    gw = await make_gateway()
    noisy, quiet = tenant("noisy"), tenant("quiet")
    slow_before = await _slow_consumers(nats_server)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(NOISY),
        str(gw.port),
        noisy,
        "6",
        "60",
        str(2 * 1024 * 1024),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
    channel = Channel("127.0.0.1", gw.port)
    reader_channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    sent = 0
    failures: list[str] = []
    latencies: list[float] = []
    got: list[pb.MessageResponse] = []
    try:
        async with open_subscription(
            pb.NatsServiceStub(reader_channel), pb.SubscribeRequest(user_id=quiet, subject="calm")
        ) as s:

            async def read() -> None:
                while (message := await s.recv_message()) is not None:
                    got.append(message)

            reading = asyncio.ensure_future(read())
            loop = asyncio.get_running_loop()
            report = asyncio.ensure_future(proc.stdout.readline())
            while not report.done():
                started = loop.time()
                try:
                    await stub.publish(
                        pb.PublishRequest(user_id=quiet, subject="calm", data=b"%d" % sent),
                        timeout=5,
                    )
                    sent += 1
                    latencies.append(loop.time() - started)
                except (GRPCError, TimeoutError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.02)
            for _ in range(250):
                if len(got) >= sent:
                    break
                await asyncio.sleep(0.02)
            reading.cancel()
            noisy_report = json.loads(report.result())
    finally:
        channel.close()
        reader_channel.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    slow_after = await _slow_consumers(nats_server)
    latencies.sort()
    print(
        f"\nnoisy: {noisy_report}\n"
        f"quiet: published {sent}, received {len(got)}, failed calls {len(failures)}, "
        f"publish latency p50 {latencies[len(latencies) // 2] * 1000:.1f} ms / p99 "
        f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms / max {latencies[-1] * 1000:.1f} "
        f"ms; nats-server slow consumers {slow_before} -> {slow_after}; gateway NATS "
        f"reconnects {gw.adapter.state().reconnects if gw.adapter else '?'}"
    )
    assert noisy_report["published"] > 0 and noisy_report["received_max"] > 0  # it was noisy
    assert failures == []
    assert [m.data for m in got] == [b"%d" % i for i in range(sent)]
    assert [m.sequence for m in got] == list(range(1, sent + 1))
    assert all(m.dropped == 0 for m in got)
    assert slow_after == slow_before
