"""Bounded per-stream buffering for Subscribe/QueueSubscribe, and the registry Unsubscribe uses.

A subscriber that reads slowly must not grow the gateway's memory: each stream owns a
:class:`Mailbox` bounded in messages and bytes. What happens when it is full is the documented
:class:`~natsgw.config.SlowConsumerPolicy`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass

from natsgw.adapter.core import header_bytes
from natsgw.adapter.types import Message
from natsgw.config import SlowConsumerPolicy
from natsgw.errors import ResourceExhausted


def buffered_size(message: Message) -> int:
    """What a message counts against a stream's byte budget: its data, its header block and its
    subject (a message may carry nearly all of max_payload as headers and no data)."""
    size = len(message.data) + len(message.subject)
    if message.headers:
        size += header_bytes(message.headers)
    return size


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to build, once per message
class Delivery:
    message: Message
    #: 1-based count of messages NATS delivered to this subscription, dropped ones included,
    #: so a gap in the numbers shows exactly how many were dropped.
    sequence: int
    #: When the gateway received it from NATS, in nanoseconds since the epoch (cheap to take
    #: per message; see :attr:`received_at`).
    received_ns: int
    #: :func:`buffered_size`, counted once.
    size: int = 0

    @property
    def received_at(self) -> datetime.datetime:
        seconds, nanos = divmod(self.received_ns, 1_000_000_000)
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(
            microsecond=nanos // 1000
        )


class Mailbox:
    """Single-consumer bounded buffer fed synchronously by the NATS delivery callback."""

    def __init__(self, max_msgs: int, max_bytes: int, policy: SlowConsumerPolicy) -> None:
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.policy = policy
        self.received = 0
        self.dropped = 0
        self._queue: collections.deque[Delivery] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._ended = False
        self._overflowed = False

    def lost_upstream(self) -> None:
        """The NATS client dropped a message before it reached us: it still counts."""
        self.received += 1
        self.overflow()

    @property
    def buffered(self) -> int:
        return len(self._queue)

    def has_room(self, size: int) -> bool:
        """Would a message of ``size`` bytes be kept now?"""
        queue = self._queue
        return not queue or (len(queue) < self.max_msgs and self._bytes + size <= self.max_bytes)

    def offer(self, message: Message, received_ns: int = 0, size: int = -1) -> None:
        """Buffer ``message`` (``size``: its :func:`buffered_size`, when the caller has it)."""
        self.received += 1
        if self._ended:
            return
        if self._overflowed:
            self.dropped += 1
            return
        if size < 0:
            size = buffered_size(message)
        # An empty mailbox takes any message, so one larger than the byte budget still goes
        # (alone) to a subscriber that keeps up.
        queue = self._queue
        if queue and (len(queue) >= self.max_msgs or self._bytes + size > self.max_bytes):
            self.overflow()
            return
        queue.append(Delivery(message, self.received, received_ns or time.time_ns(), size))
        self._bytes += size
        if len(queue) == 1:
            self._ready.set()

    def overflow(self, count: int = 1) -> None:
        """Our buffer was full: count the loss, and end the stream under the close policy."""
        self.dropped += count
        if self.policy is SlowConsumerPolicy.CLOSE:
            self._overflowed = True
            self._ready.set()

    def end(self) -> None:
        """Complete the stream normally once what is buffered has been delivered."""
        self._ended = True
        self._ready.set()

    async def get(self) -> Delivery | None:
        """Next delivery; None when the stream has ended; raises when it overflowed."""
        batch = await self.take(1)
        return batch[0] if batch else None

    async def take(self, limit: int, max_bytes: int = 0) -> list[Delivery]:
        """Up to ``limit`` deliveries and (after the first) ``max_bytes`` of payload, waiting for
        the first; [] when the stream has ended; raises when it overflowed (close policy) and
        everything buffered was taken."""
        while True:
            queue = self._queue
            if queue:
                first = queue.popleft()
                size = first.size
                batch = [first]
                if limit > 1:
                    budget = max_bytes or self.max_bytes
                    while queue and len(batch) < limit:
                        more = queue[0].size
                        if size + more > budget:
                            break
                        batch.append(queue.popleft())
                        size += more
                self._bytes -= size
                return batch
            if self._overflowed:
                raise ResourceExhausted(
                    f"subscriber fell behind: its buffer of {self.max_msgs} messages / "
                    f"{self.max_bytes} bytes filled up and {self.dropped} message(s) were dropped; "
                    "the stream is closed (NATSGW_SLOW_CONSUMER_POLICY=close). Read faster, "
                    "use a queue group, or use JetStream for delivery that waits for you"
                )
            if self._ended:
                return []
            self._ready.clear()
            await self._ready.wait()


class SubscriptionRegistry:
    """Active streams of this gateway process, by (tenant key, subject), and how many
    server-streaming calls each tenant has open (at most ``stream_limit``; 0: no limit)."""

    def __init__(self, stream_limit: int = 0) -> None:
        self._active: dict[tuple[str, str], set[Mailbox]] = {}
        self.stream_limit = stream_limit
        self._open: dict[str, int] = {}
        #: Calls refused because their tenant had ``stream_limit`` open (a metric).
        self.refused = 0

    @contextlib.contextmanager
    def lease(self, tenant_key: str) -> Iterator[None]:
        """Hold one of the tenant's stream slots for the ``with`` block, or refuse the call."""
        held = self._open.get(tenant_key, 0)
        if self.stream_limit and held >= self.stream_limit:
            self.refused += 1
            raise ResourceExhausted(
                f"too many open streams: this tenant already has {held} Subscribe, "
                "QueueSubscribe, Consume, KVWatch or ObjectGetStream calls open on this gateway, "
                f"the limit (NATSGW_QUOTA_STREAMING_CALLS) is {self.stream_limit}; close one "
                "first, or share one subscription among your readers"
            )
        self._open[tenant_key] = held + 1
        try:
            yield
        finally:
            left = self._open[tenant_key] - 1
            if left:
                self._open[tenant_key] = left
            else:
                del self._open[tenant_key]

    def open_streams(self, tenant_key: str) -> int:
        return self._open.get(tenant_key, 0)

    def add(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        self._active.setdefault((tenant_key, subject), set()).add(mailbox)

    def remove(self, tenant_key: str, subject: str, mailbox: Mailbox) -> None:
        boxes = self._active.get((tenant_key, subject))
        if boxes is not None:
            boxes.discard(mailbox)
            if not boxes:
                del self._active[(tenant_key, subject)]

    def end(self, tenant_key: str, subject: str) -> int:
        """End every stream of this tenant on exactly this subject; returns how many."""
        boxes = self._active.pop((tenant_key, subject), set())
        for box in boxes:
            box.end()
        return len(boxes)

    def end_all(self) -> int:
        count = 0
        for boxes in self._active.values():
            for box in boxes:
                box.end()
                count += 1
        self._active.clear()
        return count

    @property
    def active(self) -> int:
        return sum(len(boxes) for boxes in self._active.values())
