"""Writing server streams: responses handed over already encoded, written several per write.

A streaming handler normally yields response messages and the pipeline sends each with
grpclib's ``send_message`` — one HTTP/2 DATA frame and one socket write per response. A
subscriber that is behind has many responses waiting; the handler then yields :class:`Frames`
(the encoded bodies of several responses) and :class:`FrameWriter` writes them together:
prefixed, joined, handed to the connection at once (in :data:`WRITE_SLICE` pieces, yielding
between them). Responses are never compressed, so the bytes are what grpclib would send.

The pipeline (:mod:`natsgw.pipeline.chain`) is the only writer; handlers never touch grpclib.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpclib.server

from natsgw.compat import grpclib as grpclib_compat

#: gRPC message prefix: compressed flag (always 0: responses go uncompressed), length.
_PREFIX = struct.Struct(">BI")
#: Bytes written per turn of the event loop. A stream with a large message (or many) writes a
#: slice, then lets every other task run — the NATS readers above all — before the next slice, so
#: sixty fast readers of 2 MiB messages cannot starve the loop of its turns.
WRITE_SLICE = 64 * 1024


class Frames:
    """Responses a handler encoded itself (gRPC message bodies, in order), written together."""

    __slots__ = ("bodies",)

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies


class FrameWriter:
    """Writes :class:`Frames` of one streaming call as raw gRPC messages, several per write."""

    __slots__ = ("_stream",)

    def __init__(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._stream = stream

    async def write(self, frames: Frames) -> None:
        """Write every body; returns when the connection took them (HTTP/2 flow control)."""
        bodies = frames.bodies
        if not bodies:
            return
        stream = self._stream
        send = grpclib_compat.send_data
        chunk: list[bytes] = []
        chunk_size = 0
        for body in bodies:
            for part in (_PREFIX.pack(0, len(body)), body):
                if chunk_size + len(part) <= WRITE_SLICE:
                    chunk.append(part)
                    chunk_size += len(part)
                    continue
                if chunk:
                    await send(stream, b"".join(chunk))
                    await asyncio.sleep(0)
                    chunk, chunk_size = [], 0
                if len(part) <= WRITE_SLICE:
                    chunk, chunk_size = [part], len(part)
                    continue
                for start in range(0, len(part), WRITE_SLICE):
                    await send(stream, part[start : start + WRITE_SLICE])
                    await asyncio.sleep(0)
        if chunk:
            await send(stream, b"".join(chunk))
        grpclib_compat.count_sent(stream, len(bodies))
