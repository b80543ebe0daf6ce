"""What the gateway remembers about JetStream deliveries it handed out. No NATS client here.

- :class:`DeliveryMemory` maps (tenant, stream, consumer, stream sequence) to the delivery's ack
  subject, so old clients can ack / nak by sequence. Bounded (oldest evicted first) and expiring:
  it is a convenience for clients without ack tokens, not a source of truth.
- :class:`FlowWindow` is one ``Consume`` call's flow-control window: the deliveries sent to the
  client and not yet settled (acked, nak'ed, terminated, or past their ack deadline).
- :class:`WindowRegistry` lets the ack paths settle deliveries in the windows of this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

DeliveryKey = tuple[str, str, str, int]  # tenant key, NATS stream, consumer, stream sequence


class DeliveryMemory:
    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[DeliveryKey, tuple[str, float]] = OrderedDict()
        #: No entry expires before this (the front's deadline, or earlier: never later).
        self._next_expiry = math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: DeliveryKey, reply: str) -> None:
        now = self._clock()
        entries = self._entries
        entries.pop(key, None)
        deadline = now + self._ttl
        entries[key] = (reply, deadline)
        if deadline < self._next_expiry:
            self._next_expiry = deadline
        if now >= self._next_expiry:  # runs per delivery: look at the front only when due
            self._expire(now)
        while len(entries) > self._max:
            entries.popitem(last=False)

    def lookup(self, key: DeliveryKey) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        reply, expires = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        return reply

    def _expire(self, now: float) -> None:
        # Entries are in insertion order and share one TTL: expired ones sit at the front.
        entries = self._entries
        while entries:
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                self._next_expiry = expires
                return
            del entries[key]
        self._next_expiry = math.inf


class FlowWindow:
    """Outstanding deliveries of one Consume stream, bounded by messages and payload bytes."""

    def __init__(
        self,
        max_msgs: int,
        max_bytes: int,
        ack_wait: float,
        *,
        track: bool = True,
        ack_all: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.ack_wait = ack_wait
        self.track = track
        self.ack_all = ack_all
        self._clock = clock
        # stream seq -> (bytes, deadline), in deadline order (every deadline is now + ack_wait,
        # so appending and move_to_end keep it sorted): expiry looks at the front only.
        self._out: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self.bytes = 0
        self._changed = asyncio.Event()

    @property
    def messages(self) -> int:
        return len(self._out)

    def add(self, seq: int, size: int) -> None:
        if not self.track:
            return
        self._drop(seq)  # a redelivery replaces the earlier delivery of the same message
        self._out[seq] = (size, self._clock() + self.ack_wait)
        self.bytes += size

    def settle(self, seq: int, *, in_progress: bool = False, cumulative: bool = False) -> None:
        """An ack path acted on ``seq``: free it (or, for in-progress, restart its deadline)."""
        if in_progress:
            entry = self._out.get(seq)
            if entry is not None:
                self._out[seq] = (entry[0], self._clock() + self.ack_wait)
                self._out.move_to_end(seq)
            return
        if cumulative and self.ack_all:
            for done in [s for s in self._out if s <= seq]:
                self._drop(done)
        else:
            self._drop(seq)
        self._changed.set()

    def settle_through(self, floor: int) -> None:
        """Free every delivery at or below ``floor`` (NATS's ack floor: all acknowledged)."""
        done = [s for s in self._out if s <= floor]
        for seq in done:
            self._drop(seq)
        if done:
            self._changed.set()

    def expire(self) -> float | None:
        """Free deliveries past their ack deadline (NATS will redeliver them); next deadline."""
        now = self._clock()
        while self._out:
            seq, (_, deadline) = next(iter(self._out.items()))
            if deadline > now:
                return deadline
            self._drop(seq)
        return None

    def room(self) -> tuple[int, int]:
        """Messages and bytes that may still be delivered."""
        return self.max_msgs - self.messages, self.max_bytes - self.bytes

    def wake(self) -> None:
        """Make a waiting :meth:`wait_changed` return now."""
        self._changed.set()

    async def wait_changed(self, timeout: float) -> None:
        self._changed.clear()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
        # coincides with the event, leaving a cancelled Consume call running.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._changed.wait()

    def _drop(self, seq: int) -> None:
        entry = self._out.pop(seq, None)
        if entry is not None:
            self.bytes -= entry[0]


class WindowRegistry:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], set[FlowWindow]] = {}

    def add(self, stream: str, consumer: str, window: FlowWindow) -> None:
        self._windows.setdefault((stream, consumer), set()).add(window)

    def remove(self, stream: str, consumer: str, window: FlowWindow) -> None:
        windows = self._windows.get((stream, consumer))
        if windows is not None:
            windows.discard(window)
            if not windows:
                del self._windows[(stream, consumer)]

    def settle(
        self, stream: str, consumer: str, seq: int, *, in_progress: bool, cumulative: bool
    ) -> None:
        for window in self._windows.get((stream, consumer), ()):
            window.settle(seq, in_progress=in_progress, cumulative=cumulative)
