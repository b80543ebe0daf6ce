"""Writing server streams to the client: the send loop every streaming handler runs under.

A streaming handler is an async generator. grpclib's generated code awaits ``send_message``
*outside* it, so a call cancelled while a send waits (a client that stopped reading, then
vanished) would leave the generator suspended at its ``yield``: its ``finally`` — the NATS
subscription, the buffers, the registry entry — would wait for the garbage collector.
:func:`serve_stream` closes the generator however the call ends, shielded so that a second
cancellation (grpclib cancels again when it closes the connection) cannot cut the cleanup short.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import grpclib.server

from natsgw.service.base import current_stream


async def serve_stream(
    responses: AsyncIterator[Any], stream: grpclib.server.Stream[Any, Any]
) -> None:
    """Send every response the handler yields; close the handler whatever happens."""
    try:
        async for response in responses:
            await stream.send_message(response)
    finally:
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await asyncio.shield(aclose())


#: gRPC message prefix: compressed flag (always 0: responses go uncompressed), length.
_PREFIX = struct.Struct(">BI")
#: Bytes written per turn of the event loop. A stream with a large message (or many) writes a
#: slice, then lets every other task run — the NATS readers above all — before the next slice, so
#: sixty fast readers of 2 MiB messages cannot starve the loop of its turns.
WRITE_SLICE = 64 * 1024


class FrameWriter:
    """Writes a streaming call's later responses as raw gRPC frames, several per socket write.

    grpclib's ``send_message`` costs one HTTP/2 DATA frame and one socket write per response; a
    subscriber that is behind has many responses waiting, and they go out together here: encoded,
    prefixed, joined, handed to the connection at once (in :data:`WRITE_SLICE` pieces, yielding
    between them). Responses are never compressed, so the frames are what grpclib would send.
    The first response of a call should go through ``send_message`` (the call pipeline sees the
    call respond); this writer is for the rest.
    """

    __slots__ = ("_codec", "_count", "_h2", "_parts", "_size", "_stream", "_type")

    def __init__(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._stream = stream
        self._h2 = stream._stream
        self._codec = stream._codec
        self._type = stream._send_type
        self._parts: list[bytes] = []
        self._size = 0
        self._count = 0

    @property
    def pending(self) -> int:
        """Bytes added and not yet flushed."""
        return self._size

    def add(self, response: Any) -> None:
        body = self._codec.encode(response, self._type)
        self.add_encoded(body)

    def add_encoded(self, body: bytes) -> None:
        self._parts.append(_PREFIX.pack(0, len(body)))
        self._parts.append(body)
        self._size += 5 + len(body)
        self._count += 1

    async def flush(self) -> None:
        """Write what was added; returns when the connection took it (HTTP/2 flow control)."""
        if not self._count:
            return
        parts, count = self._parts, self._count
        self._parts, self._size, self._count = [], 0, 0
        stream = self._stream
        if not stream._send_initial_metadata_done:
            await stream.send_initial_metadata()
        send = self._h2.send_data
        chunk: list[bytes] = []
        chunk_size = 0
        for part in parts:
            if chunk_size + len(part) <= WRITE_SLICE:
                chunk.append(part)
                chunk_size += len(part)
                continue
            if chunk:
                await send(b"".join(chunk))
                await asyncio.sleep(0)
                chunk, chunk_size = [], 0
            if len(part) <= WRITE_SLICE:
                chunk, chunk_size = [part], len(part)
                continue
            for start in range(0, len(part), WRITE_SLICE):
                await send(part[start : start + WRITE_SLICE])
                await asyncio.sleep(0)
        if chunk:
            await send(b"".join(chunk))
        stream._messages_sent += count
        connection = self._h2.connection
        connection.messages_sent += count
        connection.last_message_sent = time.monotonic()


def writer_for_current_call() -> FrameWriter | None:
    """A writer for the streaming call being served (None outside a grpclib call)."""
    stream = current_stream.get()
    return FrameWriter(stream) if stream is not None else None
