"""Bounded per-stream buffering for Subscribe/QueueSubscribe, and the registry Unsubscribe uses.

A subscriber that reads slowly must not grow the gateway's memory: each stream owns a
:class:`Mailbox` bounded in messages and bytes. What happens when it is full is the documented
:class:`~natsgw.config.SlowConsumerPolicy`.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
from dataclasses import dataclass

from natsgw.adapter.types import Message
from natsgw.config import SlowConsumerPolicy
from natsgw.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class Delivery:
    message: Message
    #: 1-based count of messages NATS delivered to this subscription, dropped ones included,
    #: so a gap in the numbers shows exactly how many were dropped.
    sequence: int
    received_at: datetime.datetime


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

    def offer(self, message: Message) -> None:
        self.received += 1
        if self._ended:
            return
        if self._overflowed:
            self.dropped += 1
            return
        size = len(message.data)
        # An empty mailbox takes any message, so one larger than the byte budget still goes
        # (alone) to a subscriber that keeps up.
        if self._queue and (
            len(self._queue) >= self.max_msgs or self._bytes + size > self.max_bytes
        ):
            self.overflow()
            return
        self._queue.append(Delivery(message, self.received, datetime.datetime.now(datetime.UTC)))
        self._bytes += size
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
        while True:
            if self._queue:
                delivery = self._queue.popleft()
                self._bytes -= len(delivery.message.data)
                return delivery
            if self._overflowed:
                raise ResourceExhausted(
                    f"subscriber fell behind: its buffer of {self.max_msgs} messages / "
                    f"{self.max_bytes} bytes filled up and {self.dropped} message(s) were dropped; "
                    "the stream is closed (NATSGW_SLOW_CONSUMER_POLICY=close). Read faster, "
                    "use a queue group, or use JetStream for delivery that waits for you"
                )
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()


class SubscriptionRegistry:
    """Active subscription streams of this gateway process, by (tenant key, subject)."""

    def __init__(self) -> None:
        self._active: dict[tuple[str, str], set[Mailbox]] = {}

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
