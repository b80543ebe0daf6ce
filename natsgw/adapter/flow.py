"""Inbound flow control: how many bytes the gateway has asked NATS for and not yet received.

nats-server cuts a client as a slow consumer once more than its ``max_pending`` (64 MiB by
default) is queued towards it. Replies to the gateway's reads (direct gets, pulls, object chunks)
are queued the moment they are asked for, so many large reads asked for at once by one tenant
could get a connection cut for every tenant. An :class:`Inflow` is a byte budget per connection:
a read reserves what its answer can be before it is sent and gives it back once the answer
arrived (or the read ended), so what is in transit stays below the budget whatever tenants ask.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

#: Streams whose largest answer is remembered (:class:`SizeHints`); beyond, the memory restarts.
_HINTED_STREAMS = 4096
#: The least a read reserves: a reply's subject, headers and JSON never come for free.
MIN_RESERVATION = 4096
#: Reservations up to this size are "small" (a KV value, an API answer): they may use the
#: headroom large ones leave, so a quiet tenant's small reads never queue behind bulk reads.
SMALL = 64 * 1024


class Inflow:
    """A byte budget; a reservation that fits is granted at once, others wait in order.

    A reservation that fits goes before earlier ones that do not (a small KV read does not queue
    behind a large object read), and large ones leave :attr:`headroom` for small ones; waiters
    are woken in order as room comes back. A reservation larger than the whole budget is clipped
    to it and so granted alone: one message of the server's max_payload must always pass.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, MIN_RESERVATION)
        #: Room only small reservations may take (an eighth of the budget, at most 2 MiB).
        self.headroom = min(self.capacity // 8, 2 * 1024 * 1024)
        self.used = 0
        #: Reservations that had to wait, and the most bytes ever in transit.
        self.waited = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, size: int) -> bool:
        if self.used == 0:
            return True
        limit = self.capacity if size <= SMALL else self.capacity - self.headroom
        return self.used + size <= limit

    def _grant(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    async def take(self, size: int) -> int:
        """Reserve ``size`` bytes (clipped to the budget), waiting for room; the bytes taken."""
        size = min(max(size, MIN_RESERVATION), self.capacity)
        if self._fits(size):  # go, even past a larger waiter
            self._grant(size)
            return size
        self.waited += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.give(size)  # granted just as the caller was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise
        return size

    def give(self, size: int) -> None:
        """Give back what :meth:`take` returned; wakes the waiters that now fit."""
        self.used = max(self.used - size, 0)
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            size, future = entry
            if future.done():
                self._waiters.remove(entry)
                continue
            if self._fits(size):
                self._waiters.remove(entry)
                self._grant(size)
                future.set_result(None)

    @contextlib.asynccontextmanager
    async def reserved(self, size: int) -> AsyncIterator[int]:
        """``size`` bytes reserved for the block (an answer received inside it)."""
        taken = await self.take(size)
        try:
            yield taken
        finally:
            self.give(taken)


class SizeHints:
    """The largest message seen per stream, to reserve for a read of unknown size.

    A stream never seen reserves the server's max_payload (the most a message can be); after
    that, the largest message read from or published to it through this gateway. A message
    larger than its reservation still arrives (the budget is exceeded once) and raises the hint.
    """

    def __init__(self) -> None:
        self._largest: dict[str, int] = {}

    def reservation(self, stream: str, max_payload: int) -> int:
        return self._largest.get(stream, max_payload)

    def known(self, stream: str) -> bool:
        return stream in self._largest

    def saw(self, stream: str, size: int) -> None:
        largest = self._largest
        if size > largest.get(stream, 0):
            if len(largest) >= _HINTED_STREAMS and stream not in largest:
                largest.clear()
            largest[stream] = max(size, MIN_RESERVATION)


class Lease:
    """Bytes of an :class:`Inflow` reserved for the answer to one pull request.

    Given back as deliveries arrive (:meth:`arrived`), and the rest when the request ends or
    ``hold`` seconds after it was sent, whichever is first: what a server has queued for a
    request it queues at once (a backlog), later deliveries come at the pace they are published.
    So an idle pull (a Consume stream waiting for news) holds nothing for long.
    """

    __slots__ = ("_inflow", "_timer", "remaining")

    def __init__(self, inflow: Inflow, size: int, hold: float) -> None:
        self._inflow = inflow
        self.remaining = size
        self._timer = asyncio.get_running_loop().call_later(hold, self.end)

    @classmethod
    async def take(cls, inflow: Inflow, size: int, hold: float) -> Lease:
        return cls(inflow, await inflow.take(size), hold)

    def arrived(self, size: int) -> None:
        """``size`` bytes of the answer came off the socket: that much room is free again."""
        if self.remaining:
            given = min(size, self.remaining)
            self.remaining -= given
            self._inflow.give(given)

    def end(self) -> None:
        """The request is over (or old enough): give back all that is left."""
        self._timer.cancel()
        remaining, self.remaining = self.remaining, 0
        if remaining:
            self._inflow.give(remaining)
