"""ConsumeSession groups deliveries that are already waiting into bursts (one write each)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from natsgw.adapter.types import JetStreamDelivery, PullOutcome
from natsgw.service.consume import BURST, Burst, ConsumeSession
from natsgw.service.deliveries import FlowWindow

_WHEN = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)


def _delivery(seq: int, size: int = 10) -> JetStreamDelivery:
    return JetStreamDelivery(
        subject="s",
        data=b"x" * size,
        headers={},
        reply=f"$JS.ACK.S.C.1.{seq}.{seq}.1.0",
        stream="S",
        consumer="C",
        stream_seq=seq,
        consumer_seq=seq,
        num_delivered=1,
        num_pending=0,
        timestamp=_WHEN,
        nats_size=size + 20,
    )


class _Pipe:
    """A pull inbox holding what NATS already sent; nothing more ever arrives."""

    def __init__(self, waiting: list[PullOutcome]) -> None:
        self.waiting = list(waiting)
        self.requested: list[int] = []

    async def request(self, batch: int, **_: object) -> None:
        self.requested.append(batch)

    async def next(self, timeout: float) -> PullOutcome | None:
        if self.waiting:
            return self.waiting.pop(0)
        await asyncio.sleep(min(max(timeout, 0.0), 0.01))
        return None

    def interrupt(self) -> None:
        pass


async def _bursts(
    waiting: list[PullOutcome], window: int, max_batch: int = 1, count: int = 1
) -> tuple[list[Burst], FlowWindow]:
    flow = FlowWindow(window, 1 << 30, 30.0)
    pipe = _Pipe(waiting)
    session = ConsumeSession(
        cast(Any, None), "S", "C", cast(Any, pipe), flow, heartbeat=60.0, max_batch=max_batch
    )
    out: list[Burst] = []
    async for item in session.run():
        assert isinstance(item, Burst)
        out.append(item)
        if len(out) == count:
            session.stop()
    return out, flow


async def test_waiting_deliveries_leave_in_bursts_one_message_per_response() -> None:
    total = BURST + 44
    bursts, flow = await _bursts([_delivery(i) for i in range(1, total + 1)], 1000, count=2)
    assert [len(b.responses) for b in bursts] == [BURST, 44]
    responses = [r for b in bursts for r in b.responses]
    assert [[d.stream_seq for d in r[0]] for r in responses] == [[i] for i in range(1, total + 1)]
    # Each response carries the window as it was right after its own delivery.
    assert [r[1] for r in responses] == list(range(1, total + 1))
    assert [r[2] for r in responses] == [30 * i for i in range(1, total + 1)]
    assert flow.messages == total


async def test_max_batch_groups_a_burst_into_batches() -> None:
    bursts, _ = await _bursts([_delivery(i) for i in range(1, 121)], 1000, max_batch=50)
    (burst,) = bursts
    assert [len(r[0]) for r in burst.responses] == [50, 50, 20]
    assert [r[1] for r in burst.responses] == [50, 100, 120]


async def test_a_burst_stops_at_the_requested_batch_and_at_its_byte_budget() -> None:
    # Only the window's 5 were requested: the 6th waits for the next request.
    bursts, _ = await _bursts([_delivery(i) for i in range(1, 9)], 5)
    assert [d.stream_seq for r in bursts[0].responses for d in r[0]] == [1, 2, 3, 4, 5]
    # Large messages: a burst holds about a MiB (the first goes whatever its size).
    big: list[PullOutcome] = [_delivery(i, 400 * 1024) for i in range(1, 6)]
    bursts, _ = await _bursts(big, 1000, count=2)
    assert [len(b.responses) for b in bursts] == [3, 2]
