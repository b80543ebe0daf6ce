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
    cut = await _slow_consumers(nats_server) - slow
    print(
        f"\nD: {cut} slow consumers, {adapter.state().reconnects - reconnects} reconnects, "
        f"quiet tenant {len(quiet.failures)} failures, worst {quiet.worst:.2f}s"
    )
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


async def test_an_idle_kv_watch_of_large_values_soon_holds_none_of_the_read_budget(
    gateway: Gateway, stub: pb.NatsServiceStub
) -> None:
    """A watch past its backlog reserves one message at a time, for at most the pull lease's
    hold: 10 watchers waiting for news must not keep the connection's inflow (32 MiB) full."""
    keys = ["w0", "w1"]
    noisy = await _noisy_bucket(stub, keys)
    inflow = _adapter(gateway).inflow
    read = [0] * 10
    caught_up = asyncio.Event()

    async def watch(n: int) -> None:
        with contextlib.suppress(GRPCError, TimeoutError):
            async for _ in stub.kv_watch(
                pb.KvWatchRequest(user_id=noisy, bucket="hist", key=">"), timeout=20.0
            ):
                read[n] += 1
                if sum(read) == 10 * len(keys):
                    caught_up.set()

    watches = [asyncio.create_task(watch(n)) for n in range(10)]
    await asyncio.wait_for(caught_up.wait(), 15.0)
    await wait_for(lambda: inflow.used == 0, timeout=3.0)
    assert read == [len(keys)] * 10
    # Live updates still arrive, each reserved for a moment.
    await stub.kv_put(
        pb.KvPutRequest(user_id=noisy, bucket="hist", key="w0", value=VALUE), timeout=20.0
    )
    await wait_for(lambda: read == [len(keys) + 1] * 10, timeout=10.0)
    await wait_for(lambda: inflow.used == 0, timeout=3.0)
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
