"""Capped exponential backoff with full jitter: the one retry-delay policy of the gateway.

Used by the NATS connection and its readers (natsgw.adapter), Consume pulls, the Loki shipper and
the Consul registration. Every one of them drives its own loop (reconnect handlers ask for a delay,
shippers count attempts across batches), so a delay function fits better than a retry decorator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: Attempts beyond this no longer double the ceiling (keeps ``2 ** attempt`` small).
_MAX_DOUBLINGS = 16


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for attempt 0, 1, 2, ...: uniform in ``[0, min(cap, base * 2**attempt)]``.

    Full jitter (rather than a fixed schedule) spreads the retries of many gateways that lost the
    same dependency at the same moment, so they do not return in lockstep.
    """

    base: float
    cap: float

    def ceiling(self, attempt: int) -> float:
        """The largest delay ``attempt`` can get (attempt 0 is the first retry)."""
        doublings: int = min(max(attempt, 0), _MAX_DOUBLINGS)
        return min(self.cap, self.base * float(2**doublings))

    def delay(
        self, attempt: int, uniform: Callable[[float, float], float] = random.uniform
    ) -> float:
        """A jittered delay for ``attempt``; ``uniform`` is replaceable for tests."""
        return uniform(0.0, self.ceiling(attempt))
