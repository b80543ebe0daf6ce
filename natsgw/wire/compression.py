"""Reading request messages: compressed frames, the size limit and the read timeout, which
grpclib 0.4.9 lacks, and a bounded first read for callers not yet known.

grpcio clients may send ``grpc-encoding: gzip`` frames; grpclib raises NotImplementedError on any
frame with the compressed flag. :func:`install` replaces the frame reader grpclib's server uses
with one that inflates gzip/deflate frames and enforces the codec's ``max_message_size`` on both
the wire size and the inflated size (so a small bomb cannot inflate past the limit), and makes the
server advertise ``grpc-accept-encoding``. Responses are sent uncompressed, which every client
accepts.

Every message must have fully arrived ``read_timeout`` seconds after the gateway started waiting
for it (NATSGW_REQUEST_READ_TIMEOUT, set on the codec), else the call ends DEADLINE_EXCEEDED: a
client that opens a call and trickles (or never finishes) its request cannot hold what it sent.
A message read without a ``limit`` of its own — grpclib's health and reflection services, anything
no pipeline admitted — is held to the codec's ``unadmitted_limit`` (NATSGW_TRUSTED_PREAUTH_BYTES);
the call pipeline reads admitted requests with the full limit, and in trusted mode reads only the
first ``head`` bytes before ``inspect`` says whether the caller's ids are there
(:func:`recv_message`).

A message announcing more than the budget's threshold (64 KiB) whose call has not fully arrived
first reserves its size in the codec's ``request_budget`` (natsgw.wire.budget:
NATSGW_REQUEST_BUFFER_BYTES in total, NATSGW_REQUEST_BUFFER_BYTES_PER_CONNECTION per connection),
waiting briefly for room, else the call ends RESOURCE_EXHAUSTED before its body is read; the
reservation is given back once the body is read or the read ends however it ends.

The two grpclib internals this needs are patched by natsgw.compat.grpclib, which checks the grpclib
release it was written against.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw.compat import grpclib as grpclib_compat
from natsgw.compat import grpclib_requests
from natsgw.wire.budget import THRESHOLD, BudgetExhausted, RequestBudget

ACCEPT_ENCODING = "gzip,deflate,identity"
_installed = False

#: Compressed request frames inflated since start (exported as a metric, checked by tests).
inflated_frames = 0


#: ``inspect(first_bytes, codec, message_type)``: refuses (raises) a request from its first bytes.
Inspect = Callable[[bytes, Any, Any], None]


def _limit(codec: Any) -> int | None:
    limit = getattr(codec, "max_message_size", None)
    return int(limit) if limit else None


def _too_large(size: int, limit: int, what: str, setting: str = "") -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"request message is {size} bytes{what}; the gateway accepts at most {limit} bytes "
        + (setting or "(NATSGW_MAX_MESSAGE_SIZE plus 64 KiB for the request's other fields)"),
    )


def _timed_out(seconds: float) -> GRPCError:
    return GRPCError(
        Status.DEADLINE_EXCEEDED,
        f"the request message did not arrive whole within {seconds:g}s of the gateway waiting "
        "for it (NATSGW_REQUEST_READ_TIMEOUT); send each message promptly once the call is open",
    )


def _no_room(refusal: BudgetExhausted) -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"the gateway is already assembling as many large request bytes as it may "
        f"({refusal.setting}={refusal.limit}); this {refusal.size}-byte message was not read. "
        "Retry shortly with backoff, send large requests over fewer concurrent streams, or ask "
        f"the operator to raise {refusal.setting}",
    )


async def _reserved_read(
    stream: Any, budget: RequestBudget, length: int, first: bytes = b""
) -> bytes:
    """The rest of a ``length``-byte body after ``first``, read once ``budget`` has room for it."""
    key = getattr(stream, "connection", None)
    try:
        await budget.reserve(key, length)
    except BudgetExhausted as refusal:
        raise _no_room(refusal) from None
    try:
        rest: bytes = await stream.recv_data(length - len(first))
    finally:
        budget.release(key, length)
    return first + rest


def _inflate(data: bytes, limit: int | None) -> bytes:
    # wbits 47 = auto-detect gzip or zlib (grpc "deflate") headers.
    inflater = zlib.decompressobj(wbits=47)
    try:
        out = inflater.decompress(data, (limit + 1) if limit else 0)
    except zlib.error as exc:
        raise GRPCError(
            Status.INTERNAL, f"could not decompress the request message ({exc})"
        ) from None
    if limit is not None and (len(out) > limit or inflater.unconsumed_tail):
        raise _too_large(len(out), limit, " after decompression")
    return out


def _inflated_prefix(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes (at most) that the start of a compressed frame inflates to."""
    try:
        return zlib.decompressobj(wbits=47).decompress(data, size)
    except zlib.error as exc:
        raise GRPCError(
            Status.INTERNAL, f"could not decompress the request message ({exc})"
        ) from None


