"""Red team, issue 17 row E again: a client that never reads AND never opens its stream windows
still pins every answer, after the edge merge.

Found at main f7291b4 from outside (``python -m scripts.attack.redteam E-unread-objectget``,
gateway subprocess, token mode): 3 connections x 20 ObjectGet of an 8 MiB object, the client
keeping HTTP/2's default 64 KiB stream windows and never reading: gateway RSS 56 -> 1,053 MiB,
still 1,053 MiB 11 s after the client closed its connections (40 connections x 2:
56 -> 1,384 MiB, the same after close); no GOAWAY, nothing in the log. The edge's test
(test_edge.py::test_unread_answers_are_cut_and_dropped) gives the client huge windows, so the
answers reach the transport buffer, where the outbound budget and the write-stall timeout see
them; with small windows they wait inside the handlers (flow control), which nothing bounds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc

from grpclib.client import Channel

from natsgw._generated.isa import nats as pb
from scripts.attack import h2raw
from tests.conftest import GatewayFactory, tenant
from tests.integration.test_edge import edge, quiet_tenant, read_slowly

MIB = 1024 * 1024
#: The edge's close reason for answers waiting on a window that does not grow.
STALL = "flow_control_stall"


async def test_unread_answers_behind_small_windows_are_cut_and_dropped(
    make_gateway: GatewayFactory,
) -> None:
    """Before (measured at f7291b4): the connection is never cut, and what the answers held is
    still held after the client is gone."""
    gw = await make_gateway(**edge(edge_write_stall_timeout=1.0))
    user = tenant("mallory")
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    await stub.object_put(
        pb.ObjectPutRequest(user_id=user, bucket="big", object_name="o", data=os.urandom(8 * MIB))
    )
    channel.close()
    body = bytes(pb.ObjectGetRequest(user_id=user, bucket="big", object_name="o"))
    gc.collect()
    tracemalloc.start()
    try:
        async with quiet_tenant(gw.port) as latencies:
            client = h2raw.Client(gw.port, big_windows=False)  # HTTP/2's default windows
            for _ in range(12):
                client.open_request("/isa.nats.NATSService/ObjectGet", body)
            client.flush()
            began = time.monotonic()
            cut_after: float | None = None
            while (elapsed := time.monotonic() - began) < 4.0:  # never reading, past the stall
                if cut_after is None and gw.edge is not None and gw.edge.closed[STALL]:
                    cut_after = elapsed
                await asyncio.sleep(0.05)
            held_open, _ = tracemalloc.get_traced_memory()
            closed = await asyncio.to_thread(client.wait_closed, 2.0)  # reads: EOF if cut
        client.close()
        await asyncio.sleep(1.0)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\nunread answers, small windows: cut after {cut_after and round(cut_after, 2)} s "
        f"(stall timeout 1 s); "
        f"closed by the gateway {closed}; traced while open "
        f"{held_open / MIB:.0f} MiB, after close {held / MIB:.0f} MiB (peak {peak / MIB:.0f}); "
        f"quiet tenant max {max(latencies) * 1000:.0f} ms"
    )
    assert held < 24 * MIB, f"{held / MIB:.0f} MiB still held after the client went away"
    assert closed, "a connection whose answers wait for a window that never opens stays open"


async def test_streams_starved_beside_one_read_slowly_get_the_connection_cut(
    make_gateway: GatewayFactory,
) -> None:
    """The same client reading one answer slowly (so bytes go out on the connection) while it
    never gives back the window of four others: those four still pin their answers, so the
    stall is judged per stream, not by the connection's progress. Before: never cut."""
    gw = await make_gateway(**edge(edge_write_stall_timeout=1.0))
    assert gw.edge is not None
    user = tenant("mallory")
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    await stub.object_put(
        pb.ObjectPutRequest(user_id=user, bucket="big", object_name="o", data=os.urandom(8 * MIB))
    )
    channel.close()
    body = bytes(pb.ObjectGetRequest(user_id=user, bucket="big", object_name="o"))
    client = h2raw.Client(gw.port, big_windows=False)
    try:
        read = client.open_request("/isa.nats.NATSService/ObjectGet", body)
        for _ in range(4):
            client.open_request("/isa.nats.NATSService/ObjectGet", body)
        client.flush()
        client.ack_only = {read}
        await asyncio.to_thread(read_slowly, client, 4.0)
        print(
            f"\none stream read slowly, four starved: read {client.received / 1024:.0f} KiB, "
            f"cut {client.closed}"
        )
        assert client.closed, "streams starved beside one that is read keep their answers"
        assert gw.edge.closed[STALL] == 1
    finally:
        client.close()
