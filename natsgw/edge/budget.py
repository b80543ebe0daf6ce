"""Per-connection budgets of control frames (resets, PINGs, SETTINGS) a client may send."""

from __future__ import annotations


class RateBudget:
    """At most ``per_second`` events in each one-second window; 0: no limit.

    Why a fixed window: one int and one float per connection, one comparison and one add per
    counted frame (no allocation), which is all a defence against floods needs; a burst of
    twice the rate across a window boundary is still bounded.
    """

    __slots__ = ("_count", "_window_end", "per_second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._count = 0
        self._window_end = 0.0

    def take(self, now: float) -> bool:
        """Count one event at ``now`` (loop time); False once this window's budget is spent."""
        if not self.per_second:
            return True
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._count = 0
        self._count += 1
        return self._count <= self.per_second
