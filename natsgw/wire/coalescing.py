"""One socket write for what a connection's calls write in one pass of the event loop.

grpclib writes every frame it produces straight to the transport: a unary call's response
headers, message and trailers are three ``write`` calls, three ``send`` syscalls and, with
TCP_NODELAY, three packets the client has to wake up for; and when NATS answers many calls at
once (one read of its socket resolves dozens of requests), each of their answers is a syscall of
its own, which on loopback also runs the receiving side's TCP work. :class:`CoalescingTransport`
keeps what is written until the end of the event loop's current pass (``loop.call_soon``: the
flush is the first thing the next pass runs, before it waits for anything) and hands it to the
socket as one write. Nothing waits for more input to arrive, and nothing is held past the pass.

Bounded: once :data:`FLUSH_AT` bytes wait they are written at once. Closing writes what waits
first. Flow control is untouched: the real transport still pauses and resumes the protocol as its
own buffer fills and drains.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Write at once when this much waits (a few HTTP/2 frames of the default 16 KiB).
FLUSH_AT = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes of one event-loop pass leave as one."""

    __slots__ = ("_inner", "_loop", "_pending", "_scheduled", "_size")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_pass)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def _flush_pass(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand everything waiting to the wrapped transport now."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._size = 0
        if not self._inner.is_closing():
            self._inner.write(data)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._size + self._inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()


def coalesced(transport: asyncio.BaseTransport) -> asyncio.BaseTransport:
    """``transport`` behind a :class:`CoalescingTransport` on the running loop (for grpclib's
    server connections)."""
    if isinstance(transport, asyncio.Transport):
        return CoalescingTransport(transport, asyncio.get_running_loop())
    return transport
