"""Red team, issue 17 row D (item 4) again: KVHistory and KVWatch of large values at once still
get the shared NATS connection cut as a slow consumer.

Found at main 0fa715b from outside (``python -m scripts.attack.redteam D-kvhistory-watch``):
20 concurrent KVHistory of one key with 5 revisions of 7 MiB, or 20 concurrent KVWatch of a
bucket holding 4 keys of 7 MiB, made nats-server log "Slow Consumer Detected: MaxPending of
67108864 Exceeded" 4 times; the gateway's connection was cut and re-made 4 times, and a quiet
tenant got 12 UNAVAILABLE, its worst call 5.0 s. The KVGet/ObjectGet reads are flow-controlled
(tests/integration/test_nats_backdoor.py); these two readers are not enough.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from natsgw._generated.isa import nats as pb
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from tests.conftest import tenant, wait_for
from tests.integration.test_nats_backdoor import Quiet, _adapter, _slow_consumers

MIB = 1024 * 1024
VALUE = b"h" * (7 * MIB)


async def _noisy_bucket(stub: pb.NatsServiceStub, keys: list[str]) -> str:
    noisy = tenant("noisy")
    await stub.kv_create_bucket(
        pb.KvCreateBucketRequest(user_id=noisy, bucket="hist", history=64), timeout=10.0
    )
    for key in keys:
        await stub.kv_put(
            pb.KvPutRequest(user_id=noisy, bucket="hist", key=key, value=VALUE), timeout=20.0
        )
    return noisy


async def _watch_current(stub: pb.NatsServiceStub, user: str, wanted: int) -> int:
    """Read a KVWatch of the whole bucket until its ``wanted`` current values arrived."""
    got = 0
    with contextlib.suppress(GRPCError, TimeoutError):
        async for _ in stub.kv_watch(
            pb.KvWatchRequest(user_id=user, bucket="hist", key=">"), timeout=20.0
        ):
            got += 1
            if got >= wanted:
                break
    return got


async def _attack(
    nats_server: EmbeddedNatsServer, gateway: Gateway, calls: Sequence[Awaitable[object]]
) -> tuple[Quiet, int, int, list[object]]:
    quiet_channel = Channel("127.0.0.1", gateway.port)  # the quiet tenant's own connection
    quiet = Quiet(pb.NatsServiceStub(quiet_channel))
    await quiet.prepare()
    adapter = _adapter(gateway)
    reconnects = adapter.state().reconnects
    slow = await _slow_consumers(nats_server)
    reader = asyncio.create_task(quiet.run())
    results = await asyncio.gather(*calls, return_exceptions=True)
    quiet.stop()
    await reader
    quiet_channel.close()
    return (
        quiet,
        await _slow_consumers(nats_server) - slow,
        adapter.state().reconnects - reconnects,
        list(results),
    )


async def test_concurrent_kv_history_of_large_values_never_cuts_the_shared_connection(
    nats_server: EmbeddedNatsServer, gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """Before (measured at 0fa715b, subprocess): 4 slow consumers, 4 reconnects, quiet tenant
    12 UNAVAILABLE and a 5 s worst call, 6 of 20 KVHistory DEADLINE_EXCEEDED."""
    noisy = await _noisy_bucket(stub, ["k"] * 5)
    calls = [
        stub.kv_history(pb.KvHistoryRequest(user_id=noisy, bucket="hist", key="k"), timeout=30.0)
        for _ in range(20)
    ]
    quiet, slow, reconnects, results = await _attack(nats_server, gateway, calls)
    assert slow == 0, f"{slow} slow-consumer disconnects of the shared connection"
    assert reconnects == 0
    assert not quiet.failures, quiet.failures[:5]
    assert quiet.worst < 5.0, f"quiet tenant's worst KVGet took {quiet.worst:.2f}s"
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]


async def test_concurrent_kv_watch_of_large_values_never_cuts_the_shared_connection(
    nats_server: EmbeddedNatsServer, gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """Before (measured at 0fa715b, subprocess): 4 slow consumers, 4 reconnects, none of the
    20 watches received its bucket's 4 current values within 30 s."""
    keys = ["w0", "w1", "w2", "w3"]
    noisy = await _noisy_bucket(stub, keys)
    calls = [_watch_current(stub, noisy, len(keys)) for _ in range(20)]
    quiet, slow, reconnects, results = await _attack(nats_server, gateway, calls)
    assert slow == 0, f"{slow} slow-consumer disconnects of the shared connection"
    assert reconnects == 0
    assert not quiet.failures, quiet.failures[:5]
    assert quiet.worst < 5.0, f"quiet tenant's worst KVGet took {quiet.worst:.2f}s"
    assert results == [len(keys)] * 20


