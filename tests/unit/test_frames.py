"""Response framing without whole-message copies (natsgw.wire.frames)."""

from __future__ import annotations

import struct
from typing import Any

import grpclib.protocol
import h2.config
import pytest

from natsgw.wire import frames


class _Codec:
    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)


class _Stream:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        self.sent.append((data, end_stream))


@pytest.mark.parametrize("size", [0, 10, frames.JOIN_BELOW - 1, frames.JOIN_BELOW, 3_000_000])
async def test_the_bytes_sent_are_grpc_framing_of_the_message(size: int) -> None:
    stream = _Stream()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    await frames.send_message(stream, _Codec(), payload, bytes, end=True)
    assert b"".join(data for data, _ in stream.sent) == struct.pack(">?I", False, size) + payload
    assert [end for _, end in stream.sent][-1] is True
    assert len(stream.sent) == (1 if size < frames.JOIN_BELOW else 2)


def test_outbound_frames_are_capped_whatever_the_peer_allows() -> None:
    frames.install()
    connection = grpclib.protocol.H2Connection(  # type: ignore[attr-defined]
        config=h2.config.H2Configuration(client_side=False)
    )
    assert connection.max_outbound_frame_size == 16384  # HTTP/2's default until SETTINGS
    connection.max_outbound_frame_size = 16 * 1024 * 1024  # what grpc-core clients allow
    assert connection.max_outbound_frame_size == frames.MAX_FRAME


@pytest.mark.parametrize("size", [0, 1, 10, 11, 16384])
def test_frame_reprs_read_the_same_after_the_patch(size: int) -> None:
    import hyperframe.frame

    from natsgw.compat import hyperframe as hyperframe_compat

    frame = hyperframe.frame.DataFrame(1, data=bytes(range(256)) * 64)
    frame.data = frame.data[:size]
    original = hyperframe.frame._raw_data_repr
    try:
        before = repr(frame)
        hyperframe_compat.short_frame_reprs()
        assert repr(frame) == before
    finally:
        hyperframe.frame._raw_data_repr = original
