"""Delivery memory (ack by sequence) and Consume flow windows (natsgw.service.deliveries)."""

from __future__ import annotations

from natsgw.service.deliveries import DeliveryMemory, FlowWindow, WindowRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_memory_remembers_expires_and_is_bounded() -> None:
    clock = Clock()
    memory = DeliveryMemory(max_entries=3, ttl=10.0, clock=clock)
    for seq in range(1, 5):
        memory.remember(("u", "s", "c", seq), f"reply-{seq}")
    assert len(memory) == 3
    assert memory.lookup(("u", "s", "c", 1)) is None  # evicted: the oldest goes first
    assert memory.lookup(("u", "s", "c", 4)) == "reply-4"
    assert memory.lookup(("other", "s", "c", 4)) is None  # keyed by tenant too
    clock.now += 10.0
    assert memory.lookup(("u", "s", "c", 4)) is None
    memory.remember(("u", "s", "c", 9), "r")
    assert len(memory) == 1  # expired entries are dropped on insert


def test_memory_expiry_follows_re_remembered_entries() -> None:
    """Expiry looks at the front only when an entry can be due; a re-remembered entry moves
    back (with a new deadline) and everything behind it still expires on time."""
    clock = Clock()
    memory = DeliveryMemory(max_entries=10, ttl=10.0, clock=clock)
    memory.remember(("u", "s", "c", 1), "a")  # deadline 10
    clock.now = 5.0
    memory.remember(("u", "s", "c", 2), "b")  # deadline 15
    clock.now = 6.0
    memory.remember(("u", "s", "c", 1), "a2")  # deadline 16, now behind b
    clock.now = 15.5
    memory.remember(("u", "s", "c", 3), "c")
    assert len(memory) == 2  # b went on this insert
    assert memory.lookup(("u", "s", "c", 1)) == "a2"
    clock.now = 16.0
    memory.remember(("u", "s", "c", 4), "d")
    assert len(memory) == 2  # a2 went too: c and d are left
    assert memory.lookup(("u", "s", "c", 3)) == "c"


def test_memory_redelivery_replaces_the_reply() -> None:
    memory = DeliveryMemory(max_entries=10, ttl=10.0)
    memory.remember(("u", "s", "c", 1), "first")
    memory.remember(("u", "s", "c", 1), "second")
    assert memory.lookup(("u", "s", "c", 1)) == "second"
    assert len(memory) == 1


def test_window_counts_messages_and_bytes() -> None:
    clock = Clock()
    window = FlowWindow(3, 100, ack_wait=5.0, clock=clock)
    window.add(1, 40)
    window.add(2, 40)
    assert window.room() == (1, 20)
    window.add(2, 40)  # a redelivery does not count twice
    assert (window.messages, window.bytes) == (2, 80)
    window.settle(1)
    assert window.room() == (2, 60)


def test_window_expiry_and_in_progress() -> None:
    clock = Clock()
    window = FlowWindow(3, 100, ack_wait=5.0, clock=clock)
    window.add(1, 10)
    window.add(2, 10)
    clock.now += 4.0
    window.settle(2, in_progress=True)  # deadline of 2 restarts
    clock.now += 1.5
    assert window.expire() == clock.now + 3.5
    assert window.messages == 1  # 1 expired (NATS redelivers it), 2 kept


def test_ack_all_is_cumulative_only_for_ack_all_consumers() -> None:
    explicit = FlowWindow(10, 100, 5.0)
    cumulative = FlowWindow(10, 100, 5.0, ack_all=True)
    for window in (explicit, cumulative):
        for seq in (1, 2, 3):
            window.add(seq, 1)
        window.settle(2, cumulative=True)
    assert explicit.messages == 2
    assert cumulative.messages == 1


def test_ack_none_tracks_nothing() -> None:
    window = FlowWindow(2, 10, 5.0, track=False)
    window.add(1, 100)
    assert window.room() == (2, 10)


def test_registry_settles_every_window_of_the_consumer() -> None:
    registry = WindowRegistry()
    a, b, other = FlowWindow(5, 100, 5.0), FlowWindow(5, 100, 5.0), FlowWindow(5, 100, 5.0)
    registry.add("s", "c", a)
    registry.add("s", "c", b)
    registry.add("s", "d", other)
    for window in (a, b, other):
        window.add(7, 1)
    registry.settle("s", "c", 7, in_progress=False, cumulative=False)
    assert (a.messages, b.messages, other.messages) == (0, 0, 1)
    registry.remove("s", "c", a)
    registry.remove("s", "c", b)
    registry.settle("s", "c", 7, in_progress=False, cumulative=False)


def test_settle_through_the_ack_floor() -> None:
    window = FlowWindow(10, 1000, 5.0)
    for seq in (3, 4, 7):
        window.add(seq, 10)
    window.settle_through(4)
    assert (window.messages, window.bytes) == (1, 10)