async def _never_reading_subscribers(
    port: int, user: str, subjects: list[str]
) -> asyncio.StreamWriter:
    """One HTTP/2 connection with a Subscribe stream per subject, whose answers are never read."""
    import h2.config
    import h2.connection

    from tests.integration._raw_h2 import grpc_prefix

    _, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.increment_flow_control_window(2**30)
    for subject in subjects:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"), (":scheme", "http"),
                (":path", "/isa.nats.NATSService/Subscribe"), (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"), ("te", "trailers"),
            ],
        )  # fmt: skip
        body = bytes(pb.SubscribeRequest(user_id=user, subject=subject))
        conn.send_data(sid, grpc_prefix(len(body)) + body, end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    return writer


async def test_one_tenants_large_publishes_to_its_own_subscribers_cost_nobody_else_messages(
    nats_server: EmbeddedNatsServer, gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """Found at 0fa715b (``scripts.attack.redteam D-subscribe-fanout``, subprocess): a tenant
    with 20 Subscribe streams it never reads (4 connections) plus 2 slow ones, publishing 8 MiB
    messages to them from 4 connections for 25 s, got the shared *deliveries* connection cut as
    a slow consumer 11 times; another tenant's Subscribe, fed one small message every 20 ms,
    lost 102 of 183."""
    noisy, other = tenant("noisy"), tenant("other")
    writers = [
        await _never_reading_subscribers(gateway.port, noisy, ["fan.0", "fan.1"] * 3)
        for _ in range(3)
    ]
    slow = await _slow_consumers(nats_server)
    adapter = _adapter(gateway)
    reconnects = adapter.state().reconnects
    got: list[int] = []
    other_channel = Channel("127.0.0.1", gateway.port)
    other_stub = pb.NatsServiceStub(other_channel)

    async def other_subscribes() -> None:
        with contextlib.suppress(GRPCError, TimeoutError):
            async for message in other_stub.subscribe(
                pb.SubscribeRequest(user_id=other, subject="mine"), timeout=30.0
            ):
                got.append(int(message.data))

    reading = asyncio.create_task(other_subscribes())
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    end = loop.time() + 8.0
    sent = 0

    async def other_publishes() -> None:
        nonlocal sent
        while loop.time() < end:
            await other_stub.publish(
                pb.PublishRequest(user_id=other, subject="mine", data=str(sent).encode()),
                timeout=10.0,
            )
            sent += 1
            await asyncio.sleep(0.02)

    async def noisy_publishes(k: int) -> None:
        channel = Channel("127.0.0.1", gateway.port)
        noisy_stub = pb.NatsServiceStub(channel)
        data = b"f" * (8 * MIB - 4096)
        while loop.time() < end:
            await noisy_stub.publish(
                pb.PublishRequest(user_id=noisy, subject=f"fan.{k % 2}", data=data), timeout=10.0
            )
        channel.close()

    await asyncio.gather(other_publishes(), *(noisy_publishes(k) for k in range(4)))
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: len(got) >= sent, timeout=3.0)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    other_channel.close()
    for writer in writers:
        writer.transport.abort()
    cut = await _slow_consumers(nats_server) - slow
    lost = sent - len(set(got))
    print(f"\nD fan-out: {cut} slow consumers, other tenant lost {lost} of {sent}")
    assert cut == 0, f"{cut} slow-consumer disconnects of the deliveries connection"
    assert adapter.state().reconnects == reconnects
    assert lost == 0, f"the other tenant's subscription lost {lost} of {sent} messages"
