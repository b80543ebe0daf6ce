"""NatsAdapter.publish_many: header-less messages are queued as ready-made commands
(natsgw.compat.nats.PubCommands); the bytes on the wire and what subscribers receive must be
what nats-py's own ``publish`` sends, in the batch's order, with refused items reported."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats import errors as nats_errors

from natsgw.adapter import NatsAdapter
from natsgw.adapter.core import Outgoing
from natsgw.compat.nats import PubCommands
from natsgw.errors import InvalidArgument, ResourceExhausted
from natsgw.ops.embedded import EmbeddedNatsServer
from tests.conftest import record_writes


def _record(adapter: NatsAdapter) -> list[bytes]:
    return record_writes(adapter._nc._transport)  # type: ignore[union-attr]


def _commands(writes: list[bytes]) -> bytes:
    """The PUB/HPUB commands of the recorded writes (PING/PONG left out)."""
    return b"".join(writes).replace(b"PING\r\n", b"").replace(b"PONG\r\n", b"")


def _batch(prefix: str) -> list[Outgoing]:
    return [
        (0, f"{prefix}.a", b"one", {}, ""),
        (1, f"{prefix}.a", b"two", {}, f"{prefix}.reply"),
        (2, f"{prefix}.b", b"three", {"K": "v"}, ""),  # headers: through nc.publish
        (3, f"{prefix}.b", b"", {}, ""),
        (4, f"{prefix}.bad subject", b"x", {}, ""),  # nats-py refuses it: so must we
        (5, f"{prefix}.a", b"x" * 64, {}, ""),
        (6, f"{prefix}.a", b"six", {"bad key": "v"}, ""),
        (7, f"{prefix}.a", b"seven", {}, ""),
    ]


async def test_same_bytes_as_nats_py_publish_in_order(
    adapter: NatsAdapter, nats_server: EmbeddedNatsServer
) -> None:
    sub_client = await nats.connect(nats_server.url)
    received: list[tuple[str, bytes, str, dict[str, str] | None]] = []

    async def on_message(msg: Any) -> None:
        received.append((msg.subject, msg.data, msg.reply, msg.headers))

    sub = await sub_client.subscribe("many.>", cb=on_message)
    await sub_client.flush()
    nc: Any = adapter._nc

    writes = _record(adapter)
    for _, subject, data, headers, reply in _batch("many.one"):
        if " " in subject or "bad key" in headers:
            continue  # what nats-py would refuse
        await nc.publish(subject, data, reply=reply, headers=dict(headers) if headers else None)
    await adapter.confirm()
    one_by_one = _commands(writes)

    writes.clear()
    failed = await adapter.publish_many(_batch("many.two"), yield_every=2)
    await adapter.confirm()
    batched = _commands(writes)

    assert batched == one_by_one.replace(b"many.one.", b"many.two.")
    assert [position for position, _ in failed] == [4, 6]
    assert isinstance(failed[0][1], InvalidArgument)
    assert isinstance(failed[1][1], InvalidArgument)

    await sub_client.flush()
    for _ in range(50):
        if len(received) == 12:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    await sub_client.close()
    two = [r for r in received if r[0].startswith("many.two.")]
    assert [(s, d, r) for s, d, r, _ in two] == [
        ("many.two.a", b"one", ""),
        ("many.two.a", b"two", "many.two.reply"),
        ("many.two.b", b"three", ""),
        ("many.two.b", b"", ""),
        ("many.two.a", b"x" * 64, ""),
        ("many.two.a", b"seven", ""),
    ]
    assert two[2][3] == {"K": "v"}


async def test_oversized_message_is_refused_and_not_sent(adapter: NatsAdapter) -> None:
    nc: Any = adapter._nc
    big = b"x" * (nc.max_payload + 1)
    writes = _record(adapter)
    items: list[Outgoing] = [(i, "many.big", big if i == 1 else b"ok", {}, "") for i in range(3)]
    failed = await adapter.publish_many(items)
    await adapter.confirm()
    assert [p for p, _ in failed] == [1]
    assert isinstance(failed[0][1], ResourceExhausted)
    assert _commands(writes).count(b"PUB many.big ") == 2
    assert nc.stats["out_msgs"] >= 2


async def test_commands_on_a_closed_connection_raise_what_publish_raises(
    nats_server: EmbeddedNatsServer,
) -> None:
    """Nothing is queued; publish_many then reports every message of the slice as failed."""
    nc = await nats.connect(nats_server.url)
    await nc.close()
    commands = PubCommands(nc)
    commands.add("many.closed", "", b"x")
    with pytest.raises(nats_errors.ConnectionClosedError):
        await nc.publish("many.closed", b"x")
    with pytest.raises(nats_errors.ConnectionClosedError):
        await commands.send()
    assert commands.count == 0
    with pytest.raises(nats_errors.BadSubjectError):
        commands.add("many.bad\r\nPUB x", "", b"x")
    with pytest.raises(nats_errors.BadSubjectError):
        commands.add("many.ok", "re ply", b"x")
