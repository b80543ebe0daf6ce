"""natsgw.wire.budget: the budget of large request bodies being assembled, total and per
connection (issue 17 row C, authenticated)."""

from __future__ import annotations

import asyncio

import pytest

from natsgw.config import ConfigError, Settings
from natsgw.wire.budget import BudgetExhausted, RequestBudget

MIB = 1024 * 1024


def test_one_connection_cannot_take_the_whole_budget() -> None:
    budget = RequestBudget(100, 40)
    assert budget.try_reserve("a", 30)
    assert not budget.try_reserve("a", 20)  # 50 > 40 for one connection
    assert budget.try_reserve("b", 40)
    assert budget.try_reserve("c", 30)
    assert not budget.try_reserve("d", 1)  # total 100 is spent
    assert budget.used == 100
    budget.release("a", 30)
    assert budget.reserved("a") == 0 and budget.used == 70
    assert budget.try_reserve("d", 30)


def test_the_share_is_at_most_the_total() -> None:
    assert RequestBudget(10, 50).per_connection == 10


async def test_a_waiter_gets_room_once_it_is_released() -> None:
    budget = RequestBudget(100, 100, wait=5.0)
    assert budget.try_reserve("a", 80)
    waiter = asyncio.create_task(budget.reserve("b", 50))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.release("a", 80)
    await asyncio.wait_for(waiter, 1.0)
    assert budget.reserved("b") == 50


async def test_no_room_within_the_wait_names_the_setting_that_refused() -> None:
    budget = RequestBudget(100, 40, wait=0.05)
    assert budget.try_reserve("a", 40)
    with pytest.raises(BudgetExhausted) as per_connection:
        await budget.reserve("a", 1)
    assert per_connection.value.setting == "NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION"
    assert budget.try_reserve("b", 40) and budget.try_reserve("c", 20)
    with pytest.raises(BudgetExhausted) as total:
        await budget.reserve("d", 1)
    assert total.value.setting == "NATSGW_REQUEST_BUFFER_BYTES"
    assert budget.used == 100  # a refusal reserves nothing


async def test_a_cancelled_waiter_reserves_nothing() -> None:
    budget = RequestBudget(10, 10, wait=5.0)
    assert budget.try_reserve("a", 10)
    waiter = asyncio.create_task(budget.reserve("b", 5))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    budget.release("a", 10)
    assert budget.used == 0 and budget.reserved("b") == 0


def test_settings_default_and_validation() -> None:
    settings = Settings.from_env({})
    assert settings.request_buffer_bytes == 256 * MIB
    assert settings.request_buffer_bytes_per_connection == 0
    with pytest.raises(ConfigError, match=r"NATSGW_REQUEST_BUFFER_BYTES=.*twice"):
        Settings.from_env({"NATSGW_REQUEST_BUFFER_BYTES": "15MiB"})
    with pytest.raises(ConfigError, match="NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION"):
        Settings.from_env({"NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION": "1MiB"})
    ok = Settings.from_env({"NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION": "20MiB"})
    assert ok.request_buffer_bytes_per_connection == 20 * MIB
