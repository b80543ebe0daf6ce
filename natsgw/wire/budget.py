"""The budget of request bytes being assembled: how much of large, unfinished request messages
the gateway holds at once, in total and per connection.

Why: the read timeout (NATSGW_REQUEST_READ_TIMEOUT) ends a request that never arrives whole, but
until then every open stream may make the gateway buffer up to NATSGW_MAX_MESSAGE_SIZE; an
authenticated client with many streams on many connections could hold gigabytes, again and
again. natsgw.wire.compression reserves a message's announced size here before it reads a body
longer than :data:`THRESHOLD` that has not fully arrived, and releases it once the
body is read or the read ends however it ends. A stream that gets no reservation does not read
its body, so HTTP/2 flow control stops its sender after one window.

Pure asyncio bookkeeping (no I/O), one instance per gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

KIB = 1024

#: Messages announcing at most this many bytes never reserve (small requests never wait).
THRESHOLD = 64 * KIB
#: Longest a read waits for room before it is refused (also bounded by the read timeout).
DEFAULT_WAIT = 1.0


class BudgetExhausted(Exception):
    """No room for a reservation within the wait; ``setting`` is the env var to raise."""

    def __init__(self, size: int, setting: str, limit: int) -> None:
        super().__init__(size, setting, limit)
        self.size, self.setting, self.limit = size, setting, limit


class RequestBudget:
    """``total`` bytes for all connections, ``per_connection`` for any one of them.

    A reservation is all-or-nothing for one message; waiters are woken on every release and
    retry (no queue: the wait is short and a refused client retries).
    """

    __slots__ = ("_by_key", "_room", "per_connection", "total", "used", "wait")

    def __init__(
        self,
        total: int,
        per_connection: int,
        *,
        wait: float = DEFAULT_WAIT,
    ) -> None:
        if per_connection > total:
            per_connection = total
        self.total, self.per_connection = total, per_connection
        self.wait = wait
        #: Bytes reserved now, in total (not exported as a metric yet).
        self.used = 0
        self._by_key: dict[Hashable, int] = {}
        self._room: asyncio.Event | None = None

    def reserved(self, key: Hashable) -> int:
        """Bytes ``key`` (a connection) holds reserved now."""
        return self._by_key.get(key, 0)

    def _refusal(self, key: Hashable, size: int) -> BudgetExhausted | None:
        """Why ``size`` more bytes for ``key`` do not fit now (None: they do)."""
        if self._by_key.get(key, 0) + size > self.per_connection:
            return BudgetExhausted(
                size, "NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION", self.per_connection
            )
        if self.used + size > self.total:
            return BudgetExhausted(size, "NATSGW_REQUEST_BUFFER_BYTES", self.total)
        return None

    def try_reserve(self, key: Hashable, size: int) -> bool:
        """Reserve ``size`` bytes for ``key`` now, if they fit."""
        if self._refusal(key, size) is not None:
            return False
        self._by_key[key] = self._by_key.get(key, 0) + size
        self.used += size
        return True

    async def reserve(self, key: Hashable, size: int, wait: float | None = None) -> None:
        """Reserve ``size`` bytes for ``key``, waiting at most ``wait`` (default: :attr:`wait`)
        seconds for room; raises :class:`BudgetExhausted` naming the setting that refused."""
        if self.try_reserve(key, size):
            return
        give_up = time.monotonic() + (self.wait if wait is None else wait)
        while True:
            refusal = self._refusal(key, size)
            if refusal is None:
                self.try_reserve(key, size)
                return
            left = give_up - time.monotonic()
            if left <= 0:
                raise refusal
            if self._room is None:
                self._room = asyncio.Event()
            room = self._room
            try:
                async with asyncio.timeout(left):
                    await room.wait()
            except TimeoutError:
                pass

    def release(self, key: Hashable, size: int) -> None:
        """Give back a reservation of ``size`` bytes made for ``key``; wakes the waiters."""
        held = self._by_key.get(key, 0) - size
        if held > 0:
            self._by_key[key] = held
        else:
            self._by_key.pop(key, None)
        self.used = max(0, self.used - size)
        room, self._room = self._room, None
        if room is not None:
            room.set()
