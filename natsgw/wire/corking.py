"""One socket write for what a connection's calls write in one pass of the event loop.

grpclib writes every frame it produces straight to the transport: a unary call's response
headers, message and trailers are three ``write`` calls, three ``send`` syscalls and, with
TCP_NODELAY, three packets the client has to wake up for; and when NATS answers many calls at
once (one read of its socket resolves dozens of requests), each of their answers is a syscall of
its own, which on loopback also runs the receiving side's TCP work. :class:`CorkedTransport`
keeps what is written until the end of the event loop's current pass (``loop.call_soon``: the
flush is the first thing the next pass runs, before it waits for anything) and hands it to the
socket as one write. :meth:`~CorkedTransport.cork` holds writes longer, until the matching
:meth:`~CorkedTransport.uncork`: the call pipeline corks around the three frames of a unary
answer it produces through grpclib's own steps. Nothing waits for more input to arrive.

Bounded: once :data:`FLUSH_AT` bytes wait they are written at once. Closing writes what waits
first. Flow control is untouched: the real transport still pauses and resumes the protocol as its
own buffer fills and drains.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Write at once when this much waits (a few HTTP/2 frames of the default 16 KiB).
FLUSH_AT = 64 * 1024


class CorkedTransport(asyncio.Transport):
    """A transport that can hold its writes for a moment and send them as one."""

    __slots__ = ("_corks", "_inner", "_loop", "_pending", "_scheduled", "_size")

    def __init__(
        self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """With ``loop``, writes are also gathered until the end of that loop's current pass."""
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._corks = 0
        self._scheduled = False

    def cork(self) -> None:
        """Hold writes until the matching :meth:`uncork` (nestable)."""
        self._corks += 1

    def uncork(self) -> None:
        self._corks -= 1
        if self._corks <= 0:
            self._corks = 0
            self.flush()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._corks:
            if self._loop is None:
                self._inner.write(data)
                return
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush_pass)
        if not data:
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def _flush_pass(self) -> None:
        self._scheduled = False
        if not self._corks:
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


def corked(transport: asyncio.BaseTransport) -> asyncio.BaseTransport:
    """``transport`` behind a :class:`CorkedTransport` gathering each loop pass's writes (for
    grpclib's server connections, made on the running loop)."""
    if isinstance(transport, asyncio.Transport):
        return CorkedTransport(transport, asyncio.get_running_loop())
    return transport
