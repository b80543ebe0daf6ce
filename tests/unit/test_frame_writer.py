"""FrameWriter: several responses per write, never more than WRITE_SLICE bytes per write, and the
bytes are exactly gRPC's length-prefixed messages in order (grpc.aio/grpcio read them back in
tests/integration/test_grpcio_compat.py)."""

from __future__ import annotations

import struct
from typing import Any, cast

from natsgw.pipeline.streaming import WRITE_SLICE, Frames, FrameWriter


class _Connection:
    messages_sent = 0
    last_message_sent: float | None = None


class _H2Stream:
    def __init__(self) -> None:
        self.connection = _Connection()
        self.writes: list[bytes] = []

    async def send_data(self, data: bytes) -> None:
        self.writes.append(data)


class _Stream:
    """The parts of grpclib's server Stream that natsgw.compat.grpclib touches."""

    def __init__(self) -> None:
        self._stream = _H2Stream()
        self._messages_sent = 0


def _messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        flag, size = struct.unpack(">BI", data[:5])
        assert flag == 0
        out.append(data[5 : 5 + size])
        data = data[5 + size :]
    return out


async def test_small_responses_go_out_in_one_write() -> None:
    stream = _Stream()
    bodies = [b"a" * 10, b"", b"b" * 100]
    await FrameWriter(cast(Any, stream)).write(Frames(bodies))
    assert len(stream._stream.writes) == 1
    assert _messages(stream._stream.writes[0]) == bodies
    assert stream._messages_sent == stream._stream.connection.messages_sent == 3


async def test_large_responses_are_sliced_and_arrive_intact() -> None:
    stream = _Stream()
    bodies = [b"x" * 10, bytes(range(256)) * 1000, b"y" * 3, b"z" * (WRITE_SLICE - 2)]
    await FrameWriter(cast(Any, stream)).write(Frames(bodies))
    writes = stream._stream.writes
    assert len(writes) > 4
    assert all(len(w) <= WRITE_SLICE for w in writes)
    assert _messages(b"".join(writes)) == bodies
    assert stream._messages_sent == 4


async def test_nothing_to_write_writes_nothing() -> None:
    stream = _Stream()
    await FrameWriter(cast(Any, stream)).write(Frames([]))
    assert stream._stream.writes == [] and stream._messages_sent == 0
