"""One NATS subscription per distinct interest, fanned out to every stream that shares it.

Sixty streams on one subject used to be sixty NATS subscriptions: nats-server sent every message
sixty times down the gateway's connection, and one tenant's burst could get that connection cut
as a slow consumer. Now streams with the same *interest* share one subscription and the gateway
copies references, not bytes:

- plain subscriptions (no queue group) on the same NATS subject pattern are identical: each
  member gets every message;
- queue subscriptions are identical when pattern *and* queue group match. NATS hands each
  message to one member of a queue group; the shared subscription is one member towards NATS,
  and here the message goes to one local stream (round robin, skipping streams whose buffer is
  full), so the group still sees each message once.

A plain and a queue subscription on the same pattern are different interests (different NATS
semantics) and get different subscriptions. Patterns arrive already mapped into a tenant's
namespace, so two tenants never share.

Delivery into each stream's :class:`~natsgw.service.subscriptions.Mailbox` is synchronous and
never blocks: a full mailbox drops (or closes its stream) on its own, and the NATS reader goes on.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from natsgw.adapter import NatsAdapter
from natsgw.adapter.core import Subscription
from natsgw.adapter.types import Message
from natsgw.service.subscriptions import Mailbox, buffered_size

log = structlog.get_logger("natsgw.service.fanout")

Interest = tuple[str, str]  # NATS subject pattern, queue group ("" for none)


class _Group:
    """The streams sharing one interest, and the NATS subscription that feeds them."""

    __slots__ = ("_next", "interest", "members", "opening", "subscription")

    def __init__(self, interest: Interest) -> None:
        self.interest = interest
        self.members: list[Mailbox] = []
        self.opening: asyncio.Future[Subscription] | None = None
        self.subscription: Subscription | None = None
        self._next = 0

    def deliver(self, message: Message) -> None:
        now = time.time_ns()
        size = buffered_size(message)  # once, whatever the number of streams
        members = self.members
        if not self.interest[1]:
            for box in members:
                box.offer(message, now, size)
            return
        count = len(members)
        if not count:
            return
        start = self._next
        for step in range(count):
            box = members[(start + step) % count]
            if box.has_room(size):
                self._next = (start + step + 1) % count
                box.offer(message, now, size)
                return
        # Every stream of the group is full: the next in turn records the loss.
        self._next = (start + 1) % count
        members[start % count].offer(message, now, size)

    def lost(self) -> None:
        """nats-py dropped a message of this subscription before it reached us."""
        if self.interest[1]:
            if self.members:
                self.members[self._next % len(self.members)].lost_upstream()
            return
        for box in self.members:
            box.lost_upstream()


class FanOut:
    """Shared NATS subscriptions of this gateway process; see the module docstring."""

    def __init__(self, adapter: NatsAdapter, *, pending_msgs: int, pending_bytes: int) -> None:
        self._adapter = adapter
        self._pending_msgs = pending_msgs
        self._pending_bytes = pending_bytes
        self._groups: dict[Interest, _Group] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def subscriptions(self) -> int:
        """NATS subscriptions held (each feeds one or more streams)."""
        return len(self._groups)

    async def join(self, pattern: str, queue: str, mailbox: Mailbox) -> Membership:
        """Feed ``mailbox`` from the interest's subscription (made now if there is none).

        Returns once NATS has the subscription, so the caller may tell its client it is live.
        """
        interest = (pattern, queue)
        group = self._groups.get(interest)
        if group is None:
            group = _Group(interest)
            self._groups[interest] = group
            group.opening = asyncio.ensure_future(self._open(group))
        group.members.append(mailbox)
        membership = Membership(self, group, mailbox)
        try:
            if group.subscription is None:
                assert group.opening is not None
                await asyncio.shield(group.opening)
        except BaseException:
            membership.leave()
            raise
        return membership

    async def _open(self, group: _Group) -> Subscription:
        try:
            subscription = await self._adapter.subscribe(
                group.interest[0],
                group.deliver,
                queue=group.interest[1],
                on_overflow=group.lost,
                pending_msgs=self._pending_msgs,
                pending_bytes=self._pending_bytes,
            )
        except BaseException:
            if self._groups.get(group.interest) is group:
                del self._groups[group.interest]
            raise
        if self._groups.get(group.interest) is not group:  # every member left meanwhile
            self._release(subscription)
        else:
            group.subscription = subscription
        return subscription

    def _leave(self, group: _Group, mailbox: Mailbox) -> None:
        try:
            group.members.remove(mailbox)
        except ValueError:
            return
        if group.members or self._groups.get(group.interest) is not group:
            return
        del self._groups[group.interest]
        if group.subscription is not None:
            self._release(group.subscription)
        # Still opening: _open sees the group gone and releases what it opened.

    def _release(self, subscription: Subscription) -> None:
        task = asyncio.get_running_loop().create_task(
            subscription.unsubscribe(), name="natsgw-fanout-unsubscribe"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Wait for unsubscriptions still in flight (at shutdown)."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class Membership:
    """One stream's place in a shared subscription; :meth:`leave` is synchronous and idempotent,
    so a stream's ``finally`` releases it even when cancelled again."""

    __slots__ = ("_fanout", "_group", "_left", "_mailbox")

    def __init__(self, fanout: FanOut, group: _Group, mailbox: Mailbox) -> None:
        self._fanout = fanout
        self._group = group
        self._mailbox = mailbox
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._fanout._leave(self._group, self._mailbox)
