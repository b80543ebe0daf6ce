"""The corked transport: writes pass through, or leave as one write while corked."""

from __future__ import annotations

import asyncio

from natsgw.wire.corking import FLUSH_AT, CorkedTransport


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

    def get_write_buffer_size(self) -> int:
        return 0


def test_without_a_loop_uncorked_writes_pass_through_one_by_one() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner)
    transport.write(b"headers")
    transport.write(b"data")
    assert inner.writes == [b"headers", b"data"]


def test_corked_writes_leave_as_one_write_in_order_at_uncork() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner)
    transport.cork()
    for frame in (b"headers", b"data", b"trailers"):
        transport.write(frame)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == len(b"headersdatatrailers")
    transport.uncork()
    assert inner.writes == [b"headersdatatrailers"]
    transport.write(b"next")
    assert inner.writes[-1] == b"next"


def test_a_large_corked_write_is_not_held() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner)
    transport.cork()
    transport.write(b"h")
    transport.write(b"x" * FLUSH_AT)
    assert inner.writes == [b"h" + b"x" * FLUSH_AT]
    transport.uncork()
    assert len(inner.writes) == 1


def test_close_writes_what_waits_first() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner)
    transport.cork()
    transport.write(b"goaway")
    transport.close()
    assert inner.writes == [b"goaway"]
    assert inner.closed and transport.is_closing()


async def test_writes_of_one_loop_pass_leave_as_one_write_at_its_end() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner, asyncio.get_running_loop())
    for answer in (b"a1", b"a2", b"a3"):  # three calls answering in the same pass
        transport.write(answer)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 6
    await asyncio.sleep(0)  # the next pass
    assert inner.writes == [b"a1a2a3"]
    transport.write(b"later")
    await asyncio.sleep(0)
    assert inner.writes == [b"a1a2a3", b"later"]


async def test_a_pass_does_not_end_a_cork() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner, asyncio.get_running_loop())
    transport.write(b"window-update")
    transport.cork()
    transport.write(b"headers")
    await asyncio.sleep(0)
    assert inner.writes == []
    transport.write(b"trailers")
    transport.uncork()
    assert inner.writes == [b"window-updateheaderstrailers"]
    await asyncio.sleep(0)
    assert inner.writes == [b"window-updateheaderstrailers"]


async def test_a_pass_that_gathers_a_lot_writes_at_once() -> None:
    inner = RecordingTransport()
    transport = CorkedTransport(inner, asyncio.get_running_loop())
    transport.write(b"x" * FLUSH_AT)
    assert inner.writes == [b"x" * FLUSH_AT]
