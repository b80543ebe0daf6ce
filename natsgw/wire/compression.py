"""Compressed request frames and the request size limit, which grpclib 0.4.9 lacks.

grpcio clients may send ``grpc-encoding: gzip`` frames; grpclib raises NotImplementedError on any
frame with the compressed flag. :func:`install` replaces the frame reader grpclib's server uses
with one that inflates gzip/deflate frames and enforces the codec's ``max_message_size`` on both
the wire size and the inflated size (so a small bomb cannot inflate past the limit), and makes the
server advertise ``grpc-accept-encoding``. Responses are sent uncompressed, which every client
accepts.

The two grpclib internals this needs are patched by natsgw.compat.grpclib, which checks the grpclib
release it was written against.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from natsgw.compat import grpclib as grpclib_compat

ACCEPT_ENCODING = "gzip,deflate,identity"
_installed = False

#: Compressed request frames inflated since start (exported as a metric, checked by tests).
inflated_frames = 0


def _limit(codec: Any) -> int | None:
    limit = getattr(codec, "max_message_size", None)
    return int(limit) if limit else None


def _too_large(size: int, limit: int, what: str) -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"request message is {size} bytes{what}; the gateway accepts at most {limit} bytes "
        "(NATSGW_MAX_MESSAGE_SIZE plus 64 KiB for the request's other fields)",
    )


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


async def _recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    meta = await stream.recv_data(5)
    if not meta:
        return None
    compressed = meta[0] == 1
    (length,) = struct.unpack(">I", meta[1:])
    limit = _limit(codec)
    if limit is not None and length > limit:
        raise _too_large(length, limit, "")
    data = await stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(Status.INTERNAL, "the request message ended early")
    if compressed:
        global inflated_frames
        data = _inflate(data, limit)
        inflated_frames += 1
    return codec.decode(data, message_type)


def install() -> None:
    """Patch grpclib's server once per process (through natsgw.compat.grpclib); idempotent."""
    global _installed
    if _installed:
        return
    grpclib_compat.replace_request_reader(_recv_message)
    grpclib_compat.add_response_header("grpc-accept-encoding", ACCEPT_ENCODING)
    _installed = True
