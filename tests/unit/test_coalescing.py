"""The coalescing transport: a connection's writes of one event-loop pass leave as one write."""

from __future__ import annotations

import asyncio

from natsgw.wire.coalescing import FLUSH_AT, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket side (a stand-in for asyncio's socket transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def _transport() -> tuple[RecordingTransport, CoalescingTransport]:
    inner = RecordingTransport()
    return inner, CoalescingTransport(inner, asyncio.get_running_loop())


async def test_writes_of_one_loop_pass_leave_as_one_write_in_order_at_its_end() -> None:
    inner, transport = _transport()
    for answer in (b"headers", b"data", b"trailers"):  # or three calls answering in one pass
        transport.write(answer)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == len(b"headersdatatrailers")
    await asyncio.sleep(0)  # the next pass
    assert inner.writes == [b"headersdatatrailers"]
    transport.write(b"later")
    await asyncio.sleep(0)
    assert inner.writes == [b"headersdatatrailers", b"later"]


async def test_a_pass_that_gathers_a_lot_writes_at_once() -> None:
    inner, transport = _transport()
    transport.write(b"h")
    transport.write(b"x" * FLUSH_AT)
    assert inner.writes == [b"h" + b"x" * FLUSH_AT]
    await asyncio.sleep(0)
    assert len(inner.writes) == 1


async def test_close_writes_what_waits_first() -> None:
    inner, transport = _transport()
    transport.write(b"status")
    transport.close()
    assert inner.writes == [b"status"]
    assert inner.closed and transport.is_closing()
    await asyncio.sleep(0)  # the pass's own flush finds nothing more
    assert inner.writes == [b"status"]


async def test_abort_drops_what_waits_and_nothing_is_written_after() -> None:
    inner, transport = _transport()
    transport.write(b"lost with the connection")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == []
