"""The one retry-delay policy: exponential ceilings, capped, full jitter below them."""

from __future__ import annotations

import pytest

from natsgw.backoff import Backoff


def test_ceiling_doubles_from_base_until_the_cap() -> None:
    policy = Backoff(base=0.25, cap=10.0)
    assert [policy.ceiling(n) for n in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert policy.ceiling(10_000) == 10.0  # huge attempt counts neither overflow nor pass the cap


def test_negative_attempts_count_as_the_first_retry() -> None:
    assert Backoff(base=0.5, cap=30.0).ceiling(-3) == 0.5


@pytest.mark.parametrize("attempt", [0, 1, 5, 40])
def test_delay_is_drawn_uniformly_between_zero_and_the_ceiling(attempt: int) -> None:
    policy = Backoff(base=0.2, cap=30.0)
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high / 2

    assert policy.delay(attempt, uniform) == policy.ceiling(attempt) / 2
    assert asked == [(0.0, policy.ceiling(attempt))]


def test_real_delays_stay_within_bounds_and_are_jittered() -> None:
    policy = Backoff(base=1.0, cap=4.0)
    delays = [policy.delay(3) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # full jitter, not a fixed schedule
