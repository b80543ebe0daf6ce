import asyncio

import pytest

from natsgw.adapter.types import Message
from natsgw.config import Settings, SlowConsumerPolicy
from natsgw.errors import ResourceExhausted
from natsgw.service.subscriptions import Mailbox, SubscriptionRegistry, buffered_size


def msg(n: int, size: int = 1) -> Message:
    return Message(subject=f"s.{n}", data=b"x" * size)


async def test_close_policy_delivers_what_fit_then_fails_naming_the_limit() -> None:
    box = Mailbox(max_msgs=2, max_bytes=1000, policy=SlowConsumerPolicy.CLOSE)
    for n in range(5):
        box.offer(msg(n))
    assert (await box.get()).sequence == 1  # type: ignore[union-attr]
    assert (await box.get()).sequence == 2  # type: ignore[union-attr]
    with pytest.raises(ResourceExhausted, match=r"2 messages / 1000 bytes.*3 message"):
        await box.get()


async def test_drop_policy_keeps_going_and_sequence_shows_the_gap() -> None:
    box = Mailbox(max_msgs=10, max_bytes=10, policy=SlowConsumerPolicy.DROP)
    box.offer(msg(1, 6))
    box.offer(msg(2, 6))  # over the byte limit: dropped
    first = await box.get()
    box.offer(msg(3, 6))
    second = await box.get()
    assert first is not None and second is not None
    assert (first.sequence, second.sequence, box.dropped) == (1, 3, 1)


async def test_end_completes_after_buffered_messages() -> None:
    box = Mailbox(max_msgs=10, max_bytes=100, policy=SlowConsumerPolicy.CLOSE)
    box.offer(msg(1))
    box.end()
    box.offer(msg(2))  # after the end: not delivered
    assert (await box.get()) is not None
    assert await box.get() is None


async def test_get_waits_for_a_message() -> None:
    box = Mailbox(max_msgs=10, max_bytes=100, policy=SlowConsumerPolicy.CLOSE)
    waiter = asyncio.create_task(box.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    box.offer(msg(7))
    delivery = await asyncio.wait_for(waiter, 1)
    assert delivery is not None and delivery.message.subject == "s.7"


def test_registry_ends_only_that_tenants_subject() -> None:
    reg = SubscriptionRegistry()
    a1, a2, b = (Mailbox(1, 1, SlowConsumerPolicy.CLOSE) for _ in range(3))
    reg.add("ualice", "x.>", a1)
    reg.add("ualice", "x.>", a2)
    reg.add("ubob", "x.>", b)
    assert reg.end("ualice", "x.>") == 2
    assert reg.end("ualice", "x.>") == 0
    assert reg.active == 1


def test_headers_and_subjects_count_against_the_byte_budget() -> None:
    """A message may carry nearly all of max_payload as headers and no data: such messages must
    fill a slow reader's budget as data would (review: 4096 of them held ~3.9 GiB of 20 MiB)."""
    settings = Settings()
    box = Mailbox(
        settings.subscription_buffer_msgs, settings.stream_buffer_bytes, SlowConsumerPolicy.DROP
    )
    headers = {f"h{i}": "v" * 4000 for i in range(250)}  # ~1 MB of headers, no data
    message = Message(subject="t.x", data=b"", headers=headers)
    size = buffered_size(message)
    assert size > sum(len(k) + len(v) for k, v in headers.items())
    for _ in range(settings.subscription_buffer_msgs):
        box.offer(message)
    # One message larger than the budget may sit alone (documented); no more than the budget else.
    assert box.buffered * size <= box.max_bytes + size
    assert box.dropped == settings.subscription_buffer_msgs - box.buffered
