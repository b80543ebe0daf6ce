"""h2 internals the gateway uses: a small answer's frames built and sent without h2's encoder,
and received frames handed to h2's no-op trace logger without being formatted first.

Private names: ``H2Connection.state_machine``/``streams``/``outbound_flow_control_window``/
``encoder.header_table.resized``/``_closed_streams``, ``H2Stream.state_machine``/
``outbound_flow_control_window``, and the module namespace of ``h2.connection``.
"""

from __future__ import annotations

import asyncio
import struct

import h2.connection
from h2.connection import ConnectionInputs, H2Connection
from h2.stream import StreamInputs, StreamState

from natsgw.compat import require

PINNED = "4.4.1"
require("h2", PINNED, __name__)

# HTTP/2 frame header (RFC 9113 §4.1): 24-bit length and type packed in one int, flags, stream.
_FRAME = struct.Struct(">IBI")
_DATA, _HEADERS = 0x0, 0x1
_END_STREAM, _END_HEADERS = 0x1, 0x4
#: ``grpc-status: 0`` as an HPACK literal without indexing.
OK_TRAILERS = b"\x00\x0bgrpc-status\x010"


def _frame_name(frame: object) -> str:
    return type(frame).__name__


def skip_received_frame_reprs() -> None:
    """Make h2 stop formatting every received frame for a logger that discards it.

    Why: h2 4.4.1's ``_receive_frame`` calls ``logger.trace("Received frame: %s", repr(frame))``:
    the repr (flags, body, a hexdump of the payload's head) is built eagerly for every frame,
    and grpclib never configures an h2 logger (h2's no-op ``DummyLogger``). That was ~4 % of a
    KVGet's gateway CPU. The name ``repr`` in ``h2.connection`` (used only there; a test checks)
    is shadowed by one giving the frame's class name, which is what a trace log would still show.
    Upstream fix that removes it: lazy formatting, ``logger.trace("Received frame: %r", frame)``.
    """
    setattr(h2.connection, "repr", _frame_name)  # noqa: B010 - a module global, on purpose


#: Closed streams an h2 connection remembers (h2's own default: 65,536 per connection).
CLOSED_STREAMS_KEPT = 1024


def limit_closed_streams(h2c: H2Connection, kept: int = CLOSED_STREAMS_KEPT) -> None:
    """Make ``h2c`` remember how only the last ``kept`` closed streams were closed.

    Why: h2 keeps (stream id -> how it closed) for the last 65,536 closed streams of every
    connection, ~93 bytes each: ~6 MiB per long-lived or rapid-reset connection (row A), times
    the connections the gateway takes. It only makes h2's answer to a late frame on a long
    closed stream more precise (ignored vs RST_STREAM STREAM_CLOSED); a thousand covers any
    frame still in flight. The limit is the private ``_closed_streams._size_limit``.
    Upstream fix that removes it: a ``max_closed_streams`` option in ``H2Configuration``.
    """
    h2c._closed_streams._size_limit = kept  # type: ignore[attr-defined]


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; ``first`` holds the first byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(text: str) -> bytes:
    """An HPACK string literal, not Huffman-coded (cheaper to make than the bytes it saves)."""
    raw = text.encode()
    return hpack_int(len(raw), 7) + raw


def hpack_literal(name: str, value: str, *, never_indexed: bool = False) -> bytes:
    """A header with a literal name that neither peer adds to its dynamic table (RFC 7541
    §6.2.2 / §6.2.3): blocks made of these, and of static-table references, can be sent without
    h2's encoder and leave its table and the peer's decoder in step."""
    return (b"\x10" if never_indexed else b"\x00") + hpack_string(name) + hpack_string(value)


def response_head(content_type: str, extra: bytes = b"") -> bytes:
    """``:status 200`` (static entry 8), ``content-type`` (static name 31) and ``extra``."""
    return b"\x88" + hpack_int(31, 4) + hpack_string(content_type) + extra


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def write_answer(
    h2c: H2Connection, stream_id: int, transport: asyncio.WriteTransport,
    head: bytes, data: bytes, trailers: bytes = OK_TRAILERS,
) -> bool:  # fmt: skip
    """Send HEADERS(``head``), DATA(``data``) and HEADERS(``trailers``, END_STREAM) on a stream
    in one ``transport.write``; False (nothing done) when they cannot go out that way now.

    Why: h2's ``send_headers`` validates, HPACK- and Huffman-codes each header block and
    serialises each frame through generic objects; for a small unary answer that was about a
    seventh of a KVGet's gateway CPU (issue 12). ``head`` and ``trailers`` must be header blocks
    that leave dynamic tables alone (:func:`hpack_literal`, static references). The stream and
    connection go through the state transitions and flow-control accounting h2's
    ``send_headers``/``send_data`` make, in their order, so h2 goes on as if it had sent them.
    Upstream fix that removes it: none planned in h2; grpclib batching a unary answer would make
    h2's cost per call smaller but not remove it.
    """
    stream = h2c.streams.get(stream_id)
    size = len(data)
    if (
        stream is None
        or size > h2c.local_flow_control_window(stream_id)
        or max(size, len(head), len(trailers)) > h2c.max_outbound_frame_size
        or h2c.encoder.header_table.resized  # h2 owes the peer a table-size update
    ):
        return False
    # These raise, before anything is written, if the stream or connection cannot take the
    # frames (the client reset the stream, the connection is closing).
    connection, machine = h2c.state_machine, stream.state_machine
    connection.process_input(ConnectionInputs.SEND_HEADERS)
    machine.process_input(StreamInputs.SEND_HEADERS)
    connection.process_input(ConnectionInputs.SEND_DATA)
    machine.process_input(StreamInputs.SEND_DATA)
    stream.outbound_flow_control_window -= size
    h2c.outbound_flow_control_window -= size
    connection.process_input(ConnectionInputs.SEND_HEADERS)
    machine.process_input(StreamInputs.SEND_HEADERS)
    machine.process_input(StreamInputs.SEND_END_STREAM)
    transport.write(
        h2c.data_to_send()  # whatever h2 queued before (normally nothing)
        + _frame(_HEADERS, _END_HEADERS, stream_id, head)
        + _frame(_DATA, 0, stream_id, data)
        + _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, trailers)
    )
    return True


#: Stream states in which the server may still send DATA.
_SENDING = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def blocked_streams(h2c: H2Connection) -> list[int]:
    """The streams the server can still send DATA on that have no flow-control window left
    (their own, or the connection's): their answers wait for the client's WINDOW_UPDATE.

    Why: a client that keeps small windows and never reads makes each handler wait inside
    grpclib's ``send_data``, holding its whole answer, while the transport never backs up, so
    the edge's write-buffer checks never see it (issue 17 row E). Only h2 knows the windows:
    ``H2Connection.streams``/``outbound_flow_control_window`` and each ``H2Stream``'s
    ``state_machine.state``/``outbound_flow_control_window``. Called once per sweep, not per
    frame. Upstream fix that removes it: a send timeout on a stream waiting for window in
    grpclib.
    """
    connection_empty = h2c.outbound_flow_control_window <= 0
    return [
        stream_id
        for stream_id, stream in h2c.streams.items()
        if stream.state_machine.state in _SENDING
        and (connection_empty or stream.outbound_flow_control_window <= 0)
    ]
