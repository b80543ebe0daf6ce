"""natsgw.adapter.flow: the read window that keeps nats-server's queue towards the gateway
below its slow-consumer limit (issue 17 row D)."""

from __future__ import annotations

import asyncio

import pytest

from natsgw.adapter.flow import MIN_RESERVATION, Inflow, Lease, SizeHints

MIB = 1024 * 1024


async def test_reservations_within_the_budget_pass_and_the_rest_wait() -> None:
    inflow = Inflow(8 * MIB)
    assert await inflow.take(3 * MIB) == 3 * MIB
    assert await inflow.take(3 * MIB) == 3 * MIB
    third = asyncio.create_task(inflow.take(3 * MIB))
    await asyncio.sleep(0)
    assert not third.done() and inflow.waited == 1
    inflow.give(3 * MIB)
    assert await asyncio.wait_for(third, 1.0) == 3 * MIB
    assert inflow.used == 6 * MIB and inflow.peak == 6 * MIB


async def test_a_small_read_passes_a_waiting_large_one_and_has_headroom() -> None:
    inflow = Inflow(8 * MIB)
    await inflow.take(7 * MIB)  # the large ones leave the headroom (1 MiB) free
    large = asyncio.create_task(inflow.take(2 * MIB))
    await asyncio.sleep(0)
    assert not large.done()
    assert await asyncio.wait_for(inflow.take(10_000), 0.5) == 10_000
    inflow.give(7 * MIB)
    await asyncio.wait_for(large, 1.0)


async def test_larger_than_the_budget_is_clipped_and_goes_alone() -> None:
    inflow = Inflow(4 * MIB)
    await inflow.take(MIB)
    alone = asyncio.create_task(inflow.take(10 * MIB))
    await asyncio.sleep(0)
    assert not alone.done()
    inflow.give(MIB)
    assert await asyncio.wait_for(alone, 1.0) == 4 * MIB
    inflow.give(4 * MIB)
    assert await inflow.take(1) == MIN_RESERVATION  # the least anything reserves


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    inflow = Inflow(2 * MIB)
    await inflow.take(2 * MIB)
    waiter = asyncio.create_task(inflow.take(MIB))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    inflow.give(2 * MIB)
    assert inflow.used == 0


async def test_a_lease_is_given_back_on_arrival_and_after_its_hold() -> None:
    inflow = Inflow(8 * MIB)
    lease = await Lease.take(inflow, 4 * MIB, hold=0.05)
    lease.arrived(MIB)
    assert inflow.used == 3 * MIB
    await asyncio.sleep(0.1)  # nothing more came: the rest is free after the hold
    assert inflow.used == 0 and lease.remaining == 0
    lease.end()  # idempotent
    assert inflow.used == 0


def test_size_hints_start_at_max_payload_and_remember_the_largest() -> None:
    hints = SizeHints()
    assert hints.reservation("S", 10 * MIB) == 10 * MIB and not hints.known("S")
    hints.saw("S", 100)
    assert hints.reservation("S", 10 * MIB) == MIN_RESERVATION
    hints.saw("S", 2 * MIB)
    hints.saw("S", 1000)
    assert hints.reservation("S", 10 * MIB) == 2 * MIB
