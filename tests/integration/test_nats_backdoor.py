"""Issue 17 rows B and D, items 4 and 5: no tenant can cut the gateway's shared NATS connection,
and a closed connection always comes back (with /healthz failing while it cannot).

Each test drives the attack against a real nats-server and looks at what a quiet tenant sees,
at nats-server's own slow-consumer count (/varz) and at the adapter's reconnect counters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.adapter.types import Message
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from tests.conftest import GatewayFactory, NatsFactory, restart_node, tenant, wait_for
from tests.integration._jetstream import make_consumer, make_stream

MIB = 1024 * 1024


async def _get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(await response.json())


async def _slow_consumers(server: EmbeddedNatsServer) -> int:
    _, varz = await _get_json(f"{server.monitor_url}/varz")
    return int(varz.get("slow_consumers", 0))


def _adapter(gw: Gateway) -> NatsAdapter:
    assert gw.adapter is not None
    return gw.adapter


class Quiet:
    """A tenant reading one small key over and over: its latencies and failures."""

    def __init__(self, stub: pb.NatsServiceStub) -> None:
        self.stub = stub
        self.user = tenant("quiet")
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def prepare(self) -> None:
        await self.stub.kv_put(pb.KvPutRequest(user_id=self.user, bucket="q", key="k", value=b"1"))

    async def once(self, timeout: float = 5.0) -> bool:
        try:
            got = await self.stub.kv_get(
                pb.KvGetRequest(user_id=self.user, bucket="q", key="k"), timeout=timeout
            )
        except (GRPCError, TimeoutError) as exc:
            self.failures.append(type(exc).__name__)
            return False
        return got.found

    async def run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            await self.once(timeout=8.0)
            self.latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


async def test_publish_of_exactly_max_payload_is_refused_and_the_connection_stays(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    """Row B: the added Nats-Expected-Stream header made an exact-max_payload message 49 bytes
    too large for nats-server, which closed the shared connection for every tenant, for good.
    Before: UNAVAILABLE for the quiet tenant from then on. After: RESOURCE_EXHAUSTED for the
    caller only, nothing cut."""
    limit = 64 * 1024
    server = await make_nats(max_payload=limit)
    gw = await make_gateway(server, max_message_size=limit)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        quiet = Quiet(stub)
        await quiet.prepare()
        noisy = tenant("noisy")
        await make_stream(stub, noisy, "s", ["s.>"])
        with pytest.raises(GRPCError) as info:
            await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=noisy, stream_name="s", subject="s.a", data=b"x" * limit
                ),
                timeout=5.0,
            )
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        assert "max_payload" in (info.value.message or "")
        # The same with a header of the caller's, one byte below the limit.
        with pytest.raises(GRPCError) as info:
            await stub.publish_to_stream(
                pb.PublishToStreamRequest(
                    user_id=noisy,
                    stream_name="s",
                    subject="s.a",
                    data=b"x" * (limit - 1),
                    headers={"X-Trace": "1"},
                ),
                timeout=5.0,
            )
        assert info.value.status is Status.RESOURCE_EXHAUSTED
        for _ in range(20):
            assert await quiet.once(), quiet.failures
        adapter = _adapter(gw)
        assert adapter.state().reconnects == 0
        assert getattr(adapter, "replacements", 0) == 0
    finally:
        channel.close()


async def test_a_connection_closed_by_the_server_comes_back(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    """Item 5: a server -ERR closes a nats-py client for good. Whatever the cause (here: a
    command beyond max_payload sent straight to the socket), both connections come back, with
    the request inbox (KV calls answer) and core subscriptions (deliveries flow again)."""
    server = await make_nats(max_payload=64 * 1024)
    gw = await make_gateway(server)
    adapter = _adapter(gw)
    channel = Channel("127.0.0.1", gw.port)
    try:
        stub = pb.NatsServiceStub(channel)
        quiet = Quiet(stub)
        await quiet.prepare()
        got: list[Message] = []
        sub = await adapter.subscribe(
            "backdoor.deliveries",
            got.append,
            on_overflow=lambda: None,
            pending_msgs=100,
            pending_bytes=MIB,
        )
        for nc in (adapter.client(), adapter._deliveries):
            assert nc is not None
            nc._transport.write(b"PUB x 99999999\r\n")
        start = time.monotonic()
        await wait_for(lambda: not adapter.connected, timeout=5.0)
        deadline = time.monotonic() + 15.0
        while not await quiet.once(timeout=2.0):
            assert time.monotonic() < deadline, "the closed connection never came back"
            await asyncio.sleep(0.1)
        back_after = time.monotonic() - start
        await adapter.publish("backdoor.deliveries", b"again")
        await wait_for(lambda: any(m.data == b"again" for m in got), timeout=10.0)
        assert getattr(adapter, "replacements", 0) >= 1
        assert back_after < 15.0
        await sub.unsubscribe()
    finally:
        channel.close()


async def test_healthz_fails_only_after_a_long_outage_and_recovers(
    make_nats: NatsFactory, make_gateway: GatewayFactory
) -> None:
    """Item 5: /readyz is 503 as soon as NATS is down; /healthz only once it has been down for
    NATSGW_NATS_DOWN_UNHEALTHY_AFTER (so a liveness probe restarts a gateway that cannot get
    back), with the reason; both 200 again once NATS is back."""
    server = await make_nats()
    gw = await make_gateway(server, http_port=0, nats_down_unhealthy_after=1.0)
    base = f"http://127.0.0.1:{gw.http_port}"
    assert (await _get_json(f"{base}/healthz"))[0] == 200
    await server.stop()
    await wait_for(lambda: not _adapter(gw).connected, timeout=5.0)
    status, body = await _get_json(f"{base}/readyz")
    assert status == 503
    assert (await _get_json(f"{base}/healthz"))[0] == 200  # not yet: a blip is no reason
    deadline = time.monotonic() + 10.0
    while (answer := await _get_json(f"{base}/healthz"))[0] == 200:
        assert time.monotonic() < deadline, "/healthz never failed while NATS was down"
        await asyncio.sleep(0.1)
    status, body = answer
    assert status == 503
    assert "NATS" in body["reason"] and "NATSGW_NATS_DOWN_UNHEALTHY_AFTER" in body["reason"]
    await restart_node(server)
    deadline = time.monotonic() + 20.0
    while (await _get_json(f"{base}/healthz"))[0] != 200:
        assert time.monotonic() < deadline, "/healthz stayed 503 after NATS came back"
        await asyncio.sleep(0.1)
    await wait_for(lambda: _adapter(gw).connected, timeout=10.0)


async def test_large_reads_at_once_never_cut_the_shared_connection(
    nats_server: EmbeddedNatsServer, gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """Row D: 12 KVGet and 12 ObjectGet of 8 MiB at once got the shared connection cut as a
    slow consumer (nats-server queued 192 MiB towards the gateway); every call in flight, the
    quiet tenant's too, then waited out its deadline. Before (measured): 1 slow consumer,
    21 of 24 calls DEADLINE_EXCEEDED, the quiet tenant's worst call 10 s. After: none cut,
    every call answered, the quiet tenant's worst call within a generous bound."""
    quiet_channel = Channel("127.0.0.1", gateway.port)  # the quiet tenant's own connection
    quiet = Quiet(pb.NatsServiceStub(quiet_channel))
    await quiet.prepare()
    noisy = tenant("noisy")
    value = b"v" * (8 * MIB)
    await stub.kv_put(pb.KvPutRequest(user_id=noisy, bucket="big", key="k", value=value))
    await stub.object_put(
        pb.ObjectPutRequest(user_id=noisy, bucket="big", object_name="o", data=value)
    )
    adapter = _adapter(gateway)
    reconnects = adapter.state().reconnects
    slow = await _slow_consumers(nats_server)
    reader = asyncio.create_task(quiet.run())
    await asyncio.sleep(0.1)
    calls = [
        stub.kv_get(pb.KvGetRequest(user_id=noisy, bucket="big", key="k"), timeout=10.0)
        for _ in range(12)
    ] + [
        stub.object_get(
            pb.ObjectGetRequest(user_id=noisy, bucket="big", object_name="o"), timeout=10.0
        )
        for _ in range(12)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    quiet.stop()
    await reader
    quiet_channel.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    assert await _slow_consumers(nats_server) == slow
    assert adapter.state().reconnects == reconnects
    assert not quiet.failures
    assert quiet.worst < 5.0, f"quiet tenant's worst KVGet took {quiet.worst:.2f}s"
    inflow = getattr(adapter, "inflow", None)
    assert inflow is not None and inflow.peak <= inflow.capacity + 8 * MIB


async def test_consume_max_bytes_has_an_upper_bound(stub: pb.NatsServiceStub) -> None:
    """Row D: Consume with max_bytes=2**40 pulled without bound; now INVALID_ARGUMENT naming
    the field and the setting."""
    user = tenant()
    await make_stream(stub, user, "cb", ["cb"])
    await make_consumer(stub, user, "cb", "c")
    with pytest.raises(GRPCError) as info:
        async for _ in stub.consume(
            pb.ConsumeRequest(user_id=user, stream_name="cb", consumer_name="c", max_bytes=2**40),
            timeout=5.0,
        ):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT
    message = info.value.message or ""
    assert "max_bytes" in message and "NATSGW_CONSUME_MAX_BYTES" in message