async def recv_message(
    stream: Any,
    codec: Any,
    message_type: Any,
    *,
    limit: int | None = None,
    head: int = 0,
    inspect: Inspect | None = None,
) -> Any:
    """One request message from grpclib's h2 ``stream``, decoded by ``codec``; None at the end.

    ``limit``: the most bytes it may have (None: the codec's ``max_message_size``). With
    ``inspect``, a message longer than ``head`` bytes is read in two steps: its first ``head``
    bytes (inflated, when compressed), which ``inspect`` may refuse by raising, then the rest.
    The whole read is bounded by the codec's ``read_timeout``.
    """
    timeout = getattr(codec, "read_timeout", None)
    if not timeout or grpclib_requests.fully_received(stream):  # nothing left to wait for
        return await _read(stream, codec, message_type, limit, head, inspect)
    try:
        async with asyncio.timeout(timeout):
            return await _read(stream, codec, message_type, limit, head, inspect)
    except TimeoutError:
        raise _timed_out(timeout) from None


async def _read(
    stream: Any,
    codec: Any,
    message_type: Any,
    limit: int | None,
    head: int,
    inspect: Inspect | None,
) -> Any:
    meta = await stream.recv_data(5)
    if not meta:
        return None
    compressed = meta[0] == 1
    (length,) = struct.unpack(">I", meta[1:])
    setting = ""
    if limit is None:
        limit = _limit(codec)
    else:
        setting = "before it knows the caller (NATSGW_TRUSTED_PREAUTH_BYTES)"
    if limit is not None and length > limit:
        raise _too_large(length, limit, "", setting)
    # Large and not all here yet: reserve room before reading the body (natsgw.wire.budget).
    budget: RequestBudget | None = None
    if length > THRESHOLD:  # the usual small request pays this one compare
        budget = getattr(codec, "request_budget", None)
        if budget is not None and grpclib_requests.fully_received(stream):
            budget = None  # all of it is buffered already; reading it cannot wait
    if inspect is not None and length > head:
        first = await stream.recv_data(head)
        inspect(_inflated_prefix(first, head) if compressed else first, codec, message_type)
        if budget is None:
            data = first + await stream.recv_data(length - head)
        else:
            data = await _reserved_read(stream, budget, length, first)
    elif budget is None:
        data = await stream.recv_data(length)
    else:
        data = await _reserved_read(stream, budget, length)
    if len(data) != length:
        raise GRPCError(Status.INTERNAL, "the request message ended early")
    if compressed:
        global inflated_frames
        data = _inflate(data, limit)
        inflated_frames += 1
    return codec.decode(data, message_type)


async def _recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    """grpclib's reader: messages nothing admitted are held to the codec's ``unadmitted_limit``."""
    unadmitted = getattr(codec, "unadmitted_limit", None)
    return await recv_message(stream, codec, message_type, limit=unadmitted)


def install() -> None:
    """Patch grpclib's server once per process (through natsgw.compat.grpclib); idempotent."""
    global _installed
    if _installed:
        return
    grpclib_compat.replace_request_reader(_recv_message)
    grpclib_compat.add_response_header("grpc-accept-encoding", ACCEPT_ENCODING)
    _installed = True
