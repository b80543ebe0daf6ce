"""grpclib 0.4.9 internals the call pipeline needs to read requests on its own terms.

Kept apart from :mod:`natsgw.compat.grpclib` (the HTTP/2 edge's shims) so the two change
independently; both check the same pinned release.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.server

from natsgw.compat import require

PINNED = "0.4.9"
require("grpclib", PINNED, __name__)

#: ``read(h2_stream, codec, message_type)``: a request reader (natsgw.wire.compression).
Reader = Callable[[Any, Any, Any], Awaitable[Any]]


async def recv_message_with(stream: grpclib.server.Stream[Any, Any], read: Reader) -> Any:
    """``stream.recv_message()``, the message read by ``read`` instead of grpclib's one reader.

    Why: grpclib reads every request through one module function (replaced once per process by
    natsgw.wire.compression), with no per-call arguments; the pipeline must read a request it
    has not admitted yet with a small bound (trusted mode: the first bytes, then the ids, then
    the rest) and an admitted one with the full size limit. This is grpclib's own
    ``Stream.recv_message`` with the reader passed in, using its private ``_stream``, ``_codec``,
    ``_recv_type``, ``_dispatch`` and ``_messages_received``.
    Upstream fix that removes it: a per-call reader or message-size argument on
    ``Stream.recv_message``.
    """
    message = await read(stream._stream, stream._codec, stream._recv_type)
    if message is None:
        return None
    (message,) = await stream._dispatch.recv_message(message)
    stream._messages_received += 1
    connection = stream._stream.connection
    connection.messages_received += 1
    connection.last_message_received = time.monotonic()
    return message


def discard_received(stream: grpclib.server.Stream[Any, Any]) -> int:
    """Drop the request bytes a call had read but not consumed; returns how many.

    Why: a call ended while its request was half read (the read timeout, a refusal) leaves the
    bytes read so far in grpclib's per-stream ``Buffer`` (its private ``_acked`` deque), which
    lives as long as grpclib's handler keeps the stream in its task table — until its next
    clean-up, after several more calls on that connection. Bytes not yet read stay where they are:
    grpclib acknowledges them to HTTP/2 flow control when it releases the stream.
    Upstream fix that removes it: grpclib releasing a finished stream's buffer.
    """
    buffer = getattr(stream._stream, "buffer", None)
    acked = getattr(buffer, "_acked", None)
    if buffer is None or not acked:
        return 0
    size = int(buffer._acked_size)
    acked.clear()
    buffer._acked_size = 0
    return size


def fully_received(h2_stream: Any) -> bool:
    """Whether the client has ended its side of the call, so all it sent is buffered already.

    Why: the request reader bounds each message's arrival with a timer (natsgw.wire.compression),
    which costs a few microseconds a message; a unary request usually arrives whole, ended, before
    its handler runs, and reading it then cannot wait, so it needs no timer. Only the private
    ``Buffer._eof`` of grpclib's h2 stream says the end was received.
    Upstream fix that removes it: a public "end of stream received" on grpclib's stream.
    """
    buffer = getattr(h2_stream, "buffer", None)
    return bool(getattr(buffer, "_eof", False))
