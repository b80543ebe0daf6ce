"""What the adapter writes to the socket, in order: a confirmation must follow what it confirms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from natsgw.adapter import Message, NatsAdapter
from natsgw.adapter.core import _settle
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import record_writes


@pytest_asyncio.fixture
async def recorded(
    nats_server: EmbeddedNatsServer,
) -> AsyncIterator[tuple[NatsAdapter, list[bytes]]]:
    async for pair in _recording(nats_server, "_nc"):
        yield pair


@pytest_asyncio.fixture
async def recorded_deliveries(
    nats_server: EmbeddedNatsServer,
) -> AsyncIterator[tuple[NatsAdapter, list[bytes]]]:
    """The same, on the connection that carries subscriptions."""
    async for pair in _recording(nats_server, "_deliveries"):
        yield pair


async def _recording(
    nats_server: EmbeddedNatsServer, connection: str
) -> AsyncIterator[tuple[NatsAdapter, list[bytes]]]:
    adapter = NatsAdapter([nats_server.url])
    await adapter.start(wait=5)
    writes = record_writes(getattr(adapter, connection)._transport)
    yield adapter, writes
    await adapter.close()


def first_index(writes: list[bytes], prefix: bytes) -> int:
    return next(i for i, w in enumerate(writes) if w.startswith(prefix))


async def test_settle_puts_its_ping_behind_commands_still_queued(
    recorded: tuple[NatsAdapter, list[bytes]],
) -> None:
    """The race the confirmation closes, made certain: the PUB is still in nats-py's queue
    (nothing yielded to its flusher) when the confirmation starts."""
    adapter, writes = recorded
    nc: Any = adapter._nc
    await nc.publish("ordering.queued", b"x")
    await _settle(nc, 5.0)
    assert first_index(writes, b"PUB ordering.queued") < first_index(writes, b"PING")


async def test_subscription_is_on_the_wire_before_it_is_announced(
    recorded_deliveries: tuple[NatsAdapter, list[bytes]],
) -> None:
    adapter, writes = recorded_deliveries
    received: list[Message] = []
    sub = await adapter.subscribe(
        "ordering.sub",
        received.append,
        on_overflow=lambda: None,
        pending_msgs=10,
        pending_bytes=1000,
    )
    assert first_index(writes, b"SUB ordering.sub") < first_index(writes, b"PING")
    await sub.unsubscribe()


async def test_pipelined_confirmations_each_follow_a_ping_behind_their_publish(
    recorded: tuple[NatsAdapter, list[bytes]],
) -> None:
    """Confirmations of concurrent publishes overlap (the next PING does not wait for the last
    PONG), yet none returns before a PING written after its own PUB was answered."""
    adapter, writes = recorded

    async def publish(i: int) -> None:
        await adapter.publish(f"ordering.confirm.{i}", b"x")
        pub = first_index(writes, f"PUB ordering.confirm.{i} ".encode())
        pings = [n for n, w in enumerate(writes) if b"PING" in w]
        assert pings and pings[-1] > pub, f"publish {i} confirmed before a PING followed it"

    await asyncio.gather(*(publish(i) for i in range(50)))
